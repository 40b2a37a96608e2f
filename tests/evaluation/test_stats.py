"""Paired statistics, judge win rate and the verdict, checked against values computed independently here."""

import itertools
import math
import statistics

import numpy as np
import pytest

from slmforge.evaluation.stats import paired_stats, verdict, win_rate

NAN = float("nan")
KEYS = {"n", "mean_base", "mean_tuned", "mean_delta", "delta_ci_low", "delta_ci_high", "wilcoxon_p",
        "mannwhitney_p", "cohens_d", "cohens_dz", "cliffs_delta", "relative_improvement",
        "better_items", "worse_items", "tied_items"}

# Ten paired items whose deltas have distinct magnitudes and no zeros, so the exact Wilcoxon null applies.
BASE10 = [3.0, 4.0, 2.5, 5.0, 6.0, 1.0, 4.5, 3.5, 5.5, 2.0]
DELTAS10 = [1.1, -0.3, 2.4, 0.7, -1.6, 3.2, 0.5, 1.9, -0.9, 2.8]
TUNED10 = [b + d for b, d in zip(BASE10, DELTAS10)]


def _two_sided(null: list[float], observed: float) -> float:
    """Exact two-sided p of an enumerated null distribution: twice the smaller tail, at most 1."""
    lower = sum(x <= observed + 1e-9 for x in null) / len(null)
    upper = sum(x >= observed - 1e-9 for x in null) / len(null)
    return min(1.0, 2 * min(lower, upper))


def _ranks_of_abs(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: abs(values[i]))
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def test_result_has_exactly_the_documented_keys():
    assert set(paired_stats(BASE10, TUNED10, higher_is_better=True)) == KEYS
    assert set(win_rate(["tuned", "base"])) == {"n", "wins", "losses", "ties", "win_rate",
                                                "win_rate_ci_low", "win_rate_ci_high", "sign_test_p"}


def test_wilcoxon_matches_hand_worked_signed_ranks_and_exact_enumeration():
    deltas = [t - b for b, t in zip(BASE10, TUNED10)]
    ranks = _ranks_of_abs(deltas)
    w_plus = sum(r for r, d in zip(ranks, deltas) if d > 0)
    # By hand: |d| ranks 1..10; the negatives -0.3, -0.9, -1.6 hold ranks 1, 4, 6, so W- = 11, W+ = 44.
    assert w_plus == 44
    # Under H0 each rank is positive or negative with probability 1/2: all 2^10 sign assignments.
    null = [sum(r for r, s in zip(range(1, 11), signs) if s)
            for signs in itertools.product([0, 1], repeat=10)]
    expected = _two_sided(null, w_plus)
    got = paired_stats(BASE10, TUNED10, higher_is_better=True)["wilcoxon_p"]
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0.01 < got < 0.2


def test_wilcoxon_large_sample_matches_normal_approximation_by_hand():
    rng = np.random.default_rng(7)
    base = rng.normal(0.0, 1.0, 60)
    deltas = rng.normal(0.3, 1.0, 60)
    tuned = base + deltas
    deltas = list(tuned - base)
    n = len(deltas)
    w_plus = sum(r for r, d in zip(_ranks_of_abs(deltas), deltas) if d > 0)
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    expected = math.erfc(abs(z) / math.sqrt(2))
    assert paired_stats(base, tuned, higher_is_better=True)["wilcoxon_p"] == pytest.approx(expected, rel=1e-6)


def test_mannwhitney_matches_hand_counted_u_and_exact_enumeration_of_splits():
    tuned = [1.2, 3.4, 5.1, 6.0, 7.7]
    base = [0.8, 2.2, 2.9, 4.4, 5.5]
    u = sum(t > b for t in tuned for b in base)
    assert u == 18  # by hand: 1 + 3 + 4 + 5 + 5
    pooled = tuned + base
    # Under H0 every split of the ten values into 5 + 5 is equally likely; U of the first group.
    null = [sum(pooled[i] > pooled[j] for i in group for j in set(range(10)) - set(group))
            for group in itertools.combinations(range(10), 5)]
    expected = _two_sided(null, u)
    # With five per group and no ties scipy's default is the exact distribution, so they must agree.
    got = paired_stats(base, tuned, higher_is_better=True)["mannwhitney_p"]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(2 * sum(x >= 18 for x in null) / 252)


def test_mannwhitney_large_sample_matches_normal_approximation_with_continuity():
    rng = np.random.default_rng(3)
    base, tuned = rng.normal(0, 1, 20), rng.normal(0.5, 1, 20)
    u = sum(t > b for t in tuned for b in base)
    u = max(u, 400 - u)
    z = (u - 200 - 0.5) / math.sqrt(20 * 20 * 41 / 12)
    got = paired_stats(base, tuned, higher_is_better=True)["mannwhitney_p"]
    assert got == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-6)


