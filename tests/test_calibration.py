"""Calibration: strata and sample are deterministic, the measures and verdict match hand computations, gold
agreement matches independent statistics, bad gold files fail in one line, the report leads with the verdict."""

import json

import numpy as np
import pytest
import yaml
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from slmforge.calibration import assign_stratum, draw_sample, keyword_hits, measure, open_gate, overfit, verdict
from slmforge.gold import agreement, gold_overall, load_gold, quadratic_kappa
from slmforge.calibration_report import report_markdown
from slmforge.errors import UserError
from slmforge.params import CalibrationParams, RubricParams, build
from tests.conftest import ROOT, chat_row


def cal_params(**over) -> CalibrationParams:
    data = yaml.safe_load((ROOT / "conf/calibration/default.yaml").read_text())
    data.update(over)
    return build(CalibrationParams, data, "calibration")


RUBRIC: RubricParams = build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")
PARAMS = cal_params()
T = PARAMS.thresholds


def label(id_, overall, scores=(5, 5, 5)):
    return {"id": id_, "scores": dict(zip(RUBRIC.dimensions, map(float, scores))), "overall": float(overall),
            "tier": "bronze", "dropped": False, "oracle": {}}


# --- strata and sample ----------------------------------------------------------------------------

def test_keywords_are_word_bounded_case_insensitive_and_may_hold_slashes_hyphens_spaces():
    kws = PARAMS.keywords
    assert keyword_hits(chat_row("a", "The alphabet soup", "Lovely."), kws) == set()  # alpha is not in alphabet
    assert keyword_hits(chat_row("a", "How long should my A/B test run?", "ok"), kws) == {"a/b"}
    assert keyword_hits(chat_row("a", "Is my P-Value ok?", "Run an AB\ntest."), kws) == {"p-value", "ab test"}
    assert keyword_hits(chat_row("a", "Two experiments", "and their metrics"), kws) == {"experiment", "metric"}
    assert keyword_hits(chat_row("a", "ab", "test"), kws) == set()  # a phrase does not straddle two messages
    row = chat_row("a", "hi", "hello")
    row["messages"][0]["content"] = "You know statistics, variance and experiments."  # the system prompt
    assert keyword_hits(row, kws) == set()


def test_strata_by_keywords():
    assert assign_stratum(chat_row("a", "What alpha for my A/B test?", "0.05."), PARAMS) == "on_topic"
    assert assign_stratum(chat_row("a", "What alpha? alpha!", "alphabet"), PARAMS) == "edge"  # one distinct hit
    assert assign_stratum(chat_row("a", "Best pasta recipe?", "Boil water."), PARAMS) == "off_topic"
    with pytest.raises(UserError, match="calibration.on_topic_min_hits"):
        assign_stratum(chat_row("a", "q", "a"), cal_params(on_topic_min_hits=0))


def test_strata_by_source_and_unknown_strata_by():
    params = cal_params(strata_by="source", source_strata={"facts": "on_topic", "tweets": "off_topic"})
    assert assign_stratum(chat_row("a", "q", "r", origin="facts"), params) == "on_topic"
    assert assign_stratum(chat_row("a", "q", "r", origin="tweets"), params) == "off_topic"
    assert assign_stratum(chat_row("a", "q", "r", origin="arxiv"), params) == "edge"  # not mapped: edge
    with pytest.raises(UserError, match="calibration.strata_by") as err:
        assign_stratum(chat_row("a", "q", "r"), cal_params(strata_by="topic"))
    assert "\n" not in str(err.value)


def corpus():
    rows = [chat_row(f"on:{i}", f"A/B test {i}: what p-value?", "Use alpha 0.05.") for i in range(40)]
    rows += [chat_row(f"off:{i}", f"Pasta recipe {i}?", "Boil water.") for i in range(40)]
    rows += [chat_row(f"edge:{i}", f"Is variance {i} bad?", "Depends.") for i in range(3)]
    return rows


