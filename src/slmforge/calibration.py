"""Calibrating the oracle's prompt before batch labelling: stratified sample, error rates, verdict, gold agreement.

`calibrate` draws the sample, has the oracle label it (and a subset twice), then measures it and gives the
verdict, again on a fresh sample; the rest are pure functions. Strata: on_topic (an oracle scoring it low is a false negative),
off_topic (scoring it high is a false positive) and edge (reported, never counted as an error).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import stats

from slmforge.io import UserError, iter_jsonl
from slmforge.params import CalibrationParams, CalibrationThresholds, RubricParams
from slmforge.split import stable_hash, user_text

WORST_N = 5  # records per direction quoted in the report
EXCERPT_CHARS = 200


# --- strata and sample ----------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _keyword_patterns(keywords: tuple[str, ...]) -> tuple[tuple[str, re.Pattern], ...]:
    out = []
    for kw in keywords:
        parts = kw.lower().split()
        if not parts:
            raise UserError("params.yaml: calibration.keywords has an empty keyword: remove it")
        # Lookarounds rather than \b: \b next to "/" or "-" misbehaves ("a/b" must hit "A/B test", "alpha" must
        # not hit "alphabet"). Inner spaces match any whitespace; a plural "s" still counts ("experiments").
        body = r"\s+".join(re.escape(p) for p in parts)
        out.append((kw, re.compile(rf"(?<!\w){body}s?(?!\w)", re.IGNORECASE)))
    return tuple(out)


def keyword_hits(row: dict, keywords: list[str]) -> set[str]:
    """The distinct keywords found in the row's user and assistant messages. The system prompt is left out: it is
    the same for every row of an origin and would lift them all. Each message is searched on its own so a
    two-word keyword cannot straddle the question and the answer."""
    texts = [m["content"] for m in row["messages"] if m["role"] in ("user", "assistant")]
    return {kw for kw, pat in _keyword_patterns(tuple(keywords)) if any(pat.search(t) for t in texts)}


def assign_stratum(row: dict, params: CalibrationParams) -> str:
    if params.strata_by == "keywords":
        if params.on_topic_min_hits < 1:  # with 0, "no hit" would be both off_topic and on_topic
            raise UserError(f"params.yaml: calibration.on_topic_min_hits must be at least 1, got "
                            f"{params.on_topic_min_hits}")
        hits = len(keyword_hits(row, params.keywords))
        return "on_topic" if hits >= params.on_topic_min_hits else "off_topic" if hits == 0 else "edge"
    if params.strata_by == "source":
        origin = (row.get("meta") or {}).get("origin", row.get("source"))
        # An origin not mapped is neither known on- nor off-topic, which is what "edge" means; it is never
        # counted as an error. Mapping nothing leaves on/off_topic empty, and the verdict then says REVIEW.
        return params.source_strata.get(origin, "edge")
    raise UserError(f"params.yaml: calibration.strata_by must be keywords or source, got {params.strata_by!r}")


def draw_sample(rows: Iterable[dict], params: CalibrationParams, seed: int,
                exclude: Iterable[str] = ()) -> list[dict]:
    """For each stratum of params.strata, its n rows ranked first by sha256(seed, id): the same rows whatever the
    input order, and a different seed gives a different sample. Copies of the rows with "stratum" set, in
    params.strata order then rank. A stratum with fewer rows gives what it has; measure() reports the shortfall.
    `exclude`: ids never drawn (the stage can keep the validation sample apart from the main one)."""
    skip = set(exclude)
    salt = f"calibration:{seed}"
    by_stratum: dict[str, list[tuple[str, str, dict]]] = {name: [] for name in params.strata}
    for row in rows:
        if row["id"] in skip:
            continue
        stratum = assign_stratum(row, params)
        if stratum in by_stratum:
            by_stratum[stratum].append((stable_hash(salt, row["id"]), row["id"], row))
    sample = []
    for name, n in params.strata.items():
        for _, _, row in sorted(by_stratum[name], key=lambda t: t[:2])[:n]:
            sample.append({**row, "stratum": name})
    return sample


# --- measures -------------------------------------------------------------------------------------

def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _excerpt(row: dict) -> str:
    text = " ".join(user_text(row).split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def measure(sample: list[dict], labels: dict[str, dict], repeats: dict[str, dict], failures: Iterable[str],
            rubric: RubricParams, params: CalibrationParams, worst_n: int = WORST_N) -> dict:
    """How the oracle's labels of a calibration sample behave; see the module doc for the strata.

    A sample row counts as a parse failure when its id is in `failures` (a set, or a dict id -> reason) or it has
    no label at all: either way the oracle gave nothing usable. Rates are over the labelled rows of a stratum and
    are None when that stratum has none. `repeats` are second labels of some rows (self-consistency)."""
    t = params.thresholds
    failed = set(failures)
    dims = list(rubric.dimensions)
    labelled = [r for r in sample if r["id"] in labels and r["id"] not in failed]
    overall = {r["id"]: float(labels[r["id"]]["overall"]) for r in labelled}
    strata = list(params.strata) + sorted({r["stratum"] for r in sample} - set(params.strata))
    n = {s: {"asked": params.strata.get(s, 0), "got": sum(r["stratum"] == s for r in sample),
             "labelled": sum(r["stratum"] == s for r in labelled)} for s in strata}
    off = [overall[r["id"]] for r in labelled if r["stratum"] == "off_topic"]
    on = [overall[r["id"]] for r in labelled if r["stratum"] == "on_topic"]
    errors = {"false_positive": sum(s >= t.off_topic_fp_score for s in off),
              "severe_false_positive": sum(s >= t.severe_fp_score for s in off),
              "false_negative": sum(s < t.on_topic_fn_score for s in on)}

    # Population variance of one record's dimension scores: near 0 means the oracle gives every dimension the
    # same number, i.e. the rubric's dimensions are not being told apart.
    variances = [float(np.var([float(labels[r["id"]]["scores"][d]) for d in dims if d in labels[r["id"]]["scores"]]))
                 for r in labelled]
    # Integer bins are [k, k+1) like the tiers' lower edges; the top score joins the top bin.
    bins = sorted({min(max(math.floor(s), rubric.min_score), rubric.max_score) for s in overall.values()})

    pairs = [(labels[i], repeats[i]) for i in sorted(repeats) if i in overall]
    mad_dim = {d: _mean([abs(float(a["scores"][d]) - float(b["scores"][d])) for a, b in pairs
                         if d in a["scores"] and d in b["scores"]]) for d in dims}

    worst = []
    for stratum, highest_first, is_error in (("off_topic", True, lambda s: s >= t.off_topic_fp_score),
                                             ("on_topic", False, lambda s: s < t.on_topic_fn_score)):
        rows = sorted((r for r in labelled if r["stratum"] == stratum),
                      key=lambda r: (-overall[r["id"]] if highest_first else overall[r["id"]], r["id"]))
        for r in rows[:worst_n]:
            lab = labels[r["id"]]
            worst.append({"id": r["id"], "stratum": stratum, "overall": overall[r["id"]],
                          "scores": dict(lab["scores"]), "tier": lab.get("tier"),
                          "error": bool(is_error(overall[r["id"]])), "excerpt": _excerpt(r)})

    return {
        "n": n,
        "n_sample": len(sample),
        "n_labelled": len(labelled),
        "errors": errors,
        "false_positive_rate": errors["false_positive"] / len(off) if off else None,
        "severe_false_positive_rate": errors["severe_false_positive"] / len(off) if off else None,
        "false_negative_rate": errors["false_negative"] / len(on) if on else None,
        "dimension_variance": _mean(variances),
        "score_bins_used": len(bins),
        "score_bins": bins,
        "parse_failures": len(sample) - len(labelled),
        "parse_failure_rate": (len(sample) - len(labelled)) / len(sample) if sample else None,
        "self_consistency_n": len(pairs),
        "self_consistency_mad": _mean([abs(float(a["overall"]) - float(b["overall"])) for a, b in pairs]),
        "self_consistency_mad_by_dimension": mad_dim,
        "mean_overall_by_stratum": {s: _mean([overall[r["id"]] for r in labelled if r["stratum"] == s])
                                    for s in strata},
        "worst": worst,
    }


def verdict(m: dict, t: CalibrationThresholds) -> tuple[str, list[str]]:
    """FAIL when a rate is strictly above its fail line; PASS when every measure is strictly inside its pass line;
    REVIEW otherwise. A value exactly on a line is not past it: fp == fail_fp_min is not FAIL, fp == pass_fp_max
    is not PASS. A measure that could not be computed (empty stratum, nothing labelled) blocks PASS."""
    fp, fn = m["false_positive_rate"], m["false_negative_rate"]
    fails = []
    if fp is not None and fp > t.fail_fp_min:
        fails.append(f"false positive rate {fp:.3f} > {t.fail_fp_min} (off-topic rows scored >= "
                     f"{t.off_topic_fp_score})")
    if fn is not None and fn > t.fail_fn_min:
        fails.append(f"false negative rate {fn:.3f} > {t.fail_fn_min} (on-topic rows scored < "
                     f"{t.on_topic_fn_score})")
    if fails:
        return "FAIL", fails
    checks = [  # (name, value, is it inside the pass line?, the line in words, why it can be missing)
        ("false positive rate", fp, lambda v: v < t.pass_fp_max, f"< {t.pass_fp_max}", "no off-topic row labelled"),
        ("false negative rate", fn, lambda v: v < t.pass_fn_max, f"< {t.pass_fn_max}", "no on-topic row labelled"),
        ("dimension variance", m["dimension_variance"], lambda v: v > t.pass_variance_min,
         f"> {t.pass_variance_min}", "no row labelled"),
        ("parse failure rate", m["parse_failure_rate"], lambda v: v < t.pass_parse_fail_max,
         f"< {t.pass_parse_fail_max}", "empty sample"),
    ]
    met, unmet = [], []
    for name, value, good, line, why_none in checks:
        if value is None:
            unmet.append(f"{name} cannot be measured ({why_none}); PASS needs {line}")
        elif good(value):
            met.append(f"{name} {value:.3f} {line}")
        else:
            unmet.append(f"{name} {value:.3f}, PASS needs {line}")
    return ("REVIEW", unmet) if unmet else ("PASS", met)


def overfit(main: dict, validation: dict, t: CalibrationThresholds) -> bool:
    """True when the validation sample's fp or fn rate is more than overfit_points percentage points above the main
    sample's: a prompt tuned until the main sample passes, which does not carry over. A rate missing on either
    side is not compared (the verdict already reports it)."""
    for key in ("false_positive_rate", "false_negative_rate"):
        a, b = main[key], validation[key]
        # Rounded so that "exactly overfit_points worse" is not past the line by float noise (0.4 - 0.3 = 0.1000...03).
        if a is not None and b is not None and round((b - a) * 100, 9) > t.overfit_points:
            return True
    return False


# --- agreement with human gold scores ---------------------------------------------------------------

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


# --- the whole calibration ------------------------------------------------------------------------

def effective_gate(gate: str, backend: str) -> str:
    if gate == "auto":  # a paid oracle must earn its batch; the embedded one is reported as it is
        return "enforce" if backend == "claude" else "warn"
    if gate not in ("enforce", "warn"):
        raise UserError(f"params.yaml: calibration.gate must be auto, enforce or warn, got {gate!r}")
    return gate


def _label_and_measure(sample, oracle, rubric, params, desc) -> tuple[dict, dict, dict]:
    from slmforge.labeling import label_rows

    labels, failed = label_rows(sample, oracle, rubric, [], desc=desc)
    subset = sorted(sample, key=lambda r: stable_hash(f"repeat:{params.seed}", r["id"]))[:params.self_consistency_n]
    repeats, _ = label_rows(subset, oracle, rubric, [], desc=f"{desc} (again)", repeat=1) if subset else ({}, [])
    return measure(sample, labels, repeats, failed, rubric, params), labels, repeats


def calibrate(rows: list[dict], oracle, rubric: RubricParams, params: CalibrationParams) -> tuple[dict, list[dict]]:
    """(result for metrics/calibration.json and the report, the sample rows with their labels)."""
    sample = draw_sample(rows, params, params.seed)
    main, labels, _ = _label_and_measure(sample, oracle, rubric, params, "calibrate")
    main_verdict, reasons = verdict(main, params.thresholds)
    # A fresh sample drawn with another seed (overlap allowed: a small stratum may have no other rows): a prompt
    # tuned to the first sample shows here as a worse score.
    fresh = draw_sample(rows, params, params.validation_seed)
    val, _, _ = _label_and_measure(fresh, oracle, rubric, params, "calibrate (validation)")
    val_verdict, val_reasons = verdict(val, params.thresholds)
    agreement_result = None
    if params.gold:
        gold = load_gold(params.gold, rubric)
        agreement_result = agreement(labels, gold, rubric, params.bootstrap, params.seed)
    result = {
        "verdict": main_verdict, "reasons": reasons,
        "gate": effective_gate(params.gate, oracle.backend.name),
        "backend": oracle.backend.name, "model": oracle.backend.model_id(),
        "sample": main,
        "validation": {**val, "verdict": val_verdict, "reasons": val_reasons,
                       "overfit": overfit(main, val, params.thresholds),
                       "overlap_with_sample": len({r["id"] for r in sample} & {r["id"] for r in fresh})},
        "agreement": agreement_result,
        **oracle.metrics(),
    }
    sample_rows = [{"id": r["id"], "stratum": r["stratum"], "label": labels.get(r["id"])} for r in sample]
    return result, sample_rows
