"""Human gold scores: reading and writing a gold file, and the oracle's agreement with it (Spearman,
quadratic-weighted kappa and MAE with bootstrap intervals), which the calibration gate checks."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from slmforge.errors import UserError
from slmforge.io import atomic_write_text, iter_jsonl
from slmforge.params import CalibrationThresholds, RubricParams


def gold_overall(scores: dict[str, float], rubric: RubricParams) -> float:
    """A gold row's overall score by the same rule the labels use (weighted sum, then gatekeeper caps)."""
    from slmforge.labeling import overall_score

    return float(overall_score({name: float(scores[name]) for name in rubric.dimensions}, rubric))


def quadratic_kappa(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> float | None:
    """Quadratic-weighted Cohen's kappa of two integer ratings on lo..hi; None when undefined (no expected
    disagreement: both raters gave one and the same score). Written out (as sklearn's cohen_kappa_score
    weights="quadratic" computes it) because scikit-learn is not one of the project's dependencies."""
    k = hi - lo + 1
    observed = np.zeros((k, k))
    np.add.at(observed, (a - lo, b - lo), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / max(k - 1, 1) ** 2
    denominator = (weights * expected).sum()
    return None if denominator == 0 else float(1 - (weights * observed).sum() / denominator)


def _to_scale(x: np.ndarray, rubric: RubricParams) -> np.ndarray:
    # Round half up (2.5 -> 3 and 3.5 -> 4), as a person reads a scale; numpy's half-to-even would send 2.5 to 2.
    return np.clip(np.floor(x + 0.5), rubric.min_score, rubric.max_score).astype(int)


def _statistics(x: np.ndarray, y: np.ndarray, rubric: RubricParams) -> dict[str, float | None]:
    with warnings.catch_warnings():  # constant input: Spearman is undefined, reported as None
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(x, y).statistic if len(x) >= 2 else float("nan")
    return {"spearman": None if np.isnan(rho) else float(rho),
            "qwk": quadratic_kappa(_to_scale(x, rubric), _to_scale(y, rubric), rubric.min_score, rubric.max_score),
            "mae": float(np.mean(np.abs(x - y))) if len(x) else None}  # on the raw scores, not the rounded ones


def agreement(labels: dict[str, dict], gold: dict[str, dict], rubric: RubricParams, n_boot: int, seed: int) -> dict:
    """Oracle labels against human gold scores over the ids in both: Spearman, quadratic-weighted kappa (scores
    rounded to the integer scale) and MAE per dimension and for overall (the oracle's own overall; gold's by
    gold_overall). Each comes with a bootstrap 95% percentile interval over records; a resample where a statistic
    is undefined is skipped for that statistic. {"n", "n_boot", "seed", "dimensions": {d: S}, "overall": S} with
    S = {statistic: {"value", "ci95": [low, high] | None}}."""
    ids = sorted(set(labels) & set(gold))
    series = {d: (np.array([float(labels[i]["scores"][d]) for i in ids]),
                  np.array([float(gold[i]["scores"][d]) for i in ids])) for d in rubric.dimensions}
    series["overall"] = (np.array([float(labels[i]["overall"]) for i in ids]),
                         np.array([gold_overall(gold[i]["scores"], rubric) for i in ids]))
    point = {name: _statistics(x, y, rubric) for name, (x, y) in series.items()}
    boot: dict[str, dict[str, list[float]]] = {name: {s: [] for s in point[name]} for name in series}
    rng = np.random.default_rng(seed)
    for _ in range(n_boot if ids else 0):
        idx = rng.integers(0, len(ids), len(ids))  # one resample of records serves every statistic
        for name, (x, y) in series.items():
            for s, v in _statistics(x[idx], y[idx], rubric).items():
                if v is not None:
                    boot[name][s].append(v)

    def summary(name: str) -> dict:
        return {s: {"value": v, "ci95": [float(np.percentile(boot[name][s], 2.5)),
                                         float(np.percentile(boot[name][s], 97.5))] if boot[name][s] else None}
                for s, v in point[name].items()}

    return {"n": len(ids), "n_boot": n_boot, "seed": seed,
            "dimensions": {d: summary(d) for d in rubric.dimensions}, "overall": summary("overall")}


def load_gold(path: str | Path, rubric: RubricParams) -> dict[str, dict]:
    """Human scores {id, scores{dimension: number}} by id. Every rubric dimension must be there, a number on the
    rubric's scale; anything else (unknown dimension, duplicate id, no rows) is a one-line UserError."""
    gold: dict[str, dict] = {}
    dims = list(rubric.dimensions)
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        rid = row.get("id")
        if not isinstance(rid, str) or not rid:
            raise UserError(f"{where}: gold row has no string `id`")
        where = f"{where} (id {rid})"
        scores = row.get("scores")
        if not isinstance(scores, dict):
            raise UserError(f"{where}: `scores` must be a mapping of {', '.join(dims)} to numbers")
        for d in dims:
            if d not in scores:
                raise UserError(f"{where}: no score for dimension `{d}` (each row needs {', '.join(dims)})")
            v = scores[d]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{where}: score for `{d}` must be a number, got {v!r}")
            if not rubric.min_score <= v <= rubric.max_score:
                raise UserError(f"{where}: score for `{d}` is {v}, outside the rubric's scale "
                                f"{rubric.min_score}..{rubric.max_score}")
        unknown = sorted(set(scores) - set(dims))
        if unknown:  # most likely a typo of a dimension's name
            raise UserError(f"{where}: unknown dimension `{unknown[0]}` (rubric {rubric.name}: {', '.join(dims)})")
        if rid in gold:
            raise UserError(f"{where}: duplicate id {rid}")
        gold[rid] = {**row, "scores": {d: float(scores[d]) for d in dims}}
    if not gold:
        raise UserError(f"{path}: no gold rows: add {{id, scores}} lines or set calibration.gold: null")
    return gold


def read_gold_rows(path: str | Path, rubric: RubricParams) -> dict[str, dict]:
    """The rows of a gold file that may not exist yet or be empty (annotate starts one), validated as load_gold."""
    path = Path(path)
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        return {}
    return load_gold(path, rubric)


def write_gold(path: str | Path, rows: dict[str, dict]) -> None:
    """The gold file, whole and atomically (a killed annotator leaves the last complete file, never half a line)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))


def gold_verdict(agr: dict, t: CalibrationThresholds) -> tuple[str, list[str]]:
    """PASS when the oracle's overall score agrees with the human one: Spearman and quadratic-weighted kappa at
    least their lines, MAE at most its line (each on the point value; a value on the line passes). A statistic
    that cannot be computed (no shared row, constant scores) fails: agreement was not shown."""
    o = agr["overall"]
    checks = [("Spearman", o["spearman"]["value"], lambda v: v >= t.gold_min_spearman, f">= {t.gold_min_spearman}"),
              ("QWK", o["qwk"]["value"], lambda v: v >= t.gold_min_qwk, f">= {t.gold_min_qwk}"),
              ("MAE", o["mae"]["value"], lambda v: v <= t.gold_max_mae, f"<= {t.gold_max_mae}")]
    failed, met = [], []
    for name, value, good, line in checks:
        if value is None:
            failed.append(f"overall {name} cannot be computed on {agr['n']} gold rows; the gate needs {line}")
        elif good(value):
            met.append(f"overall {name} {value:.2f} {line}")
        else:
            failed.append(f"overall {name} {value:.2f}, the gate needs {line}")
    return ("FAIL", failed) if failed else ("PASS", met)