def test_draw_sample_deterministic_order_independent_seeded_and_short():
    params = cal_params(strata={"on_topic": 5, "off_topic": 4, "edge": 10})
    a = draw_sample(corpus(), params, seed=13)
    assert [r["id"] for r in a] == [r["id"] for r in draw_sample(list(reversed(corpus())), params, seed=13)]
    assert [r["stratum"] for r in a] == ["on_topic"] * 5 + ["off_topic"] * 4 + ["edge"] * 3
    assert all(r["id"].startswith({"on_topic": "on:", "off_topic": "off:", "edge": "edge:"}[r["stratum"]]) for r in a)
    assert {r["id"] for r in draw_sample(corpus(), params, seed=31)} != {r["id"] for r in a}
    rows = corpus()
    draw_sample(rows, params, seed=13)
    assert "stratum" not in rows[0]  # copies, the input is untouched
    b = draw_sample(corpus(), params, seed=13, exclude={r["id"] for r in a})
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    m = measure(a, {r["id"]: label(r["id"], 5) for r in a}, {}, set(), RUBRIC, params)
    assert m["n"]["edge"] == {"asked": 10, "got": 3, "labelled": 3}  # the shortfall is reported
    assert m["n"]["on_topic"] == {"asked": 5, "got": 5, "labelled": 5}


# --- measures -------------------------------------------------------------------------------------

def constructed():
    params = cal_params(strata={"on_topic": 3, "off_topic": 5, "edge": 2})
    sample = [{**chat_row(i, f"question {i}", "reply"), "stratum": s} for i, s in
              [("o1", "off_topic"), ("o2", "off_topic"), ("o3", "off_topic"), ("o4", "off_topic"),
               ("o5", "off_topic"), ("n1", "on_topic"), ("n2", "on_topic"), ("n3", "on_topic"), ("e1", "edge")]]
    labels = {"o1": label("o1", 2.0, (2, 2, 2)), "o2": label("o2", 5.0, (4, 6, 5)),  # 5.0: fp, exactly at the line
              "o3": label("o3", 7.0, (7, 7, 7)), "o4": label("o4", 4.9, (3, 6, 6)),  # 7.0: severe, exactly
              "n1": label("n1", 4.99, (5, 5, 5)), "n2": label("n2", 5.0, (2, 8, 5)),  # 4.99: fn; 5.0 is not
              "e1": label("e1", 6.0, (6, 6, 6))}  # o5 failed to parse; n3 has no label at all
    repeats = {"o2": label("o2", 6.0, (5, 6, 5)), "n2": label("n2", 3.0, (2, 6, 5)),
               "o5": label("o5", 1.0), "zz": label("zz", 1.0)}  # o5 failed, zz not in the sample: ignored
    return sample, labels, repeats, {"o5": "no JSON"}, params


def test_measure_matches_a_hand_computation():
    m = measure(*constructed()[:4], RUBRIC, constructed()[4])
    assert m["n"] == {"on_topic": {"asked": 3, "got": 3, "labelled": 2},
                      "off_topic": {"asked": 5, "got": 5, "labelled": 4}, "edge": {"asked": 2, "got": 1, "labelled": 1}}
    assert m["false_positive_rate"] == 2 / 4 and m["severe_false_positive_rate"] == 1 / 4
    assert m["false_negative_rate"] == 1 / 2
    # population variances: o1 0, o2 2/3, o3 0, o4 2, n1 0, n2 6, e1 0
    assert m["dimension_variance"] == pytest.approx((2 / 3 + 2 + 6) / 7)
    assert m["score_bins"] == [2, 4, 5, 6, 7] and m["score_bins_used"] == 5
    assert m["parse_failures"] == 2 and m["parse_failure_rate"] == 2 / 9
    assert m["self_consistency_n"] == 2 and m["self_consistency_mad"] == pytest.approx(1.5)
    assert m["self_consistency_mad_by_dimension"] == pytest.approx(
        {"relevance": 0.5, "correctness": 1.0, "helpfulness": 0.0})
    assert m["mean_overall_by_stratum"] == pytest.approx({"off_topic": 4.725, "on_topic": 4.995, "edge": 6.0})
    assert [(w["id"], w["error"]) for w in m["worst"]] == [("o3", True), ("o2", True), ("o4", False), ("o1", False),
                                                           ("n1", True), ("n2", False)]
    assert m["worst"][0]["excerpt"] == "question o3"