def test_effect_sizes_match_textbook_formulas():
    stats = paired_stats(BASE10, TUNED10, higher_is_better=True)
    mean_b, mean_t = statistics.mean(BASE10), statistics.mean(TUNED10)
    pooled = math.sqrt((statistics.stdev(BASE10) ** 2 + statistics.stdev(TUNED10) ** 2) / 2)
    deltas = [t - b for b, t in zip(BASE10, TUNED10)]
    above = sum(t > b for t in TUNED10 for b in BASE10)
    below = sum(t < b for t in TUNED10 for b in BASE10)
    assert stats["n"] == 10
    assert stats["mean_base"] == pytest.approx(mean_b)
    assert stats["mean_tuned"] == pytest.approx(mean_t)
    assert stats["mean_delta"] == pytest.approx(sum(DELTAS10) / 10)
    assert stats["cohens_d"] == pytest.approx((mean_t - mean_b) / pooled)
    assert stats["cohens_dz"] == pytest.approx(statistics.mean(deltas) / statistics.stdev(deltas))
    assert stats["cliffs_delta"] == pytest.approx((above - below) / 100)
    assert stats["relative_improvement"] == pytest.approx((mean_t - mean_b) / abs(mean_b))
    assert (stats["better_items"], stats["worse_items"], stats["tied_items"]) == (7, 3, 0)


def test_cliffs_delta_counts_ties_as_neither():
    base, tuned = [1, 2, 2, 3], [2, 2, 3, 1]
    above = sum(t > b for t in tuned for b in base)
    below = sum(t < b for t in tuned for b in base)
    expected = (above - below) / 16
    assert paired_stats(base, tuned, higher_is_better=True)["cliffs_delta"] == pytest.approx(expected)


def test_lower_is_better_metric_is_oriented_so_positive_means_tuned_better():
    base_nll = [2.0, 2.5, 3.0, 2.2, 2.8]
    tuned_nll = [1.5, 2.4, 2.6, 2.3, 2.1]
    low = paired_stats(base_nll, tuned_nll, higher_is_better=False)
    high = paired_stats(base_nll, tuned_nll, higher_is_better=True)
    assert low["mean_delta"] < 0  # raw tuned - base, never oriented
    assert low["delta_ci_low"] == high["delta_ci_low"] and low["mean_delta"] == high["mean_delta"]
    for key in ("cohens_d", "cohens_dz", "cliffs_delta", "relative_improvement"):
        assert low[key] > 0
        assert low[key] == pytest.approx(-high[key])
    mean_b, mean_t = statistics.mean(base_nll), statistics.mean(tuned_nll)
    assert low["relative_improvement"] == pytest.approx((mean_b - mean_t) / mean_b)
    assert (low["better_items"], low["worse_items"]) == (4, 1)
    assert (high["better_items"], high["worse_items"]) == (1, 4)


def test_relative_improvement_divides_by_the_size_of_a_negative_base():
    # Mean log-likelihood: higher is better and negative, so going from -2.0 to -1.5 is a 25% gain.
    stats = paired_stats([-2.0, -2.0], [-1.5, -1.5], higher_is_better=True)
    assert stats["relative_improvement"] == pytest.approx(0.25)


def test_bootstrap_ci_is_deterministic_covers_the_mean_and_matches_the_normal_interval():
    rng = np.random.default_rng(11)
    base = rng.normal(0, 1, 400)
    tuned = base + rng.normal(0.3, 1.0, 400)
    first = paired_stats(base, tuned, higher_is_better=True, seed=5)
    again = paired_stats(base, tuned, higher_is_better=True, seed=5)
    assert (first["delta_ci_low"], first["delta_ci_high"]) == (again["delta_ci_low"], again["delta_ci_high"])
    other = paired_stats(base, tuned, higher_is_better=True, seed=6)
    assert other["delta_ci_low"] != first["delta_ci_low"]
    assert first["delta_ci_low"] < 0.3 < first["delta_ci_high"]
    assert first["delta_ci_low"] < first["mean_delta"] < first["delta_ci_high"]
    deltas = tuned - base
    half = 1.96 * statistics.stdev(deltas) / math.sqrt(400)
    assert first["delta_ci_low"] == pytest.approx(deltas.mean() - half, abs=0.15 * half)
    assert first["delta_ci_high"] == pytest.approx(deltas.mean() + half, abs=0.15 * half)
    narrow = paired_stats(base, tuned, higher_is_better=True, seed=5, ci=0.5)
    assert narrow["delta_ci_high"] - narrow["delta_ci_low"] < first["delta_ci_high"] - first["delta_ci_low"]


