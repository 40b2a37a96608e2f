"""The student scorer against the oracle on held-out rows: MAE, RMSE and Spearman per dimension and overall,
tier accuracy and confusion, the validation/test gap, the oracle's own noise beside them, and a verdict."""

from __future__ import annotations

import math

from slmforge.labeling import overall_score, tier_of
from slmforge.params import RubricParams, ScorerVerdictParams


def _errors(pairs: list[tuple[float, float]]) -> dict:
    """MAE, RMSE and Spearman of (oracle, predicted) pairs (NaN where undefined: no pairs, or a constant side)."""
    import warnings

    from scipy.stats import spearmanr

    if not pairs:
        return {"n": 0, "mae": float("nan"), "rmse": float("nan"), "spearman": float("nan")}
    diffs = [p - o for o, p in pairs]
    with warnings.catch_warnings():  # a constant side (an oracle that gives every row one score) has no rank order
        warnings.simplefilter("ignore")
        rho = spearmanr([o for o, _ in pairs], [p for _, p in pairs]).statistic if len(pairs) > 1 else float("nan")
    return {"n": len(pairs), "mae": sum(abs(d) for d in diffs) / len(diffs),
            "rmse": math.sqrt(sum(d * d for d in diffs) / len(diffs)), "spearman": float(rho)}


def compare(predictions: list[dict], labels: dict[str, dict], rubric: RubricParams) -> dict:
    """Errors of the predictions against the oracle's labels of the same ids: pooled over every dimension
    (`mae`, `rmse`), per dimension, on the weighted overall score, and on tiers."""
    rows = [(p, labels[p["id"]]) for p in predictions if labels.get(p["id"], {}).get("scores")]
    dims = list(rubric.dimensions)
    per_dim = {d: _errors([(lab["scores"][d], p["scores"][d]) for p, lab in rows]) for d in dims}
    pooled = _errors([(lab["scores"][d], p["scores"][d]) for p, lab in rows for d in dims])
    overall = _errors([(overall_score(lab["scores"], rubric), p["overall"]) for p, lab in rows])
    tiers = list(rubric.tiers) + (["reject"] if "reject" not in rubric.tiers else [])
    confusion = {t: {u: 0 for u in tiers} for t in tiers}
    for p, lab in rows:
        confusion[tier_of(overall_score(lab["scores"], rubric), rubric)][p["tier"]] += 1
    hits = sum(confusion[t][t] for t in tiers)
    return {"n": len(rows), "mae": pooled["mae"], "rmse": pooled["rmse"], "per_dimension": per_dim,
            "overall": overall, "tier_accuracy": hits / len(rows) if rows else float("nan"),
            "confusion": confusion}


def verdict(test: dict, val: dict, v: ScorerVerdictParams, baseline: dict | None = None) -> tuple[str, list[str], float]:
    """(DEPLOY | REVIEW | FAIL, reasons, validation/test gap). DEPLOY when test MAE < deploy_mae, RMSE <
    deploy_rmse, no dimension's MAE above deploy_max_dimension_mae and |test MAE - val MAE| < deploy_max_gap,
    and (given the train-mean baseline) the scorer's MAE is below the baseline's: a scorer no better than a
    constant has learned nothing worth deploying. FAIL when test MAE > fail_mae (or nothing could be measured);
    REVIEW otherwise."""
    gap = abs(test["mae"] - val["mae"])
    worst_dim, worst = max(((d, e["mae"]) for d, e in test["per_dimension"].items()), key=lambda x: x[1],
                           default=(None, float("nan")))
    checks = [
        (test["mae"] < v.deploy_mae, f"test MAE {test['mae']:.3f} {'<' if test['mae'] < v.deploy_mae else '>='} {v.deploy_mae}"),
        (test["rmse"] < v.deploy_rmse, f"RMSE {test['rmse']:.3f} {'<' if test['rmse'] < v.deploy_rmse else '>='} {v.deploy_rmse}"),
        (worst <= v.deploy_max_dimension_mae,
         f"worst dimension {worst_dim} MAE {worst:.3f} {'<=' if worst <= v.deploy_max_dimension_mae else '>'} "
         f"{v.deploy_max_dimension_mae}"),
        (gap < v.deploy_max_gap, f"validation/test gap {gap:.3f} {'<' if gap < v.deploy_max_gap else '>='} {v.deploy_max_gap}"),
    ]
    if baseline is not None:
        beats = test["mae"] < baseline["mae"]
        checks.append((beats, f"{'better' if beats else 'no better'} than predicting the train mean (MAE "
                              f"{baseline['mae']:.3f})"))
    reasons = [text for _, text in checks]
    if not test["n"] or math.isnan(test["mae"]) or test["mae"] > v.fail_mae:
        return "FAIL", [f"test MAE {test['mae']:.3f} > {v.fail_mae} (scorer.verdict.fail_mae)", *reasons], gap
    if all(ok for ok, _ in checks):
        return "DEPLOY", reasons, gap
    return "REVIEW", reasons, gap


