"""Calibrating the oracle's prompt before batch labelling: stratified sample, error rates, verdict, gold agreement.

`calibrate` draws the sample, has the oracle label it (and a subset twice), then measures it and gives the
verdict, again on a fresh sample; the rest are pure functions. Strata: on_topic (an oracle scoring it low is a false negative),
off_topic (scoring it high is a false positive) and edge (reported, never counted as an error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from slmforge.gold import agreement, gold_verdict, load_gold
from slmforge.errors import UserError
from slmforge.params import CalibrationParams, CalibrationThresholds, RubricParams
from slmforge.row_identity import origin_of, stable_hash, user_text

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
        origin = origin_of(row)
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


# --- the whole calibration ------------------------------------------------------------------------

def effective_gate(gate: str, backend: str) -> str:
    if gate == "auto":  # a paid oracle must earn its batch; the embedded one is reported as it is
        return "enforce" if backend == "claude" else "warn"
    if gate not in ("enforce", "warn"):
        raise UserError(f"params.yaml: calibration.gate must be auto, enforce or warn, got {gate!r}")
    return gate


def gate_failures(result: dict) -> list[str]:
    """The parts of the calibration gate that do not pass, one line each: the main sample's verdict, the
    validation sample's (a PASS that does not carry over to a fresh sample, overfit, fails it too) and, when a
    gold file was given, the agreement with it. Empty: labelling may go on."""
    failures = []
    if result["verdict"] != "PASS":
        failures.append(f"calibration {result['verdict']} ({'; '.join(result['reasons'][:2])})")
    val = result.get("validation")
    if val is None:
        failures.append("validation missing (metrics/calibration.json predates it: run `dvc repro calibrate`)")
    elif val["verdict"] != "PASS" or val.get("overfit"):
        why = ["; ".join(val["reasons"][:2])] if val["verdict"] != "PASS" else []
        if val.get("overfit"):
            why.append("overfit: more than calibration.thresholds.overfit_points worse than the main sample")
        failures.append(f"validation {val['verdict']} ({'; '.join(why)})")
    gold = result.get("gold")
    if gold and gold["verdict"] != "PASS":
        failures.append(f"gold {gold['verdict']} against {gold['file']} ({'; '.join(gold['reasons'])})")
    return failures


def check_gate(result: dict, gate: str) -> list[str]:
    """Under `enforce`, stop labelling in one line naming every failing part; under `warn`, return them."""
    failures = gate_failures(result)
    if failures and gate == "enforce":
        raise UserError("label: the calibration gate is closed (calibration.gate=enforce): " + "; ".join(failures)
                        + ": fix the rubric or the oracle (see reports/calibration.md) or set calibration.gate=warn")
    return failures


def open_gate(result: dict, gate: str, backend: str) -> tuple[str, list[str]]:
    """(the gate in force for calibration.gate on this backend, the failing parts it lets through): under
    `enforce` a failing part stops labelling here, in one line, before any model loads or any call is made."""
    gate = effective_gate(gate, backend)
    return gate, check_gate(result, gate)


def _subset(sample: list[dict], params: CalibrationParams) -> list[dict]:
    return sorted(sample, key=lambda r: stable_hash(f"repeat:{params.seed}", r["id"]))[:params.self_consistency_n]


def calibration_requests(rows: list[dict], rubric: RubricParams, params: CalibrationParams) -> list:
    """Every request calibrate makes (both samples, and their repeats): what the budget is checked on."""
    from slmforge.oracle.prompts import rubric_system, score_request

    system = rubric_system(rubric)
    out = []
    for seed in (params.seed, params.validation_seed):
        sample = draw_sample(rows, params, seed)
        out += [score_request(r, rubric, system) for r in sample]
        out += [score_request(r, rubric, system, repeat=1) for r in _subset(sample, params)]
    return out


def _label_and_measure(sample, oracle, rubric, params, desc) -> tuple[dict, dict, dict]:
    from slmforge.labeling import label_rows

    labels, failed = label_rows(sample, oracle, rubric, [], desc=desc)
    subset = _subset(sample, params)
    repeats, _ = label_rows(subset, oracle, rubric, [], desc=f"{desc} (again)", repeat=1) if subset else ({}, [])
    return measure(sample, labels, repeats, failed, rubric, params), labels, repeats


def calibrate(rows: list[dict], oracle, rubric: RubricParams, params: CalibrationParams) -> tuple[dict, list[dict]]:
    """(result for metrics/calibration.json and the report, the rows of both samples with their labels)."""
    # One budget check on all four rounds before the first call (round by round, each could pass alone).
    oracle.plan(calibration_requests(rows, rubric, params))
    sample = draw_sample(rows, params, params.seed)
    main, labels, _ = _label_and_measure(sample, oracle, rubric, params, "calibrate")
    main_verdict, reasons = verdict(main, params.thresholds)
    # A fresh sample drawn with another seed (overlap allowed: a small stratum may have no other rows): a prompt
    # tuned to the first sample shows here as a worse score.
    fresh = draw_sample(rows, params, params.validation_seed)
    val, val_labels, _ = _label_and_measure(fresh, oracle, rubric, params, "calibrate (validation)")
    val_verdict, val_reasons = verdict(val, params.thresholds)
    agreement_result = gold_result = None
    if params.gold:
        gold = load_gold(params.gold, rubric)
        # Both samples' labels: the validation rows are as much evidence of agreement as the main ones.
        agreement_result = agreement({**val_labels, **labels}, gold, rubric, params.bootstrap, params.seed)
        gold_verdict_, gold_reasons = gold_verdict(agreement_result, params.thresholds)
        gold_result = {"verdict": gold_verdict_, "reasons": gold_reasons, "file": str(params.gold),
                       "n": agreement_result["n"]}
    result = {
        "verdict": main_verdict, "reasons": reasons,
        "gate": effective_gate(params.gate, oracle.backend.name),
        "backend": oracle.backend.name, "model": oracle.backend.model_id(),
        "sample": main,
        "validation": {**val, "verdict": val_verdict, "reasons": val_reasons,
                       "overfit": overfit(main, val, params.thresholds),
                       "overlap_with_sample": len({r["id"] for r in sample} & {r["id"] for r in fresh})},
        "agreement": agreement_result,
        "gold": gold_result,
        **oracle.metrics(),
    }
    result["gate_failures"] = gate_failures(result)
    sample_rows = ([{"id": r["id"], "sample": "main", "stratum": r["stratum"], "label": labels.get(r["id"])}
                    for r in sample]
                   + [{"id": r["id"], "sample": "validation", "stratum": r["stratum"], "label": val_labels.get(r["id"])}
                      for r in fresh])
    return result, sample_rows