def test_measure_empty_stratum_and_no_repeats_are_none_and_excerpt_is_capped():
    params = cal_params(strata={"on_topic": 2, "off_topic": 2, "edge": 0})
    sample = [{**chat_row("n1", "word " * 100, "r"), "stratum": "on_topic"}]
    m = measure(sample, {"n1": label("n1", 8)}, {}, set(), RUBRIC, params)
    assert m["false_positive_rate"] is None and m["severe_false_positive_rate"] is None
    assert m["false_negative_rate"] == 0.0 and m["self_consistency_mad"] is None
    assert m["mean_overall_by_stratum"]["off_topic"] is None
    assert len(m["worst"][0]["excerpt"]) == 200
    assert verdict(m, T)[0] == "REVIEW"


# --- verdict --------------------------------------------------------------------------------------

def m_(fp=0.05, fn=0.1, var=2.0, parse=0.0):
    return {"false_positive_rate": fp, "false_negative_rate": fn, "dimension_variance": var,
            "parse_failure_rate": parse}


def test_verdict_pass():
    v, reasons = verdict(m_(), T)
    assert v == "PASS" and len(reasons) == 4


@pytest.mark.parametrize("kwargs, words", [
    ({"fp": 0.15}, "false positive rate 0.150"), ({"fn": 0.25}, "false negative rate 0.250"),
    ({"var": 0.5}, "dimension variance 0.500"), ({"parse": 0.1}, "parse failure rate 0.100"),
    ({"fp": None}, "false positive rate cannot be measured"), ({"fn": None}, "false negative rate cannot be measured"),
    # exactly at a line: not past it, so neither PASS (strict <, >) nor FAIL (strict >)
    ({"fp": 0.10}, "false positive rate 0.100"), ({"fp": 0.20}, "false positive rate 0.200"),
    ({"fn": 0.20}, "false negative rate 0.200"), ({"fn": 0.30}, "false negative rate 0.300"),
    ({"var": 1.0}, "dimension variance 1.000"), ({"parse": 0.05}, "parse failure rate 0.050"),
])
def test_verdict_review(kwargs, words):
    v, reasons = verdict(m_(**kwargs), T)
    assert v == "REVIEW" and len(reasons) == 1 and reasons[0].startswith(words)


def test_verdict_fail_on_fp_and_on_fn_even_with_the_other_unmeasured():
    assert verdict(m_(fp=0.25), T) == ("FAIL", [verdict(m_(fp=0.25), T)[1][0]])
    assert "false positive rate 0.250 > 0.2" in verdict(m_(fp=0.25, fn=None), T)[1][0]
    v, reasons = verdict(m_(fn=0.35, fp=None), T)
    assert v == "FAIL" and reasons[0].startswith("false negative rate 0.350 > 0.3")
    assert 2 / 20 == T.pass_fp_max and 4 / 20 == T.fail_fp_min  # rates k/n hit the lines exactly


def test_overfit_by_percentage_points():
    main = {"false_positive_rate": 0.05, "false_negative_rate": 0.10}
    assert not overfit(main, {"false_positive_rate": 0.15, "false_negative_rate": 0.10}, T)  # exactly 10 points
    assert not overfit({"false_positive_rate": 0.3, "false_negative_rate": 0.1},
                       {"false_positive_rate": 0.4, "false_negative_rate": 0.1}, T)  # 10.000000000000004 in floats
    assert overfit(main, {"false_positive_rate": 0.16, "false_negative_rate": 0.10}, T)
    assert overfit(main, {"false_positive_rate": 0.0, "false_negative_rate": 0.25}, T)
    assert not overfit(main, {"false_positive_rate": None, "false_negative_rate": 0.0}, T)


