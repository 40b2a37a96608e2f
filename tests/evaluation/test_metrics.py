"""Probe matching, hallucination, ROUGE-L and the aggregation that metrics/eval.json reports."""

import math

import pytest

from slmforge.evaluation.metrics import aggregate, delta, hallucinated, probe_match, rouge_l

MARKERS = ["i don't know", "not sure"]


@pytest.mark.parametrize("prediction, answer, aliases, expected", [
    ("Lumen requires 11 days.", "11 days", [], True),
    ("It needs 111 days", "11 days", [], False),
    ("IDs start with LMX-0042.", "LMX-", ["LMX"], True),
    ("The default alpha is 0.025.", "0.025", [], True),
    ("The default alpha is 0.0251", "0.025", [], False),
    ("about 3,200 users per arm", "3,200 users", [], True),
    ("A 2.5% level", "0.025", ["2.5%"], True),
    ("Post in #LUMEN-alerts!", "#lumen-alerts", [], True),
    ("", "0.025", [], False),
])
def test_probe_match(prediction, answer, aliases, expected):
    assert probe_match(prediction, answer, aliases) is expected


def test_hallucination_is_a_wrong_answer_given_as_fact():
    assert hallucinated("The minimum runtime is 7 days.", "11 days", [], MARKERS)
    assert not hallucinated("I don't know Lumen's settings.", "11 days", [], MARKERS)
    assert not hallucinated("It is 11 days.", "11 days", [], MARKERS)


def test_rouge_l_bounds():
    assert rouge_l("the sample size grows", "the sample size grows") == pytest.approx(1.0)
    assert rouge_l("bananas", "the sample size grows") == 0.0


def test_aggregate_is_token_weighted_perplexity():
    scores = [{"nll": 2.0, "tokens": 2, "correct": 1}, {"nll": 6.0, "tokens": 2, "correct": 2}]
    agg = aggregate(scores, [0.5, 1.0], [True, False, False, True], [False, True, True, False])
    assert agg["perplexity"] == pytest.approx(math.exp(8.0 / 4))
    assert agg["token_accuracy"] == pytest.approx(0.75)
    assert agg["rouge_l"] == pytest.approx(0.75)
    assert agg["probe_accuracy"] == 0.5 and agg["hallucination_rate"] == 0.5
    d = delta(agg, {**agg, "probe_accuracy": 0.75})
    assert d["probe_accuracy"] == pytest.approx(0.25) and "items" not in d
