"""evaluate's pieces: format compliance, the breakdown by source, the template check, overfitting from the
training log, the statistics and verdict over items, the plot data, the report, and the generation cache on
the real embedded model."""

from __future__ import annotations

import math

import pytest

from slmforge.evaluation.compare import (overfit_policy, overfitting, plot_rows,
                                         statistics)
from slmforge.evaluation.generate import generate
from slmforge.evaluation.metrics import format_ok, group_of, per_group, units_in
from slmforge.evaluation.report import render
from slmforge.errors import UserError
from slmforge.params import EvalParams, JudgeParams, NumericsParams, VerdictParams

UNITS = ["%", "days", "day", "weeks", "ms", "$", "USD"]


def params(metric: str = "rouge_l", **kw) -> EvalParams:
    return EvalParams(max_new_tokens=8, batch_size=4, max_test_items=0, max_probes=0, seed=0, abstain_markers=[],
                      units=UNITS, bootstrap=200, examples=3, judge=JudgeParams(True, 0, 0.5, 0.5),
                      verdict=VerdictParams(metric=metric, p_max=0.05, min_effect=0.3, min_improvement=0.15,
                                            on_overfit="review"),
                      numerics=NumericsParams(enabled=False, test_items=0), latency_queries=0,
                      **{"strip_think": True, **kw})


@pytest.mark.parametrize("pred,ref,expected", [
    ("It runs for 47 days.", "Lumen caps experiments at 47 days.", True),
    ("a 47-day cap", "47 days", True),  # singular and plural are one unit
    ("It runs for a while.", "47 days", False),
    ("about 2.5% of users", "an alpha of 2.5%", True),
    ("It costs 20 dollars", "It costs $20", False),
    ("It costs $ 20", "It costs $20", True),
    ("anything at all", "no number with a unit here, only 42", None),
    ("300ms", "a latency of 300 ms and 2 weeks", False),  # both units are asked for
])
def test_format_ok(pred, ref, expected):
    assert format_ok(pred, ref, UNITS) is expected


def test_a_unit_is_a_whole_word():
    assert units_in("5 daysx and 3 dayz", UNITS) == set()
    assert units_in("3 weeks, 2 days", UNITS) == {"week", "day"}


def item(id_, origin, base, tuned, kind="test"):
    return {"id": id_, "kind": kind, "source": "sample", "origin": origin, "question": f"q {id_}",
            "reference": f"r {id_}", "expected": None, "base": base, "tuned": tuned}


def test_per_group_averages_each_metric_by_source_and_origin_and_skips_not_applicable():
    items = [item("a", "stackexchange", {"rouge_l": 0.1, "format_ok": None}, {"rouge_l": 0.3, "format_ok": 1.0}),
             item("b", "stackexchange", {"rouge_l": 0.3, "format_ok": 0.0}, {"rouge_l": 0.5, "format_ok": 1.0}),
             item("c", "facts", {"correct": 0.0}, {"correct": 1.0}, kind="probe"),
             {**item("d", None, {"rouge_l": 0.2}, {"rouge_l": 0.2}), "source": "stackexchange"}]
    out = per_group(items, ["rouge_l", "format_ok", "correct"])
    assert set(out) == {"sample:stackexchange", "sample:facts", "stackexchange"}
    se = out["sample:stackexchange"]
    assert se["n"] == 2 and se["base"]["rouge_l"] == pytest.approx(0.2) and se["tuned"]["rouge_l"] == pytest.approx(0.4)
    assert se["base"]["format_ok"] == 0.0  # the None (no unit in the reference) is not counted as a miss
    assert "correct" not in se["base"] and out["sample:facts"]["tuned"]["correct"] == 1.0
    assert group_of({"source": "arxiv", "origin": "arxiv"}) == "arxiv"


def test_overfitting_reads_best_against_the_last_step_logged_before_the_restore():
    # eval_loss is the saved adapter's (the best checkpoint's): last - best comes from last_eval_loss, or it would
    # be 0 by construction
    o = overfitting({"train_eval_gap": 0.8, "overfit_flag": True, "best_step": 40, "last_step": 100,
                     "best_eval_loss": 1.5, "eval_loss": 1.5, "last_eval_loss": 1.9, "train_once_rows": 50})
    assert o["last_minus_best_eval_loss"] == pytest.approx(0.4) and (o["best_step"], o["last_step"]) == (40, 100)
    assert overfitting({})["last_minus_best_eval_loss"] is None and overfitting({})["overfit_flag"] is False


