"""Paired significance tests, effect sizes and the DEPLOY / REVIEW / FAIL verdict for tuned against base."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

NAN = float("nan")
OUTCOMES = {"tuned": 1.0, "tie": 0.5, "base": 0.0}


def _bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample item indices with replacement."""
    if not 0 < ci < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs 0 < ci < 1 and n_boot >= 1, got ci={ci}, n_boot={n_boot}")
    n = len(values)
    if n == 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # Chunks of resamples keep the index matrix small for a few thousand items x 2000 resamples.
    for start in range(0, n_boot, 256):
        stop = min(start + 256, n_boot)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return float(low), float(high)


def _ratio(num: float, den: float) -> float:
    """num / den for a standardised effect: no difference is 0 whatever the spread; x/0 is undefined."""
    if num == 0:
        return 0.0
    if den == 0 or math.isnan(den) or math.isnan(num):
        return NAN
    return num / den


def _wilcoxon_p(deltas: np.ndarray) -> float:
    if len(deltas) == 0:
        return NAN
    # scipy drops zero deltas ("wilcox") and has nothing left to rank; no difference at all is p = 1.
    if not np.any(deltas):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(deltas).pvalue)


def _mannwhitney_p(tuned: np.ndarray, base: np.ndarray) -> float:
    if len(tuned) == 0 or len(base) == 0:
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.mannwhitneyu(tuned, base).pvalue)


def _cliffs_delta(tuned: np.ndarray, base: np.ndarray) -> float:
    """(#(t > b) - #(t < b)) / (n_t * n_b) over all pairs, by sorting base once (O(n log n))."""
    if len(tuned) == 0 or len(base) == 0:
        return NAN
    sorted_base = np.sort(base)
    below = np.searchsorted(sorted_base, tuned, side="left").sum()
    above = (len(base) - np.searchsorted(sorted_base, tuned, side="right")).sum()
    return float(below - above) / (len(tuned) * len(base))


def paired_stats(base: Sequence[float], tuned: Sequence[float], *, higher_is_better: bool,
                 n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Tests and effect sizes for one metric measured on the same items for base and tuned.

    mean_delta and its bootstrap CI are raw (tuned - base). Every effect size (cohens_d, cohens_dz,
    cliffs_delta, relative_improvement) and the better/worse counts are oriented: positive means the
    tuned model is better, so a drop in a lower-is-better metric such as NLL counts as positive.
    Undefined values are nan; degenerate input (no items, one item, no differences) never raises.
    """
    b = np.asarray(base, dtype=float)
    t = np.asarray(tuned, dtype=float)
    if b.shape != t.shape or b.ndim != 1:
        raise ValueError(f"paired_stats needs two flat lists of equal length, got {b.shape} and {t.shape}")
    n = len(b)
    sign = 1.0 if higher_is_better else -1.0
    deltas = t - b
    mean_base = float(b.mean()) if n else NAN
    mean_tuned = float(t.mean()) if n else NAN
    mean_delta = float(deltas.mean()) if n else NAN
    ci_low, ci_high = _bootstrap_ci(deltas, n_boot, seed, ci)
    # ddof=1 is undefined below two items; nan then, which _ratio turns into nan unless there is no effect.
    var_base = float(b.var(ddof=1)) if n > 1 else NAN
    var_tuned = float(t.var(ddof=1)) if n > 1 else NAN
    sd_delta = float(deltas.std(ddof=1)) if n > 1 else NAN
    # d_av: the mean difference over the root mean of the two variances, comparable with an
    # independent-samples d; d_z divides by the SD of the differences and grows with their correlation.
    pooled_sd = math.sqrt((var_base + var_tuned) / 2)
    oriented = sign * deltas
    return {
        "n": n,
        "mean_base": mean_base,
        "mean_tuned": mean_tuned,
        "mean_delta": mean_delta,
        "delta_ci_low": ci_low,
        "delta_ci_high": ci_high,
        "wilcoxon_p": _wilcoxon_p(deltas),
        # Treats the two runs as independent samples; reported beside Wilcoxon, the verdict ignores it.
        "mannwhitney_p": _mannwhitney_p(t, b),
        "cohens_d": _ratio(sign * (mean_tuned - mean_base), pooled_sd) if n else NAN,
        "cohens_dz": _ratio(sign * mean_delta, sd_delta) if n else NAN,
        "cliffs_delta": sign * _cliffs_delta(t, b),
        "relative_improvement": (sign * (mean_tuned - mean_base) / abs(mean_base)
                                 if n and mean_base != 0 else NAN),
        "better_items": int((oriented > 0).sum()),
        "worse_items": int((oriented < 0).sum()),
        "tied_items": int((oriented == 0).sum()),
    }


def win_rate(outcomes: Sequence[str], *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Pairwise-judge verdicts ("tuned", "base", "tie") as a win rate where a tie counts half.

    0.5 is parity. The CI is a percentile bootstrap over items; the sign test ignores ties.
    """
    bad = [o for o in outcomes if o not in OUTCOMES]
    if bad:
        raise ValueError(f"judge outcome {bad[0]!r} is not one of {sorted(OUTCOMES)}")
    scores = np.array([OUTCOMES[o] for o in outcomes], dtype=float)
    n = len(scores)
    wins, losses = int((scores == 1.0).sum()), int((scores == 0.0).sum())
    ci_low, ci_high = _bootstrap_ci(scores, n_boot, seed, ci)
    decided = wins + losses
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": n - decided,
        "win_rate": float(scores.mean()) if n else NAN,
        "win_rate_ci_low": ci_low,
        "win_rate_ci_high": ci_high,
        "sign_test_p": float(stats.binomtest(wins, decided, 0.5).pvalue) if decided else 1.0,
    }