def test_bootstrap_ci_narrows_with_more_items():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 400)
    tuned = base + rng.normal(0.3, 1.0, 400)
    small = paired_stats(base[:25], tuned[:25], higher_is_better=True)
    large = paired_stats(base, tuned, higher_is_better=True)
    # Width shrinks like 1/sqrt(n): sixteen times the items, about a quarter of the width.
    width = {k: v["delta_ci_high"] - v["delta_ci_low"] for k, v in (("small", small), ("large", large))}
    assert width["large"] < 0.5 * width["small"]


def test_no_items_gives_nan_statistics_and_zero_counts():
    stats = paired_stats([], [], higher_is_better=True)
    assert stats["n"] == 0
    assert (stats["better_items"], stats["worse_items"], stats["tied_items"]) == (0, 0, 0)
    for key in KEYS - {"n", "better_items", "worse_items", "tied_items"}:
        assert math.isnan(stats[key]), key


def test_one_item_gives_the_delta_and_undefined_spread():
    stats = paired_stats([0.3], [0.5], higher_is_better=True)
    assert stats["n"] == 1
    assert stats["delta_ci_low"] == pytest.approx(0.2) and stats["delta_ci_high"] == pytest.approx(0.2)
    assert math.isnan(stats["cohens_d"]) and math.isnan(stats["cohens_dz"])
    assert stats["cliffs_delta"] == 1.0
    assert stats["relative_improvement"] == pytest.approx(0.2 / 0.3)
    assert stats["wilcoxon_p"] == 1.0  # one signed rank cannot be significant
    assert stats["better_items"] == 1


def test_identical_runs_give_no_effect_and_p_of_one():
    values = [0.2, 0.5, 0.5, 0.9]
    stats = paired_stats(values, list(values), higher_is_better=True)
    assert stats["wilcoxon_p"] == 1.0 and stats["mannwhitney_p"] == 1.0
    assert stats["cohens_d"] == 0.0 and stats["cohens_dz"] == 0.0 and stats["cliffs_delta"] == 0.0
    assert stats["relative_improvement"] == 0.0
    assert (stats["delta_ci_low"], stats["delta_ci_high"]) == (0.0, 0.0)
    assert stats["tied_items"] == 4
    single = paired_stats([0.4], [0.4], higher_is_better=True)
    assert single["cohens_d"] == 0.0 and single["wilcoxon_p"] == 1.0


def test_zero_variance_is_nan_not_infinite():
    stats = paired_stats([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], higher_is_better=True)
    assert math.isnan(stats["cohens_d"]) and math.isnan(stats["cohens_dz"])
    assert stats["cliffs_delta"] == 1.0
    zero_base = paired_stats([0.0, 0.0], [1.0, 0.0], higher_is_better=True)
    assert math.isnan(zero_base["relative_improvement"])


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        paired_stats([1.0, 2.0], [1.0], higher_is_better=True)


def test_win_rate_counts_ties_as_half_and_sign_test_ignores_them():
    outcomes = ["tuned"] * 6 + ["base"] * 2 + ["tie"] * 2
    result = win_rate(outcomes)
    assert (result["n"], result["wins"], result["losses"], result["ties"]) == (10, 6, 2, 2)
    assert result["win_rate"] == pytest.approx(0.7)
    # Two-sided sign test on 6 wins of 8 decided items: 2 * P(X >= 6), X ~ Binomial(8, 1/2).
    expected = 2 * sum(math.comb(8, k) for k in range(6, 9)) / 2 ** 8
    assert result["sign_test_p"] == pytest.approx(expected)
    assert result["win_rate_ci_low"] <= 0.7 <= result["win_rate_ci_high"]


def test_win_rate_parity_and_all_ties():
    parity = win_rate(["tuned", "base"] * 5)
    assert parity["win_rate"] == 0.5 and parity["sign_test_p"] == 1.0
    ties = win_rate(["tie"] * 4)
    assert ties["win_rate"] == 0.5 and ties["sign_test_p"] == 1.0
    assert (ties["win_rate_ci_low"], ties["win_rate_ci_high"]) == (0.5, 0.5)
    empty = win_rate([])
    assert empty["n"] == 0 and math.isnan(empty["win_rate"]) and empty["sign_test_p"] == 1.0