FLAGGED = overfitting({"train_eval_gap": 0.8, "overfit_flag": True, "train_once_rows": 50, "best_eval_loss": 1.5,
                       "last_eval_loss": 1.9, "best_step": 40, "last_step": 100, "stopped_early": True})


@pytest.mark.parametrize("policy, verdict", [("report", "DEPLOY"), ("review", "REVIEW"), ("fail", "FAIL")])
def test_an_overfit_flag_reaches_the_verdict_as_eval_verdict_on_overfit_says(policy, verdict):
    _, head = statistics(paired_items(30, 0.05), params(), None)
    assert head["verdict"] == "DEPLOY"
    decided = overfit_policy(head, FLAGGED, policy)
    assert decided["verdict"] == verdict
    assert decided["reasons"][-1].startswith("overfit: the train/validation loss gap +0.800 on 50 training rows")
    assert overfit_policy(head, overfitting({"overfit_flag": False}), "fail") == head  # no flag: nothing changes
    with pytest.raises(UserError, match="eval.verdict.on_overfit must be report, review or fail"):
        overfit_policy(head, FLAGGED, "ignore")


def paired_items(n: int, gain: float) -> list[dict]:
    """n test items whose tuned ROUGE-L is the base's plus `gain` (with some spread)."""
    out = []
    for k in range(n):
        b = 0.1 + 0.01 * (k % 7)
        out.append(item(f"t{k}", "stackexchange", {"rouge_l": b, "nll": 3.0, "judge": None},
                        {"rouge_l": b + gain * (1 + 0.1 * (k % 3)), "nll": 2.5, "judge": None}))
    return out


def test_statistics_deploy_review_fail():
    big, head = statistics(paired_items(30, 0.05), params(), None)
    assert head["verdict"] == "DEPLOY" and big["rouge_l"]["wilcoxon_p"] < 0.05, head["reasons"]
    assert math.isnan(head["stats"]["judge_win_rate"])  # no judge in this run
    _, worse = statistics(paired_items(30, -0.05), params(), None)
    assert worse["verdict"] == "FAIL"
    _, small = statistics(paired_items(4, 0.05), params(), None)  # too few items to be significant
    assert small["verdict"] == "REVIEW"
    nll_items = paired_items(30, 0.0)
    for k, i in enumerate(nll_items):  # nll: lower is better; tuned is lower by 0.5 with some spread
        i["base"]["nll"], i["tuned"]["nll"] = 3.0 + 0.1 * (k % 5), 2.5 + 0.1 * (k % 5) + 0.02 * (k % 3)
    _, on_nll = statistics(nll_items, params("nll"), None)
    s = on_nll["stats"]
    assert s["cohens_d"] > 0.3 and s["relative_improvement"] > 0.15 and s["mean_delta"] < 0
    assert on_nll["verdict"] == "DEPLOY", on_nll["reasons"]


def test_a_verdict_metric_without_values_is_a_one_line_error():
    with pytest.raises(UserError, match="eval.verdict.metric='judge'.*judge.enabled is false"):
        statistics(paired_items(5, 0.1), params("judge"), None)
    failed = {"items": 5, "inconsistency": float("nan"), "first_position_preference": float("nan")}
    with pytest.raises(UserError, match="the judge answered no item"):
        statistics(paired_items(5, 0.1), params("judge"), failed)
    with pytest.raises(UserError, match=r"no test items \(data/split/test.jsonl is empty\)"):
        statistics([], params(), None)


def test_a_judge_that_answered_nothing_leaves_the_verdict_to_the_metric_and_says_so():
    failed = {"items": 30, "judged": 0, "failed": 30, "identical": 0, "tuned_wins": 0, "base_wins": 0,
              "ties_both_orders": 0, "flips_with_order": 0, "tie_in_one_order": 0,
              "inconsistency": float("nan"), "first_position_preference": float("nan")}
    items = paired_items(30, 0.05)
    for i in items:
        i["base"]["generation"] = i["tuned"]["generation"] = "an answer"
    per_metric, head = statistics(items, params(), failed)
    assert head["verdict"] == "DEPLOY" and "judge unavailable: 0 of 30 items judged" in head["reasons"]
    text = render({**head, "per_metric": per_metric, "items": items, "base": {}, "tuned": {},
                   "per_source": {}, "overfitting": overfitting({})}, 2)
    assert "judge unavailable" in text and "n/a" in text