def mean_baseline(train_ids: list[str], labels: dict[str, dict], rubric: RubricParams, ids: list[str]) -> list[dict]:
    """The scorer a model must beat: every record gets the train split's mean oracle score on each dimension.
    (With an oracle that gives every record nearly the same score, this alone has a small error.)"""
    scored = [labels[i]["scores"] for i in train_ids if labels.get(i, {}).get("scores")]
    means = {d: sum(s[d] for s in scored) / len(scored) if scored else float("nan") for d in rubric.dimensions}
    overall = overall_score(means, rubric) if scored else float("nan")
    return [{"id": i, "scores": means, "overall": overall, "tier": tier_of(overall, rubric) if scored else "reject"}
            for i in ids]


def evaluate(val_pred: list[dict], test_pred: list[dict], labels: dict[str, dict], rubric: RubricParams,
             v: ScorerVerdictParams, calibration: dict | None, baseline_pred: list[dict] | None = None) -> dict:
    test, val = compare(test_pred, labels, rubric), compare(val_pred, labels, rubric)
    base = compare(baseline_pred, labels, rubric) if baseline_pred is not None else None
    decision, reasons, gap = verdict(test, val, v, base)
    sample = (calibration or {}).get("sample") or {}
    return {
        "verdict": decision, "reasons": reasons, "mae": test["mae"], "rmse": test["rmse"],
        "per_dimension": test["per_dimension"], "overall": test["overall"], "tier_accuracy": test["tier_accuracy"],
        "confusion": test["confusion"], "n_test": test["n"], "n_val": val["n"],
        "val": {"mae": val["mae"], "rmse": val["rmse"], "tier_accuracy": val["tier_accuracy"]}, "gap": gap,
        # The floor: how far the oracle lands from itself when asked the same record twice (calibration).
        "mean_baseline": {"mae": base["mae"], "rmse": base["rmse"], "tier_accuracy": base["tier_accuracy"]}
        if base else None,
        "oracle_noise": {"self_consistency_mad": sample.get("self_consistency_mad"),
                         "by_dimension": sample.get("self_consistency_mad_by_dimension"),
                         "n": sample.get("self_consistency_n")},
    }


def plot_rows(test_pred: list[dict], labels: dict[str, dict], dims: list[str]) -> list[dict]:
    """Predicted against oracle score, one point per (test row, dimension), for `dvc plots`."""
    return [{"id": p["id"], "dimension": d, "oracle": labels[p["id"]]["scores"][d], "predicted": p["scores"][d]}
            for p in test_pred if labels.get(p["id"], {}).get("scores") for d in dims]


def report_markdown(result: dict) -> str:
    noise = result["oracle_noise"]
    lines = [f"# Student scorer against the oracle: **{result['verdict']}**", "",
             "; ".join(result["reasons"]) + ".", "",
             f"On {result['n_test']} test rows (validation {result['n_val']}): MAE {result['mae']:.3f}, RMSE "
             f"{result['rmse']:.3f}, tier accuracy {result['tier_accuracy']:.1%}; validation MAE {result['val']['mae']:.3f} "
             f"(gap {result['gap']:.3f}). The oracle's own noise (mean absolute difference when asked the same record "
             f"twice, from calibration): {noise['self_consistency_mad']} on {noise['n']} records." +
             (f" Predicting the train split's mean score on every dimension instead: MAE "
              f"{result['mean_baseline']['mae']:.3f}, RMSE {result['mean_baseline']['rmse']:.3f}."
              if result.get("mean_baseline") else ""), "",
             "| dimension | MAE | RMSE | Spearman | oracle self-consistency MAD |", "|---|---:|---:|---:|---:|"]
    for d, e in result["per_dimension"].items():
        floor = (noise.get("by_dimension") or {}).get(d)
        lines.append(f"| {d} | {e['mae']:.3f} | {e['rmse']:.3f} | {e['spearman']:.3f} | {floor if floor is not None else 'n/a'} |")
    o = result["overall"]
    lines.append(f"| overall (weighted) | {o['mae']:.3f} | {o['rmse']:.3f} | {o['spearman']:.3f} | |")
    tiers = list(result["confusion"])
    lines += ["", "Tiers (rows: the oracle's, columns: the scorer's):", "", "| oracle \\ scorer | " + " | ".join(tiers) + " |",
              "|---|" + "---:|" * len(tiers)]
    for t in tiers:
        lines.append(f"| {t} | " + " | ".join(str(result["confusion"][t][u]) for u in tiers) + " |")
    return "\n".join(lines) + "\n"
