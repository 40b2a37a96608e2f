"""Oracle failures classified, through the real Claude backend against the loopback Messages API, for each stage
that asks the oracle (synthesize, label, the judge): a failure every request would share stops at the first
occurrence with one line naming the setting; a transient one is recorded and the run goes on; a stage whose
failure share is above oracle.max_failure_share stops in one line."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import yaml

from slmforge.evaluation.judge import judge_items
from slmforge.errors import UserError
from slmforge.labeling import label_rows
from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.claude import ClaudeBackend
from slmforge.oracle.client import Oracle
from slmforge.oracle.prompts import rubric_system, score_request
from slmforge.oracle.types import OracleConfigError
from slmforge.params import JudgeParams, OracleParams, RubricParams, SynthesizeParams, build
from slmforge.synthesis import synthesize
from tests.conftest import chat_row
from tests.oracle.messages_server import running_messages_server
from tests.stage_project import error_lines, make_project, run_stage

ROOT = Path(__file__).resolve().parents[2]
CONF = yaml.safe_load((ROOT / "conf/oracle/claude.yaml").read_text(encoding="utf-8"))
RUBRIC = build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")
SYNTH = build(SynthesizeParams, {**yaml.safe_load((ROOT / "conf/synthesize/default.yaml").read_text()),
                                 "max_documents": 0}, "synthesize")  # every document asked
JUDGE = JudgeParams(enabled=True, max_items=0, tie_margin=0.5, max_inconsistency=0.5)
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


def answer_for(body: dict) -> str:
    """A valid answer to whichever stage asked: scores, pairs or a preference, read off the requested schema."""
    prompt = body["messages"][0]["content"]
    if "<document>" in prompt:
        return json.dumps({"pairs": [{"question": f"What does part {k} say?", "answer": "It says that the sample "
                                      "size follows from the power and the effect."} for k in range(SYNTH.pairs_per_document)]})
    if "answer_a" in prompt:
        return json.dumps({"preference": 7})
    return json.dumps({name: 6 for name in RUBRIC.dimensions})


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-" + "x" * 24)
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "store"))
    return tmp_path


def oracle(tmp_path: Path, base_url: str, **overrides) -> Oracle:
    p = build(OracleParams, {**CONF, "base_url": base_url, "max_retries": 1, "timeout_s": 5.0, "batch_poll_s": 0.01,
                             **overrides}, "oracle")
    return Oracle(p, AnswerCache(tmp_path / "cache"), ClaudeBackend(p))


def ask_synthesize(o: Oracle, n: int):
    docs = [{"id": f"arxiv:{k}", "source": "arxiv", "kind": "document", "prompt": "", "response": "",
             "text": f"Paper {k} on the power of tests.", "meta": {"title": f"Paper {k}"}, "provenance": {}}
            for k in range(n)]
    return synthesize(docs, o, SYNTH)


def ask_label(o: Oracle, n: int):
    return label_rows([chat_row(f"r{k}", f"question {k}?", "an answer") for k in range(n)], o, RUBRIC, [])


def ask_judge(o: Oracle, n: int):
    items = [{"id": f"t{k}", "question": f"q{k}?", "reference": "ref", "base": {"generation": f"base {k}"},
              "tuned": {"generation": f"tuned {k}"}} for k in range(n // 2)]  # two requests an item
    return judge_items(items, o, "A/B testing", JUDGE)


STAGES = {"synthesize": ask_synthesize, "label": ask_label, "judge": ask_judge}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("status, error_type, setting", [
    (404, "not_found_error", "oracle.model"),  # an unknown model id
    (400, "invalid_request_error", "oracle.max_tokens"),
    (402, "billing_error", "billing"),
])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_refused_request_stops_the_stage_at_the_first_occurrence(env, stage, status, error_type, setting,
                                                                   concurrency):
    with running_messages_server(answer_for) as server:
        server.fail_next(status, error_type, message=f"scripted {error_type}", times=1000)
        with pytest.raises(OracleConfigError) as info:
            STAGES[stage](oracle(env, server.base_url, concurrency=concurrency, max_retries=6), 40)
        calls = len(server.calls())
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert str(status) in message and error_type in message and setting in message
    assert calls <= concurrency  # stopped, not tried once per row (nor retried: a refusal is not transient)


@pytest.mark.parametrize("stage", STAGES)
def test_an_unreachable_endpoint_stops_the_stage_naming_base_url(env, stage):
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(OracleConfigError) as info:
        STAGES[stage](oracle(env, url, concurrency=8, max_retries=6), 40)
    message = str(info.value)
    assert "cannot reach" in message and url in message and "oracle.base_url" in message and "\n" not in message


def test_an_endpoint_that_never_answered_is_not_retried_max_retries_times_per_row(env):
    """40 rows, 8 in flight, max_retries 6 (the claude default): before, every row paid the SDK's whole backoff
    (~22 s a wave, 1 min 48 s for the 40); now the first wave gives up after FIRST_CONTACT_RETRIES and stops."""
    accepted, server = [], socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def hang_up():  # accepts and closes at once: an endpoint that is there but never answers HTTP
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()
    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with pytest.raises(OracleConfigError, match="cannot reach"):
            ask_label(oracle(env, f"http://127.0.0.1:{server.getsockname()[1]}", concurrency=8, max_retries=6), 40)
    finally:
        server.close()
    assert len(accepted) <= 8 * 3  # 8 calls in flight, each tried 1 + FIRST_CONTACT_RETRIES times; was 40 * 7


@pytest.mark.parametrize("bad", ["sk-ant-key with a space", "sk-ant-k\u00e9y", "sk-ant-" + "first-line\nsecond-line"])
def test_a_malformed_key_stops_before_any_call_without_showing_it(env, monkeypatch, bad):
    monkeypatch.setenv("ANTHROPIC_API_KEY", bad)
    with running_messages_server(answer_for) as server:
        with pytest.raises(OracleConfigError) as info:
            oracle(env, server.base_url)
        assert server.calls() == []
    message = str(info.value)
    assert "ANTHROPIC_API_KEY is malformed" in message and bad not in message and "\n" not in message


@pytest.mark.parametrize("stage", STAGES)
def test_failures_above_the_share_stop_the_stage_in_one_line(env, stage):
    with running_messages_server(answer_for) as server:
        server.fail_next(500, message="internal trouble", times=1000)  # every call fails for good (after retries)
        with pytest.raises(UserError) as info:
            STAGES[stage](oracle(env, server.base_url, concurrency=4), 8)
    message = str(info.value)
    assert not isinstance(info.value, OracleConfigError)  # transient failures, only too many of them
    assert "8 of 8 oracle requests failed" in message and "oracle.max_failure_share=0.05" in message
    assert "internal trouble" in message and "\n" not in message


@pytest.mark.parametrize("stage", STAGES)
def test_a_transient_failure_within_the_share_is_recorded_and_the_stage_goes_on(env, stage):
    with running_messages_server(answer_for) as server:
        o = oracle(env, server.base_url, concurrency=1, max_retries=1)
        server.fail_next(529, times=2)  # the first request: tried twice, overloaded both times
        STAGES[stage](o, 40)  # 1 of 40 = 2.5%, within the default 5%
    assert len(o.failures) == 1 and "529" in o.failures[0]["error"]
    assert o.ledger.calls == 39


def test_a_batch_whose_requests_are_refused_caches_the_answered_and_stops(env):
    with running_messages_server(answer_for) as server:
        o = oracle(env, server.base_url)
        rows = [chat_row(f"r{k}", f"question {k}?", "an answer") for k in range(3)]
        req = score_request(rows[1], RUBRIC, rubric_system(RUBRIC))
        server.script_batch_result(o.key(req), "errored", "not_found_error", "model: claude-nope")
        with pytest.raises(OracleConfigError, match="not_found_error.*oracle.model"):
            label_rows(rows, o, RUBRIC, [], batch=True)
        assert len(o.cache) == 2  # the two answered requests are kept: a re-run pays only for the third


def test_the_label_stage_exits_with_one_line_on_an_unknown_model(tmp_path):
    with running_messages_server(answer_for) as server:
        project = make_project(tmp_path, "oracle=claude", f"oracle.base_url={server.base_url}", "oracle.model=claude-nope")
        rows = [chat_row(f"r{k}", f"question {k}?", "an answer") for k in range(40)]
        (project / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (project / "calibration.json").write_text(json.dumps({"verdict": "PASS", "reasons": [], "gold": None, "validation": {
            "verdict": "PASS", "reasons": [], "overfit": False}}))
        server.fail_next(404, "not_found_error", message="model: claude-nope", times=1000)
        proc = run_stage(project, "label", "--chatml", "chat.jsonl", "--calibration", "calibration.json",
                         "--oracle-model", "none", "--oracle-pin", "none", "--cache", "cache", "--out", "labels.jsonl", "--failures",
                         "failures.jsonl", "--metrics", "label.json", ANTHROPIC_API_KEY="sk-ant-" + "x" * 30)
        calls = len(server.calls())
    errors = [line for line in error_lines(proc) if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "404" in errors[0] and "oracle.model" in errors[0], proc.stderr
    assert calls <= 8 and not (project / "labels.jsonl").exists()