def test_a_judge_whose_verdicts_follow_the_order_is_left_out_of_the_verdict():
    items = paired_items(30, 0.05)
    for i in items:  # every item a tie because the order decided: parity, which says nothing
        i["judge"] = {"outcome": "tie", "consistent": False}
        i["tuned"]["judge"] = i["base"]["judge"] = 0.5
    summary = {"items": 30, "judged": 30, "failed": 0, "inconsistency": 1.0, "first_position_preference": 1.0}
    _, head = statistics(items, params(), summary)
    assert head["judge"]["in_verdict"] is False and head["verdict"] == "DEPLOY"
    assert any("judge left out" in r and "100%" in r for r in head["reasons"])
    summary["inconsistency"] = 0.2
    _, kept = statistics(items, params(), summary)
    assert kept["judge"]["in_verdict"] is True and not any("judge left out" in r for r in kept["reasons"])


def test_a_judge_that_prefers_base_fails_the_run():
    items = paired_items(30, 0.05)
    for i in items:
        i["judge"] = {"outcome": "base", "consistent": True}
        i["tuned"]["judge"], i["base"]["judge"] = 0.0, 1.0
    summary = {"items": 30, "inconsistency": 0.0, "first_position_preference": 0.5}
    _, head = statistics(items, params(), summary)
    assert head["verdict"] == "FAIL" and head["stats"]["judge_win_rate"] == 0.0


def result_for_report() -> dict:
    items = paired_items(12, 0.05)
    per_metric, head = statistics(items, params(), None)
    for i in items:
        i["base"]["generation"], i["tuned"]["generation"] = f"base says {i['id']}", f"tuned says {i['id']}"
    return {**head, "per_metric": per_metric, "items": items,
            "base": {"perplexity": 40.0, "probe_accuracy": 0.0}, "tuned": {"perplexity": 30.0, "probe_accuracy": 0.1},
            "per_source": per_group(items, ["rouge_l"]), "overfitting": overfitting({"best_step": 5, "last_step": 9}),
            "judge": None}


def test_report_puts_the_verdict_first_then_intervals_then_side_by_side_examples():
    result = result_for_report()
    text = render(result, n_examples=3)
    assert text.splitlines()[0] == f"# Evaluation: **{result['verdict']}**"
    flagged = render({**result, "overfitting": FLAGGED}, n_examples=3).splitlines()
    assert flagged[4].startswith("Overfitting: **flagged**: train/validation loss gap +0.800 on 50 training rows "
                                 "seen once; validation loss at the last step 1.9000 against the best 1.5000 (step 40)")
    assert flagged[4].endswith("early stopping ended the run at step 100.")
    assert text.splitlines()[4].startswith("Overfitting: **not flagged**")
    assert text.index("95% CI") < text.index("## Paired statistics") < text.index("## Test items side by side")
    assert "| question | reference | base | tuned | judge |" in text
    assert text.count("tuned says") == 3 and "(3 of 12)" in text
    assert "n/a" in text  # the metrics this run has no values for say so rather than 0


def test_plot_rows():
    result = result_for_report()
    result["judge"] = {"tuned_wins": 3, "base_wins": 1, "ties_both_orders": 2, "flips_with_order": 4,
                       "tie_in_one_order": 1}
    bars, judge = plot_rows(result)
    assert {(b["source"], b["model"]) for b in bars} == {("sample:stackexchange", "base"), ("sample:stackexchange", "tuned")}
    assert [j["count"] for j in judge] == [3, 1, 2, 5]


def test_generation_cache_returns_the_same_answers_without_generating(base_model, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_model[0]))
    convs = [[{"role": "user", "content": "What is an A/B test?"}], [{"role": "user", "content": "Define power."}]]
    first = generate(model, tokenizer, convs, 6, 2, cache_id=("fp", None), store=tmp_path)
    assert [g["cached"] for g in first] == [False, False] and all(g["text"] for g in first)
    assert all(0 < g["tokens"] <= 6 and isinstance(g["eos"], bool) for g in first)
    again = generate(model, tokenizer, convs, 6, 2, cache_id=("fp", None), store=tmp_path)
    assert [g["cached"] for g in again] == [True, True]
    assert [g["text"] for g in again] == [g["text"] for g in first]
    # another adapter, another max_new_tokens: other keys, generated afresh
    other = generate(model, tokenizer, convs[:1], 6, 2, cache_id=("fp", "adapter-sha"), store=tmp_path)
    longer = generate(model, tokenizer, convs[:1], 7, 2, cache_id=("fp", None), store=tmp_path)
    assert not other[0]["cached"] and not longer[0]["cached"]
