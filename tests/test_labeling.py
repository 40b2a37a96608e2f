"""Rubric labels: weighted overall score, gatekeeper caps, tiers at their edges, rubric checks, and label_rows
through the real Oracle client and cache with a small in-test backend."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.labeling import (check_rubric, label_metrics, label_rows, labels_file, overall_score, removed_by_label,
                               tier_of)
from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.client import Oracle
from slmforge.oracle.prompts import prompt_sha, rubric_system
from slmforge.oracle.types import Answer
from slmforge.params import GatekeeperParams, OracleParams, RubricParams, build
from tests.conftest import chat_row

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rubric() -> RubricParams:
    return build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")


def scores(relevance, correctness, helpfulness) -> dict:
    return {"relevance": relevance, "correctness": correctness, "helpfulness": helpfulness}


def test_overall_is_the_weighted_mean(rubric):
    w = {name: d.weight for name, d in rubric.dimensions.items()}
    assert w == {"relevance": 0.4, "correctness": 0.35, "helpfulness": 0.25}  # what the numbers below assume
    assert overall_score(scores(10, 5, 0), rubric) == pytest.approx(5.75)
    assert overall_score(scores(6.5, 7.25, 9), rubric) == pytest.approx(0.4 * 6.5 + 0.35 * 7.25 + 0.25 * 9, abs=1e-3)
    assert overall_score(scores(8, 8, 8), rubric) == 8.0  # no float dust: 8 on every dimension is gold
    assert tier_of(overall_score(scores(8, 8, 8), rubric), rubric) == "gold"


def test_a_failed_gatekeeper_caps_the_overall(rubric):
    (gate,) = rubric.gatekeepers
    assert (gate.dimension, gate.below, gate.cap) == ("relevance", 3.0, 3.0)
    assert overall_score(scores(2.9, 10, 10), rubric) == 3.0  # polished but off-topic: capped
    assert tier_of(overall_score(scores(2.9, 10, 10), rubric), rubric) == "reject"
    assert overall_score(scores(3.0, 10, 10), rubric) == pytest.approx(7.2)  # exactly at `below`: not capped
    assert overall_score(scores(1, 2, 2), rubric) == pytest.approx(1.6)  # under the cap already: unchanged


@pytest.mark.parametrize("overall, tier", [
    (10.0, "gold"), (8.0, "gold"), (7.999, "silver"), (6.0, "silver"), (5.999, "bronze"),
    (4.0, "bronze"), (3.999, "reject"), (0.0, "reject"),
])
def test_tiers_start_exactly_at_their_lower_edge(rubric, overall, tier):
    assert tier_of(overall, rubric) == tier


def test_check_rubric_accepts_the_default(rubric):
    check_rubric(rubric)


def test_weights_that_do_not_sum_to_one_are_a_user_error(rubric):
    dims = dict(rubric.dimensions)
    dims["helpfulness"] = replace(dims["helpfulness"], weight=0.2)
    with pytest.raises(UserError, match=r"rubric\.dimensions weights sum to 0\.95"):
        check_rubric(replace(rubric, dimensions=dims))


def test_a_gatekeeper_on_an_unknown_dimension_is_a_user_error(rubric):
    bad = replace(rubric, gatekeepers=[GatekeeperParams(dimension="relevence", below=3.0, cap=3.0)])
    with pytest.raises(UserError, match="rubric.gatekeepers names `relevence`"):
        check_rubric(bad)


def test_tiers_that_leave_low_scores_without_a_tier_are_a_user_error(rubric):
    with pytest.raises(UserError, match="rubric.tiers"):
        check_rubric(replace(rubric, tiers={"gold": 8.0, "silver": 6.0}))


# --- label_rows through the real Oracle client and cache -------------------------------------------------------

ROWS = [
    chat_row("se:1", "How many users per arm for a 2% lift?", "Use a power analysis with alpha 0.05 and power 0.8."),
    chat_row("se:2", "What is a p-value?", "The probability of data at least this extreme under the null."),
    chat_row("se:3", "Best pizza topping?", "Pineapple."),
    chat_row("se:4", "Explain CUPED.", "Variance reduction with a pre-period covariate."),
]
ANSWERS = {  # by the question in the record: what the "oracle" says
    "How many users": '{"relevance": 9, "correctness": 8, "helpfulness": 8}',
    "What is a p-value": '```json\n{"relevance": 6, "correctness": 6, "helpfulness": 6,}\n```',
    "Best pizza": '{"relevance": 0, "correctness": 9, "helpfulness": 9}',
    "Explain CUPED": "I would rather not score this one.",
}


class ScriptedBackend:
    name = "scripted"

    def __init__(self):
        self.calls = 0

    def model_id(self) -> str:
        return "scripted-1"

    def complete(self, req):
        self.calls += 1
        record = re.search(r"<record>\n(.*?)\n</record>", req.prompt, re.DOTALL).group(1)
        text = next(t for q, t in ANSWERS.items() if q in record)
        return Answer(text=text, tokens_in=50, tokens_out=10)


def oracle(tmp_path, backend=None, **overrides) -> Oracle:
    data = {**yaml.safe_load((ROOT / "conf/oracle/local.yaml").read_text()), **overrides}
    params = build(OracleParams, data, "oracle")
    return Oracle(params, AnswerCache(tmp_path / "out", store=tmp_path / "store"), backend or ScriptedBackend())


def test_label_rows_labels_each_row_and_returns_the_failures(rubric, tmp_path):
    orc = oracle(tmp_path, max_failure_share=0.25)  # the one refusal of four is recorded, the run goes on
    labels, failed = label_rows(ROWS, orc, rubric, drop_tiers=["reject"])
    assert failed == ["se:4"] and set(labels) == {"se:1", "se:2", "se:3"}
    assert orc.failures[0]["id"] == "se:4" and orc.failures[0]["raw"] == ANSWERS["Explain CUPED"]

    gold = labels["se:1"]
    assert gold["id"] == "se:1" and gold["scores"] == scores(9, 8, 8)
    assert gold["overall"] == pytest.approx(8.4) and gold["tier"] == "gold" and gold["dropped"] is False
    assert labels["se:2"]["tier"] == "silver"  # a repaired answer is a normal answer
    off_topic = labels["se:3"]
    assert off_topic["overall"] == 3.0 and off_topic["tier"] == "reject" and off_topic["dropped"] is True

    info = gold["oracle"]
    assert info["backend"] == "scripted" and info["model"] == "scripted-1"
    assert info["prompt_sha"] == prompt_sha(rubric_system(rubric))
    assert all(lab["oracle"] == info for lab in labels.values())
    json.dumps(labels)  # written as JSONL

    metrics = label_metrics(labels, failed, rows_in=len(ROWS))
    assert metrics["accounting_ok"] and metrics["labelled"] == 3 and metrics["failed"] == 1
    assert metrics["dropped"] == 1 and metrics["tiers"] == {"gold": 1, "reject": 1, "silver": 1}


def test_a_changed_rubric_changes_the_prompt_fingerprint_and_is_asked_again(rubric, tmp_path):
    backend = ScriptedBackend()
    first, _ = label_rows(ROWS[:2], oracle(tmp_path, backend), rubric, drop_tiers=[])
    again, _ = label_rows(ROWS[:2], oracle(tmp_path, backend), rubric, drop_tiers=[])
    assert again == first and backend.calls == 2  # the second run came from the cache
    reworded = replace(rubric, domain=rubric.domain + " and causal inference")
    changed, _ = label_rows(ROWS[:2], oracle(tmp_path, backend), reworded, drop_tiers=[])
    assert backend.calls == 4
    assert changed["se:1"]["oracle"]["prompt_sha"] != first["se:1"]["oracle"]["prompt_sha"]


def test_drop_tiers_naming_an_unknown_tier_is_a_user_error_before_any_call(rubric, tmp_path):
    backend = ScriptedBackend()
    with pytest.raises(UserError, match="label.drop_tiers names `rejected`"):
        label_rows(ROWS, oracle(tmp_path, backend), rubric, drop_tiers=["rejected"])
    assert backend.calls == 0


def test_a_bad_rubric_stops_label_rows_before_any_call(rubric, tmp_path):
    backend = ScriptedBackend()
    bad = replace(rubric, gatekeepers=[GatekeeperParams(dimension="tone", below=3.0, cap=3.0)])
    with pytest.raises(UserError, match="tone"):
        label_rows(ROWS, oracle(tmp_path, backend), bad, drop_tiers=[])
    assert backend.calls == 0


def test_no_rows_no_calls(rubric, tmp_path):
    backend = ScriptedBackend()
    labels, failed = label_rows([], oracle(tmp_path, backend), rubric, drop_tiers=[])
    assert labels == {} and failed == [] and backend.calls == 0
    assert label_metrics(labels, failed, 0)["mean_overall"] is None


def test_labels_file_has_one_label_per_row_in_row_order_and_marks_the_unlabelled_dropped():
    labels = {"b": {"id": "b", "tier": "good", "dropped": False}, "c": {"id": "c", "tier": "reject", "dropped": True}}
    out = labels_file([{"id": "c"}, {"id": "a"}, {"id": "b"}], labels)
    assert [lab["id"] for lab in out] == ["c", "a", "b"]
    assert out[0] is labels["c"] and out[2] is labels["b"]
    assert out[1] == {"id": "a", "scores": {}, "overall": None, "tier": "unlabelled", "dropped": True, "oracle": None}


def test_removed_by_label_counts_each_dropped_tier_and_the_failures():
    labels = {k: {"id": k, "tier": t, "dropped": d} for k, t, d in
              [("a", "reject", True), ("b", "reject", True), ("c", "weak", True), ("d", "good", False)]}
    assert removed_by_label(labels, ["e"]) == {"tier reject (label.drop_tiers)": 2, "tier weak (label.drop_tiers)": 1,
                                              "failed": 1}
    assert removed_by_label({}, []) == {"failed": 0}
