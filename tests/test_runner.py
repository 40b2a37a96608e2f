"""How a stage ends: Ctrl-C is one line and exit code 130 (in a real process, by a real SIGINT, even with oracle
calls in flight in worker threads), and a stage left with nothing to pass on stops in one line naming the filter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from slmforge.errors import UserError
from slmforge.runner import require_records
from tests.oracle.messages_server import running_messages_server
from tests.stage_project import make_project, stage_env


def interrupt_when_ready(proc: subprocess.Popen, ready: str, timeout: float = 120) -> tuple[int, str]:
    """SIGINT (what Ctrl-C sends) once `ready` shows on stderr; (exit code, the stderr after it)."""
    deadline, seen = time.monotonic() + timeout, ""
    while ready not in seen:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"exited before `{ready}`: {seen}"
        seen += line
        assert time.monotonic() < deadline, seen
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=30)[1]
    return proc.returncode, rest


def test_ctrl_c_is_one_line_and_exit_code_130(tmp_path):
    script = tmp_path / "clean.py"  # named like a stage: the line names it
    script.write_text(textwrap.dedent("""
        import sys, time
        from slmforge.runner import run
        def main():
            print("ready", file=sys.stderr, flush=True)
            time.sleep(60)
        run(main)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    code, rest = interrupt_when_ready(proc, "ready")
    lines = [line for line in rest.splitlines() if line.strip()]
    assert code == 130 and "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert lines == ["clean: interrupted (Ctrl-C); nothing half-written was left, run it again to resume"]


def test_ctrl_c_in_a_stage_with_oracle_calls_in_flight_exits_at_once(tmp_path):
    """label with eight calls waiting on a slow API: the exit does not wait for them (up to oracle.timeout_s)."""
    with running_messages_server(lambda body: time.sleep(60) or '{"x": 1}') as server:
        project = make_project(tmp_path, "oracle=claude", f"oracle.base_url={server.base_url}", "oracle.max_retries=0")
        (project / "chat.jsonl").write_text("".join(json.dumps({
            "id": f"r{i}", "source": "s", "meta": {}, "provenance": {},
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "r"}]}) + "\n"
            for i in range(20)))
        (project / "calibration.json").write_text(json.dumps({"verdict": "PASS", "reasons": [], "gold": None,
                                                          "validation": {"verdict": "PASS", "reasons": [], "overfit": False}}))
        env = stage_env(project, ANTHROPIC_API_KEY="k" * 40)
        proc = subprocess.Popen([sys.executable, "-m", "stages.label", "--chatml", "chat.jsonl", "--calibration",
                                 "calibration.json", "--oracle-model", "none", "--oracle-pin", "none", "--cache", "cache",
                                 "--out", "labels.jsonl", "--failures", "failures.jsonl", "--metrics", "label.json"],
                                cwd=project, env=env, stderr=subprocess.PIPE, text=True)
        start = time.monotonic()
        code, rest = interrupt_when_ready(proc, "to ask claude")
        took = time.monotonic() - start
    assert code == 130 and "Traceback" not in rest, rest
    assert [line for line in rest.splitlines() if "interrupted" in line] == [
        "label: interrupted (Ctrl-C); nothing half-written was left, run it again to resume"]
    assert not (project / "labels.jsonl").exists()
    assert took < 50  # the calls in flight answer after 60 s: the stage did not wait for them


def test_nothing_left_names_the_filters_largest_first():
    with pytest.raises(UserError) as info:
        require_records("clean", 0, 12, {"too_short": 3, "language": 9, "spam": 0}, "loosen clean.language.min_prob")
    assert str(info.value) == ("clean: all 12 records were removed (language 9, too_short 3); "
                               "loosen clean.language.min_prob")
    with pytest.raises(UserError, match="clean: no records came in; check the sources"):
        require_records("clean", 0, 0, {}, "check the sources")
    require_records("clean", 1, 12, {"language": 11}, "unused")  # something left: nothing to say