# --- agreement with gold --------------------------------------------------------------------------

def test_quadratic_kappa_by_hand():
    # observed (0,0) (1,2) (2,2); marginals [1,1,1] x [1,0,2]; weights (i-j)^2/4
    # sum W*O = 0.25; sum W*E = 2/3 + 1/4 + 1/3 = 1.25; kappa = 1 - 0.25/1.25 = 0.8
    assert quadratic_kappa(np.array([0, 1, 2]), np.array([0, 2, 2]), 0, 2) == pytest.approx(0.8)
    assert quadratic_kappa(np.array([3, 3]), np.array([3, 3]), 0, 10) is None  # no expected disagreement


def synthetic(n=40, seed=0):
    rng = np.random.default_rng(seed)
    gold, labels = {}, {}
    for i in range(n):
        g = rng.uniform(0, 10, 3).round(1)
        o = np.clip(g + rng.normal(0, 1.5, 3), 0, 10)
        gold[f"r{i}"] = {"id": f"r{i}", "scores": dict(zip(RUBRIC.dimensions, g.tolist()))}
        sc = dict(zip(RUBRIC.dimensions, o.tolist()))
        labels[f"r{i}"] = {"id": f"r{i}", "scores": sc, "overall": gold_overall(sc, RUBRIC)}
    labels["only_label"] = labels["r0"]  # ids not in both are left out
    return labels, gold


def test_agreement_matches_scipy_and_sklearn():
    labels, gold = synthetic()
    a = agreement(labels, gold, RUBRIC, n_boot=0, seed=1)
    assert a["n"] == 40
    ids = sorted(gold)
    to_int = lambda v: np.clip(np.floor(np.array(v) + 0.5), 0, 10).astype(int)  # noqa: E731
    for d in RUBRIC.dimensions:
        x, y = [labels[i]["scores"][d] for i in ids], [gold[i]["scores"][d] for i in ids]
        assert a["dimensions"][d]["spearman"]["value"] == pytest.approx(stats.spearmanr(x, y).statistic)
        assert a["dimensions"][d]["qwk"]["value"] == pytest.approx(
            cohen_kappa_score(to_int(x), to_int(y), weights="quadratic", labels=list(range(11))))
        assert a["dimensions"][d]["mae"]["value"] == pytest.approx(np.mean(np.abs(np.array(x) - np.array(y))))
        assert a["dimensions"][d]["mae"]["ci95"] is None
    x, y = [labels[i]["overall"] for i in ids], [gold_overall(gold[i]["scores"], RUBRIC) for i in ids]
    assert a["overall"]["spearman"]["value"] == pytest.approx(stats.spearmanr(x, y).statistic)


def test_agreement_perfect_and_bootstrap_interval():
    _, gold = synthetic()
    perfect = {i: {"scores": g["scores"], "overall": gold_overall(g["scores"], RUBRIC)} for i, g in gold.items()}
    a = agreement(perfect, gold, RUBRIC, n_boot=50, seed=3)
    for s in [*a["dimensions"].values(), a["overall"]]:
        assert (s["spearman"]["value"], s["qwk"]["value"], s["mae"]["value"]) == pytest.approx((1.0, 1.0, 0.0))
    labels, gold = synthetic(seed=5)
    a = agreement(labels, gold, RUBRIC, n_boot=200, seed=7)
    for s in [*a["dimensions"].values(), a["overall"]]:
        for stat in s.values():
            assert stat["ci95"][0] <= stat["value"] <= stat["ci95"][1]
    assert agreement(labels, gold, RUBRIC, n_boot=200, seed=7) == a
    assert agreement(labels, gold, RUBRIC, n_boot=200, seed=8) != a


def test_gold_overall_weights_then_gatekeeper_cap():
    assert gold_overall({"relevance": 10, "correctness": 10, "helpfulness": 6}, RUBRIC) == pytest.approx(9.0)
    assert gold_overall({"relevance": 2, "correctness": 10, "helpfulness": 10}, RUBRIC) == 3.0  # 6.8 capped at 3


