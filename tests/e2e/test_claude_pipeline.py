"""The whole DAG through the claude backend: the real `anthropic` SDK against a loopback server on 127.0.0.1 that
speaks the Messages API, with a fake key made for this run.

The server's "Claude" is a keyword judge (the calibration keywords decide relevance), so the calibration gate,
which is enforced for claude, has something it can PASS; what is under test is the plumbing: the key from the
environment only, every oracle stage through the SDK, costs in the metrics, and no secret in any artifact.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ROOT, copy_project, ran, run_facts, sh
from tests.oracle.messages_server import text_of, running_messages_server

pytestmark = pytest.mark.slow

KEYWORDS = yaml.safe_load((ROOT / "conf/calibration/default.yaml").read_text())["keywords"]


def keyword_judge(body: dict) -> str:
    prompt = text_of(body["messages"][0]["content"])
    doc = re.search(r"<document>\n(.*?)\n</document>", prompt, re.DOTALL)
    if doc:
        n = int(re.search(r"Write (\d+) different", prompt).group(1))
        title = doc.group(1).splitlines()[0].removeprefix("Title: ")
        pairs = [{"question": f"Question {k + 1} about {title}: what does the paper find?",
                  "answer": f"The paper '{title}' reports its main finding number {k + 1} in detail."}
                 for k in range(n)]
        return json.dumps({"pairs": pairs})
    if "<answer_a>" in prompt:  # the pairwise judge: the answer with more keywords is better
        def hits(tag: str) -> int:
            answer = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt, re.DOTALL).group(1).lower()
            return sum(k.lower() in answer for k in KEYWORDS)
        a, b = hits("answer_a"), hits("answer_b")
        return json.dumps({"preference": 5 if a == b else 8 if b > a else 2})
    record = re.search(r"<record>\n(.*?)\n</record>", prompt, re.DOTALL).group(1).lower()
    hits = sum(bool(re.search(r"(?<!\w)" + re.escape(k.lower()) + r"s?(?!\w)", record)) for k in KEYWORDS)
    scores = (9, 6, 4) if hits >= 2 else (5, 3, 7) if hits == 1 else (1, 4, 2)
    answer = json.dumps(dict(zip(("relevance", "correctness", "helpfulness"), scores)))
    # Now and then the way real models do it: fenced, with a trailing comma (the client repairs it).
    return f"```json\n{answer[:-1]},}}\n```" if len(record) % 7 == 0 else answer


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    # No gold file: the keyword judge cannot tell an on-topic row without keywords from an off-topic one, so it
    # does not agree with the shipped gold well enough for the enforced gate (which the label stage's tests cover).
    edits = {"train: cpu": "train: tiny", "eval: default": "eval: tiny", "scorer: default": "scorer: tiny",
             "oracle: local": "oracle: claude", "  - _self_": "  - _self_\ncalibration:\n  gold: null"}
    return copy_project(tmp_path_factory.mktemp("e2e_claude"), edits)


def test_claude_without_a_key_stops_in_one_line(repo, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    proc = sh("dvc repro synthesize", repo, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "ANTHROPIC_API_KEY" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_whole_pipeline_through_the_claude_backend(repo, monkeypatch):
    key = "sk-ant-test-" + secrets.token_hex(16)
    with running_messages_server(keyword_judge) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        out = sh("dvc repro", repo).stdout
        first_calls = len(server.calls("POST", "/v1/messages"))
        assert {"synthesize", "calibrate", "label", "split", "train@all", "evaluate@all", "cost"} <= set(ran(out))
        calibration = json.loads((repo / "metrics/calibration.json").read_text())
        assert calibration["gate"] == "enforce" and calibration["verdict"] == "PASS", calibration["reasons"]
        assert calibration["gate_failures"] == [], calibration["gate_failures"]
        label = json.loads((repo / "metrics/label.json").read_text())
        chatml = json.loads((repo / "metrics/chatml.json").read_text())
        assert label["labelled"] == chatml["rows_out"] and label["calibration_verdict"] == "PASS"
        assert label["tiers"].get("reject", 0) > 0 and label["tiers"].get("silver", 0) > 0, label["tiers"]
        for name, stage in (("synthesize", "synthesize"), ("calibration", "calibrate"), ("label", "label")):
            assert json.loads((repo / f"metrics/{name}.json").read_text())["oracle"]["backend"] == "claude"
            oracle = run_facts(repo, stage)["oracle"]  # what this run paid: a run fact, not in the outputs
            assert oracle["calls"] > 0 and oracle["usd"] > 0, (name, oracle)
            assert oracle["tokens_in"] > 0 and oracle["tokens_out"] > 0
        assert sum(run_facts(repo, n)["oracle"]["calls"]
                   for n in ("synthesize", "calibrate", "label", "evaluate/all")) == first_calls
        # one ledger: metrics/runs/cost.json adds up every stage's bill, under the pipeline's ceiling
        cost = json.loads((repo / "metrics/runs/cost.json").read_text())
        assert cost["total"]["calls"] == first_calls and 0 < cost["total"]["usd"] <= cost["ceiling_usd"]
        assert cost["total"]["within_ceiling"] and all(s["within_ceiling"] for s in cost["stages"].values())
        evaluation = json.loads((repo / "metrics/eval/all.json").read_text())
        judge, judge_calls = evaluation["judge"], run_facts(repo, "evaluate/all")["oracle"]["calls"]
        assert evaluation["oracle"]["backend"] == "claude" and judge["judged"] == judge["items"]
        # each item judged in both orders through the API, except where the two answers are the same text (a tie
        # without a call: the tiny profile's adapter often answers as its base does)
        assert judge_calls == 2 * (judge["items"] - judge["identical"]), (judge_calls, judge)

        # Forced again: every answer is in the cache, the server hears nothing.
        sh("dvc repro -f -s synthesize && dvc repro -f -s calibrate && dvc repro -f -s label", repo)
        assert len(server.calls("POST", "/v1/messages")) == first_calls
        assert run_facts(repo, "label")["oracle"]["calls"] == 0

    # The key went only in the HTTP header: no artifact, lock, param or metric holds it.
    leaked = subprocess.run(["grep", "-rl", "--exclude-dir=.git", key, str(repo)], capture_output=True, text=True)
    assert leaked.stdout == "", leaked.stdout