def _check(name: str, value: float, op: str, threshold: float, fmt: str) -> tuple[bool, str]:
    """value op threshold (strict), and the sentence that says so with the numbers."""
    if math.isnan(value):
        return False, f"{name} is undefined (nan)"
    ok = value < threshold if op == "<" else value > threshold
    shown = op if ok else {"<": ">=", ">": "<="}[op]
    return ok, f"{name} = {value:{fmt}} {shown} {threshold:{fmt}}"


def verdict(primary: dict, *, p_max: float, min_effect: float, min_improvement: float,
            judge: dict | None = None) -> tuple[str, list[str]]:
    """DEPLOY, REVIEW or FAIL from a paired_stats() result and an optional win_rate() result.

    FAIL, checked first, when any of:
      - tuned is significantly worse: wilcoxon_p < p_max and cohens_d < 0;
      - tuned is not better at all: relative_improvement <= 0 (or nan) and cohens_d <= 0;
      - the judge significantly prefers base: win_rate_ci_high < 0.5.
    DEPLOY when all of (strict inequalities, so a value on a threshold does not pass):
      - wilcoxon_p < p_max, cohens_d > min_effect, relative_improvement > min_improvement;
      - with a judge, its win_rate >= 0.5 (the judge does not prefer base).
    REVIEW otherwise: better but not significantly or sizably enough, or the signals disagree.
    A nan statistic fails its check, so it can never give DEPLOY.
    """
    p, d = primary["wilcoxon_p"], primary["cohens_d"]
    improvement = primary["relative_improvement"]
    p_ok, p_line = _check("Wilcoxon p", p, "<", p_max, ".3g")
    d_ok, d_line = _check("Cohen's d", d, ">", min_effect, ".2f")
    r_ok, r_line = _check("relative improvement", improvement, ">", min_improvement, "+.1%")
    reasons = [p_line, d_line, r_line]
    judge_ok = True
    if judge is not None:
        rate, low, high = judge["win_rate"], judge["win_rate_ci_low"], judge["win_rate_ci_high"]
        judge_ok = not math.isnan(rate) and rate >= 0.5
        reasons.append(f"judge win rate = {rate:.2f} (CI {low:.2f} to {high:.2f}, n = {judge['n']}), "
                       f"{'at or above' if judge_ok else 'below'} parity 0.5")
        if high < 0.5:
            return "FAIL", ["judge significantly prefers base (win rate CI entirely below 0.5)"] + reasons
    if p_ok and d < 0:
        return "FAIL", ["tuned is significantly worse than base"] + reasons
    if (math.isnan(improvement) or improvement <= 0) and d <= 0:
        return "FAIL", ["tuned is not better than base"] + reasons
    if p_ok and d_ok and r_ok and judge_ok:
        return "DEPLOY", reasons
    return "REVIEW", reasons
