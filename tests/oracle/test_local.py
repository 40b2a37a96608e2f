"""The local oracle on the real embedded SmolLM2-135M: schema-shaped answers, graded scores read as an
expectation over the score tokens, determinism, and a model id that follows the base model's pin."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import yaml

from slmforge.errors import UserError
from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.client import Oracle
from slmforge.oracle.local import LocalBackend
from slmforge.oracle.prompts import rubric_system, score_request, synth_request
from slmforge.oracle.types import Request
from slmforge.params import OracleParams, RubricParams, build
from tests.conftest import chat_row

ROOT = Path(__file__).resolve().parents[2]
ROWS = [
    chat_row("ab", "How do I pick the sample size for an A/B test?",
             "Run a power analysis: fix alpha at 0.05 and power at 0.8, choose the minimum detectable effect, and "
             "solve for the number of users per arm from the baseline conversion rate."),
    chat_row("pizza", "What is the best pizza topping?", "Pineapple, obviously."),
]
DOC = {"id": "arxiv:2101.00001", "kind": "document", "meta": {"title": "Always-valid p-values for A/B tests"},
       "text": "Peeking at a fixed-horizon A/B test inflates the false positive rate. Mixture sequential "
               "probability ratio tests give p-values that stay valid however often the experimenter looks."}


def oracle_params(**overrides) -> OracleParams:
    data = yaml.safe_load((ROOT / "conf/oracle/local.yaml").read_text(encoding="utf-8"))
    return build(OracleParams, {**data, **overrides}, "oracle")


@pytest.fixture(scope="module")
def rubric() -> RubricParams:
    return build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")


@pytest.fixture(scope="module")
def backend(base_model) -> LocalBackend:
    folder, pin = base_model
    return LocalBackend(oracle_params(max_field_tokens=16), folder, pin)


def test_scores_are_graded_numbers_within_the_rubric_range(backend, rubric, tmp_path):
    """Through the oracle client, as the label stage asks: every answer valid, free, and cached."""
    system = rubric_system(rubric)
    reqs = [score_request(r, rubric, system) for r in ROWS]
    cache = AnswerCache(tmp_path / "out", store=tmp_path / "store")
    oracle = Oracle(backend.params, cache, backend)
    answers = oracle.ask(reqs, "label")
    assert oracle.failures == [] and oracle.ledger.calls == 2
    assert oracle.ledger.usd == 0 and oracle.ledger.tokens_in > 200 and oracle.ledger.tokens_out > 0
    for req, scores in zip(reqs, answers):
        assert list(scores) == list(rubric.dimensions)
        assert all(isinstance(v, float) and rubric.min_score <= v <= rubric.max_score for v in scores.values())
        assert not all(v == int(v) for v in scores.values())  # an expectation, not one token's argmax
        jsonschema.validate(scores, req.schema)
        assert json.loads(cache.get(oracle.key(req))["raw"]) == scores  # the raw text is the same valid JSON
    again = Oracle(backend.params, AnswerCache(tmp_path / "out2", store=tmp_path / "store"), backend)
    assert again.ask(reqs, "label") == answers and again.ledger.calls == 0


def test_the_answer_is_deterministic_and_the_shared_prefix_is_not_disturbed(backend, rubric):
    system = rubric_system(rubric)
    first = backend.complete(score_request(ROWS[0], rubric, system)).parsed
    backend.complete(score_request(ROWS[1], rubric, system))  # another record through the cached rubric prefix
    assert backend.complete(score_request(ROWS[0], rubric, system)).parsed == first


@pytest.mark.parametrize("digit", [2, 7])
def test_a_score_is_the_expectation_over_the_score_tokens(backend, digit):
    """Told to copy a score, the model puts nearly all its mass on that digit: the expectation lands near it
    (SmolLM2-135M gives 2.12 and 6.95; a bare "Reply with the digit 7" only gets it to about 4.4)."""
    schema = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10}},
              "required": ["score"]}
    req = Request(id="digit", system=f"Reply with the digit {digit}.",
                  prompt=f'Copy this JSON exactly: {{"score": {digit}}}', schema=schema, max_tokens=10)
    value = backend.complete(req).parsed["score"]
    assert abs(value - digit) < 0.5


def test_an_integer_schema_gets_a_rounded_integer(backend):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}},
              "required": ["n"]}
    req = Request(id="int", system="Reply with JSON.", prompt='Copy this JSON exactly: {"n": 4}', schema=schema,
                  max_tokens=10)
    answer = backend.complete(req).parsed
    assert isinstance(answer["n"], int) and 1 <= answer["n"] <= 5
    jsonschema.validate(answer, schema)


def test_a_synth_request_gets_n_pairs_of_non_empty_strings(backend):
    req = synth_request(DOC, 2, 1500, 256)
    answer = backend.complete(req)
    pairs = answer.parsed["pairs"]
    assert len(pairs) == 2
    assert all(isinstance(p[k], str) and p[k].strip() == p[k] and p[k] for p in pairs for k in ("question", "answer"))
    jsonschema.validate(answer.parsed, req.schema)
    assert json.loads(answer.text) == answer.parsed


def test_a_run_answered_from_the_cache_never_loads_the_model(backend, base_model, rubric, tmp_path):
    folder, pin = base_model
    req = score_request(ROWS[1], rubric, rubric_system(rubric))
    Oracle(backend.params, AnswerCache(tmp_path / "out", store=tmp_path / "store"), backend).ask([req], "label")
    fresh = LocalBackend(oracle_params(max_field_tokens=16), folder, pin)
    oracle = Oracle(fresh.params, AnswerCache(tmp_path / "out2", store=tmp_path / "store"), fresh)
    assert oracle.ask([req], "label")[0] is not None and oracle.ledger.calls == 0
    assert fresh.model is None  # `dvc repro -f label` on a warm cache costs no model load


def test_model_id_follows_the_pin(backend, base_model, tmp_path):
    folder, pin = base_model
    assert backend.model_id().startswith("embedded@")
    same = LocalBackend(oracle_params(), folder, pin)
    assert same.model_id() == backend.model_id()
    changed = json.loads(Path(pin).read_text())
    changed["gguf_sha256"] = "0" * 64
    (tmp_path / "base.json").write_text(json.dumps(changed))
    other = LocalBackend(oracle_params(), folder, tmp_path / "base.json")
    assert other.model_id() != backend.model_id()


def test_a_rubric_beyond_ten_is_a_user_error(backend, rubric):
    wide = replace(rubric, max_score=20)
    with pytest.raises(UserError, match="min_score/max_score"):
        backend.complete(score_request(ROWS[0], wide, rubric_system(rubric)))  # the cached prefix: fast


def test_without_its_model_folder_the_oracle_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dvc repro oracle_model"):
        LocalBackend(oracle_params(), tmp_path / "missing", None)


def test_the_same_questions_in_other_batches_and_thread_counts_get_the_same_text(base_model, rubric, tmp_path):
    """As two machines would ask: one oracle in a process computing on one thread asks everything at once, the
    other, in a process on two threads, asks in another order, in two batches, two requests in flight. Every
    answer's text is the same. (With the numerics the oracle had before, bfloat16 on the process's threads, this
    document got other questions on 1 thread than on 2, and a score moved in its second decimal: 2.198, 2.162.)"""
    import torch

    from slmforge.io import read_jsonl
    from slmforge.sources.records import arxiv_document

    folder, pin = base_model
    [entry] = [e for e in read_jsonl(ROOT / "data/sample/arxiv.jsonl") if e["id"].endswith("/1911.02944v3")]
    doc = arxiv_document(entry, source="sample", query="", fetched_at=None, run_id=None)
    system = rubric_system(rubric)
    requests = [synth_request(doc, 2, 1500, 512), *(score_request(r, rubric, system) for r in ROWS)]
    before = torch.get_num_threads()
    texts = []
    try:
        for threads, batches, concurrency in [(1, [[0, 1, 2]], 1), (2, [[2], [1, 0]], 2)]:
            torch.set_num_threads(threads)
            backend = LocalBackend(oracle_params(concurrency=concurrency), folder, pin)  # max_field_tokens as in conf
            oracle = Oracle(backend.params, AnswerCache(tmp_path / f"out{threads}", store=tmp_path / f"store{threads}"),
                            backend)
            for batch in batches:
                oracle.ask([requests[i] for i in batch], "determinism")
            assert oracle.ledger.calls == 3 and oracle.failures == []
            texts.append([oracle.cache.get(oracle.key(r))["raw"] for r in requests])
            assert torch.get_num_threads() == threads  # the oracle's own thread count did not leak into the process
    finally:
        torch.set_num_threads(before)
    assert texts[0] == texts[1]


def test_a_pin_of_another_model_than_oracle_model_is_a_user_error(base_model):
    with pytest.raises(UserError, match="not oracle.model='Qwen/Qwen2.5-7B-Instruct'.*dvc repro oracle_model"):
        LocalBackend(oracle_params(model="Qwen/Qwen2.5-7B-Instruct"), *base_model)


@pytest.mark.parametrize("family", ["qwen2_5", "gemma2"])
def test_any_hub_model_is_an_oracle_through_its_own_pin(family, tmp_path, monkeypatch, rubric, tiny_hub):
    """oracle.model names a hub model: the oracle_model stage's code pins it offline from the cache and the oracle
    loads it from there (Gemma's template has no system turn: the rubric goes into the user turn)."""
    from slmforge.modeling import materialise, oracle_model_params
    from tests.tiny_models import FAMILIES, use_cache

    commit = tiny_hub[1][family]
    use_cache(monkeypatch, tiny_hub[0])
    params = oracle_params(model=FAMILIES[family].hub_id, max_field_tokens=4)
    pin = materialise(oracle_model_params(params), tmp_path / "oracle", tmp_path / "oracle.json")
    assert pin["source"] == "hub" and pin["commit"] == commit
    made = LocalBackend(params, tmp_path / "oracle", tmp_path / "oracle.json")
    assert made.model_id().startswith(f"{FAMILIES[family].hub_id}@")
    answer = made.complete(score_request(ROWS[0], rubric, rubric_system(rubric))).parsed
    assert list(answer) == list(rubric.dimensions) and all(0 <= v <= 10 for v in answer.values())


def test_on_a_gpu_the_oracle_loads_in_4bit_with_a_device_map(base_model, monkeypatch):
    import torch

    backend = LocalBackend(oracle_params(), *base_model)
    assert backend._placement() == {}  # CPU: unquantised, as the deterministic embedded oracle runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a simulated GPU: only the arguments are built
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    placement = backend._placement()
    assert placement["device_map"] == "auto" and placement["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert LocalBackend(oracle_params(load_in_4bit=False), *base_model)._placement() == {}
