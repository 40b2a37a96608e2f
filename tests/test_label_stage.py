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


def calibration_result(main="PASS", validation="PASS", overfit=False, gold="PASS") -> dict:
    """metrics/calibration.json as calibrate writes it, reduced to what the gate reads."""
    reasons = {"PASS": ["false positive rate 0.000 < 0.1"], "REVIEW": ["dimension variance 0.080, PASS needs > 1.0"],
               "FAIL": ["false negative rate 1.000 > 0.3"]}
    return {"verdict": main, "reasons": reasons[main],
            "validation": {"verdict": validation, "reasons": reasons[validation], "overfit": overfit},
            "gold": None if gold is None else {"verdict": gold, "file": "data/gold/sample.jsonl", "n": 60,
                                               "reasons": ["overall Spearman 0.12, the gate needs >= 0.6"]}}


def run_label(project, **parts) -> subprocess.CompletedProcess:
    (project / "calibration.json").write_text(json.dumps(calibration_result(**parts)))
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    env["SLMFORGE_CACHE"] = str(project / "store")
    return subprocess.run([sys.executable, "-m", "stages.label", "--chatml", "chat.jsonl", "--calibration",
                           "calibration.json", "--oracle-model", "no-model-here", "--oracle-pin", "no-pin", "--cache", "cache",
                           "--out", "labels.jsonl", "--failures", "failures.jsonl", "--metrics", "label.json",
                           "--run-facts", "runs/label.json"],
                          cwd=project, env=env, capture_output=True, text=True)


def refusal(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: label: the calibration gate is closed (calibration.gate=enforce)"), lines[0]
    return lines[0]


@pytest.mark.parametrize("verdict", ["FAIL", "REVIEW"])
def test_enforced_gate_refuses_anything_but_pass_in_one_line(project, verdict):
    line = refusal(run_label(project, main=verdict))
    assert f"calibration {verdict}" in line and "validation" not in line and "gold" not in line
    assert not (project / "labels.jsonl").exists() and not (project / "store").exists()


@pytest.mark.parametrize("parts, named", [
    ({"validation": "FAIL"}, "validation FAIL (false negative rate 1.000 > 0.3)"),
    ({"overfit": True}, "validation PASS (overfit: more than calibration.thresholds.overfit_points worse"),
    ({"gold": "FAIL"}, "gold FAIL against data/gold/sample.jsonl (overall Spearman 0.12, the gate needs >= 0.6)"),
])
def test_a_main_pass_is_not_enough_validation_and_gold_gate_too(project, parts, named):
    line = refusal(run_label(project, **parts))
    assert named in line and "calibration PASS" not in line, line
    assert not (project / "labels.jsonl").exists()


def test_every_failing_part_is_named_in_the_one_line(project):
    line = refusal(run_label(project, main="REVIEW", validation="FAIL", gold="FAIL"))
    assert line.index("calibration REVIEW") < line.index("validation FAIL") < line.index("gold FAIL"), line


@pytest.mark.parametrize("gold", ["PASS", None])  # no gold file: that part is not required
def test_enforced_gate_lets_a_pass_through(project, gold):
    # All parts PASS: label goes on to the oracle, and stops at the (deliberately) missing oracle model.
    proc = run_label(project, gold=gold)
    assert proc.returncode == 1 and "models/oracle" in proc.stderr and "calibration gate" not in proc.stderr


def test_a_label_that_drops_every_row_stops_naming_the_tier(tmp_path, monkeypatch):
    from slmforge.errors import UserError
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
