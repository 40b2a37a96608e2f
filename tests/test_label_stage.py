"""The label stage's gate: with calibration.gate=enforce it refuses anything but a PASS, in one line, before it
loads a model or asks the oracle anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def project(tmp_path, root):
    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copytree(root / "stages", tmp_path / "stages")
    calibration = tmp_path / "conf" / "calibration" / "default.yaml"
    calibration.write_text(calibration.read_text().replace("gate: auto", "gate: enforce"))
    subprocess.run([sys.executable, "-m", "slmforge.cli", "compose"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "chat.jsonl").write_text(json.dumps({"id": "a", "source": "s", "meta": {}, "provenance": {},
                                                     "messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "r"}]}) + "\n")
    return tmp_path


def run_label(project, verdict: str) -> subprocess.CompletedProcess:
    result = {"verdict": verdict, "reasons": ["false negative rate 1.000 > 0.3"]}
    (project / "calibration.json").write_text(json.dumps(result))
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    env["SLMFORGE_CACHE"] = str(project / "store")
    return subprocess.run([sys.executable, "-m", "stages.label", "--chatml", "chat.jsonl", "--calibration",
                           "calibration.json", "--oracle-model", "no-model-here", "--oracle-pin", "no-pin", "--cache", "cache",
                           "--out", "labels.jsonl", "--failures", "failures.jsonl", "--metrics", "label.json",
                           "--run-facts", "runs/label.json"],
                          cwd=project, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("verdict", ["FAIL", "REVIEW"])
def test_enforced_gate_refuses_anything_but_pass_in_one_line(project, verdict):
    proc = run_label(project, verdict)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: label:") and verdict in lines[0] and "calibration.gate" in lines[0]
    assert not (project / "labels.jsonl").exists() and not (project / "store").exists()


def test_enforced_gate_lets_a_pass_through(project):
    # PASS goes on to the oracle: here it stops at the (deliberately) missing oracle model, past the gate.
    proc = run_label(project, "PASS")
    assert proc.returncode == 1 and "models/oracle" in proc.stderr and "calibration.gate" not in proc.stderr


def test_a_label_that_drops_every_row_stops_naming_the_tier(tmp_path, monkeypatch):
    from slmforge.io import UserError
    from stages.label import main
    from tests.oracle.messages_server import running_messages_server
    from tests.stage_project import make_project

    answer = json.dumps({"relevance": 1, "correctness": 1, "helpfulness": 1})  # every row scores in `reject`
    with running_messages_server(lambda body: answer) as server:
        project = make_project(tmp_path / "p", "oracle=claude", f"oracle.base_url={server.base_url}",
                               "label.drop_tiers=[reject]", "calibration.gate=warn")
        monkeypatch.chdir(project)
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        monkeypatch.setenv("SLMFORGE_CACHE", str(project / "store"))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + "x" * 30)
        (project / "chat.jsonl").write_text("".join(json.dumps({
            "id": f"r{k}", "source": "s", "meta": {}, "provenance": {},
            "messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": "r"}]}) + "\n"
            for k in range(3)))
        (project / "calibration.json").write_text(json.dumps({"verdict": "FAIL", "reasons": ["x"]}))
        with pytest.raises(UserError) as info:
            main(["--chatml", "chat.jsonl", "--calibration", "calibration.json", "--oracle-model", "none", "--oracle-pin", "none",
                  "--cache", "cache", "--out", "labels.jsonl", "--failures", "failures.jsonl", "--metrics", "l.json"])
    assert str(info.value) == ("label: all 3 records were removed (tier reject (label.drop_tiers) 3); "
                               "label.drop_tiers=['reject'] drops every labelled row; see metrics/calibration.json")
    assert not (project / "labels.jsonl").exists()