def test_win_rate_ci_is_deterministic_for_a_seed():
    outcomes = ["tuned", "base", "tie", "tuned", "tuned", "base", "tuned"] * 5
    first, again = win_rate(outcomes, seed=3), win_rate(outcomes, seed=3)
    assert (first["win_rate_ci_low"], first["win_rate_ci_high"]) == (again["win_rate_ci_low"],
                                                                     again["win_rate_ci_high"])
    assert first["win_rate_ci_low"] < first["win_rate"] < first["win_rate_ci_high"]


def test_unknown_outcome_is_named():
    with pytest.raises(ValueError, match="'Tuned'"):
        win_rate(["tuned", "Tuned", "tie"])


def _primary(p: float, d: float, improvement: float) -> dict:
    return {"wilcoxon_p": p, "cohens_d": d, "relative_improvement": improvement}


def _judge(rate: float, low: float, high: float) -> dict:
    return {"n": 50, "win_rate": rate, "win_rate_ci_low": low, "win_rate_ci_high": high}


THRESHOLDS = {"p_max": 0.05, "min_effect": 0.2, "min_improvement": 0.05}


def test_deploy_when_significant_large_and_improved():
    label, reasons = verdict(_primary(0.012, 0.5, 0.1), **THRESHOLDS)
    assert label == "DEPLOY"
    assert "Wilcoxon p = 0.012 < 0.05" in reasons
    assert "Cohen's d = 0.50 > 0.20" in reasons
    assert "relative improvement = +10.0% > +5.0%" in reasons


def test_deploy_from_real_paired_stats_and_fail_for_identical_runs():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 80)
    tuned = base + rng.normal(0.15, 0.05, 80)
    assert verdict(paired_stats(base, tuned, higher_is_better=True), **THRESHOLDS)[0] == "DEPLOY"
    same = paired_stats(base, base, higher_is_better=True)
    assert verdict(same, **THRESHOLDS)[0] == "FAIL"


@pytest.mark.parametrize("p, d, improvement", [
    (0.05, 0.5, 0.1),   # p exactly at p_max is not significant
    (0.01, 0.2, 0.1),   # effect exactly at min_effect is not large enough
    (0.01, 0.5, 0.05),  # improvement exactly at min_improvement is not enough
    (0.2, 0.5, 0.1),    # better but not significant
    (0.01, 0.1, 0.1),   # significant but small
])
def test_review_on_or_below_a_threshold(p, d, improvement):
    label, reasons = verdict(_primary(p, d, improvement), **THRESHOLDS)
    assert label == "REVIEW"
    assert len(reasons) == 3


@pytest.mark.parametrize("p, d, improvement", [(NAN, 0.5, 0.1), (0.01, NAN, 0.1), (0.01, 0.5, NAN)])
def test_nan_statistic_never_deploys(p, d, improvement):
    label, reasons = verdict(_primary(p, d, improvement), **THRESHOLDS)
    assert label == "REVIEW"
    assert any("undefined" in r for r in reasons)


def test_fail_when_significantly_worse():
    label, reasons = verdict(_primary(0.01, -0.5, -0.1), **THRESHOLDS)
    assert label == "FAIL"
    assert "significantly worse" in reasons[0]


@pytest.mark.parametrize("d, improvement", [(0.0, 0.0), (-0.05, -0.01), (-0.05, NAN)])
def test_fail_when_not_better_even_without_significance(d, improvement):
    label, reasons = verdict(_primary(0.6, d, improvement), **THRESHOLDS)
    assert label == "FAIL"
    assert "not better" in reasons[0]


def test_judge_that_significantly_prefers_base_fails_otherwise_good_metrics():
    label, reasons = verdict(_primary(0.01, 0.5, 0.1), judge=_judge(0.3, 0.2, 0.4), **THRESHOLDS)
    assert label == "FAIL"
    assert "judge" in reasons[0]
    assert any("judge win rate = 0.30" in r for r in reasons)


@pytest.mark.parametrize("judge, expected", [
    (_judge(0.5, 0.4, 0.6), "DEPLOY"),    # parity is enough
    (_judge(0.49, 0.4, 0.6), "REVIEW"),   # leans to base without significance
    (_judge(0.45, 0.4, 0.5), "REVIEW"),   # CI touching 0.5 is not "significantly prefers base"
    (_judge(0.45, 0.4, 0.49), "FAIL"),
    (_judge(NAN, NAN, NAN), "REVIEW"),    # an empty judge run cannot back a deployment
])
def test_judge_thresholds_are_strict(judge, expected):
    assert verdict(_primary(0.01, 0.5, 0.1), judge=judge, **THRESHOLDS)[0] == expected