def write_gold(tmp_path, rows):
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_gold_good_file(tmp_path):
    path = write_gold(tmp_path, [{"id": "a", "scores": {"relevance": 10, "correctness": 0, "helpfulness": 7.5}}])
    assert load_gold(path, RUBRIC) == {"a": {"id": "a", "scores": {"relevance": 10.0, "correctness": 0.0,
                                                                   "helpfulness": 7.5}}}


@pytest.mark.parametrize("scores, words", [
    ({"relevance": 5, "correctness": 5}, "no score for dimension `helpfulness`"),
    ({"relevance": 5, "correctness": 11, "helpfulness": 5}, "`correctness` is 11, outside the rubric's scale 0..10"),
    ({"relevance": "high", "correctness": 5, "helpfulness": 5}, "`relevance` must be a number"),
    ({"relevance": 5, "correctness": 5, "helpfulness": 5, "relevence": 5}, "unknown dimension `relevence`"),
])
def test_load_gold_bad_row_is_one_line(tmp_path, scores, words):
    ok = {"id": "a", "scores": {"relevance": 1, "correctness": 2, "helpfulness": 3}}
    path = write_gold(tmp_path, [ok, {"id": "b", "scores": scores}])
    with pytest.raises(UserError) as err:
        load_gold(path, RUBRIC)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2 (id b): ") and words in msg


# --- report ---------------------------------------------------------------------------------------

def test_report_leads_with_the_verdict_and_quotes_the_worst():
    sample, labels, repeats, failures, params = constructed()
    m = measure(sample, labels, repeats, failures, RUBRIC, params)
    v, reasons = verdict(m, T)
    g_labels, gold = synthetic()
    result = {"verdict": v, "reasons": reasons, "gate": "enforce", "backend": "claude", "model": "m",
              "sample": m, "validation": {**m, "verdict": v, "reasons": reasons, "overfit": False},
              "agreement": agreement(g_labels, gold, RUBRIC, n_boot=20, seed=0)}
    md = report_markdown(result)
    assert md.splitlines()[2] == ("**Verdict: FAIL** · validation **FAIL** · gold **no gold file** · gate "
                                  "(calibration.gate=enforce) CLOSED: label refuses to run")
    assert md.index(reasons[0]) < md.index("## Measures") < md.index("## Agreement with gold")
    assert md.index("## Worst disagreements") < md.index("`o3` (off_topic, error): overall 7.00")
    assert "> question o3" in md and "`n1` (on_topic, error)" in md
    assert "| false positive rate (off-topic scored high) | 0.500 | 0.500 |" in md
    assert "No gold file" in report_markdown({**result, "agreement": None, "validation": None})


def gate_result(verdict_: str) -> dict:
    return {"verdict": verdict_, "reasons": ["false negative rate 1.000 > 0.3"],
            "validation": {"verdict": "PASS", "reasons": [], "overfit": False}, "gold": None}


@pytest.mark.parametrize(("gate", "backend", "in_force"), [("auto", "claude", "enforce"), ("auto", "local", "warn"),
                                                           ("warn", "claude", "warn"), ("enforce", "local", "enforce")])
def test_open_gate_passes_a_pass_under_every_gate(gate, backend, in_force):
    assert open_gate(gate_result("PASS"), gate, backend) == (in_force, [])


def test_open_gate_warns_under_warn_and_stops_in_one_line_under_enforce():
    gate, failures = open_gate(gate_result("FAIL"), "auto", "local")
    assert gate == "warn" and failures == ["calibration FAIL (false negative rate 1.000 > 0.3)"]
    with pytest.raises(UserError, match=r"^label: the calibration gate is closed \(calibration.gate=enforce\): "
                                        r"calibration FAIL"):
        open_gate(gate_result("FAIL"), "auto", "claude")
    with pytest.raises(UserError, match="calibration.gate must be auto, enforce or warn"):
        open_gate(gate_result("PASS"), "always", "local")
