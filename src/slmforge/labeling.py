"""Rubric labels from the oracle's dimension scores: a weighted overall score with gatekeeper caps, and a tier."""

from __future__ import annotations

from collections import Counter

from slmforge.errors import UserError
from slmforge.oracle.client import Oracle
from slmforge.oracle.prompts import prompt_sha, rubric_system, score_request
from slmforge.params import RubricParams


def check_rubric(rubric: RubricParams) -> None:
    total = sum(d.weight for d in rubric.dimensions.values())
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"params.yaml: rubric.dimensions weights sum to {total:g}, not 1")
    for g in rubric.gatekeepers:
        if g.dimension not in rubric.dimensions:
            raise UserError(f"params.yaml: rubric.gatekeepers names `{g.dimension}`, which is not a dimension")
    if min(rubric.tiers.values()) > rubric.min_score:
        raise UserError("params.yaml: rubric.tiers needs a tier starting at min_score so every score has a tier")


def overall_score(scores: dict[str, float], rubric: RubricParams) -> float:
    overall = sum(rubric.dimensions[d].weight * scores[d] for d in rubric.dimensions)
    for g in rubric.gatekeepers:  # one failed dimension caps the rest: a polished off-topic row is still off-topic
        if scores[g.dimension] < g.below:
            overall = min(overall, g.cap)
    return round(overall, 3)


def tier_of(overall: float, rubric: RubricParams) -> str:
    return max(((lo, name) for name, lo in rubric.tiers.items() if overall >= lo), default=(0, "reject"))[1]


def make_label(row_id: str, scores: dict[str, float], rubric: RubricParams, drop_tiers: list[str],
               oracle_info: dict) -> dict:
    overall = overall_score(scores, rubric)
    tier = tier_of(overall, rubric)
    return {"id": row_id, "scores": {d: scores[d] for d in rubric.dimensions}, "overall": overall, "tier": tier,
            "dropped": tier in drop_tiers, "oracle": oracle_info}


def label_rows(rows: list[dict], oracle: Oracle, rubric: RubricParams, drop_tiers: list[str], desc: str = "label",
               repeat: int = 0, batch: bool = False) -> tuple[dict[str, dict], list[str]]:
    """({row id: label}, ids whose answer failed). Every request goes through the oracle's cache."""
    check_rubric(rubric)
    unknown = sorted(set(drop_tiers) - set(rubric.tiers))
    if unknown:
        raise UserError(f"params.yaml: label.drop_tiers names `{unknown[0]}`, not a tier of rubric.tiers")
    system = rubric_system(rubric)
    info = {"backend": oracle.backend.name, "model": oracle.backend.model_id(), "prompt_sha": prompt_sha(system),
            "rubric": rubric.name}
    answers = oracle.ask([score_request(r, rubric, system, repeat) for r in rows], desc, batch=batch)
    labels, failed = {}, []
    for row, ans in zip(rows, answers):
        if ans is None:
            failed.append(row["id"])
        else:
            labels[row["id"]] = make_label(row["id"], ans, rubric, drop_tiers, info)
    return labels, failed


def unlabelled(row_id: str) -> dict:
    """The label of a row the oracle could not label: kept, marked and dropped from training, so nothing is lost
    silently."""
    return {"id": row_id, "scores": {}, "overall": None, "tier": "unlabelled", "dropped": True, "oracle": None}


def labels_file(rows: list[dict], labels: dict[str, dict]) -> list[dict]:
    """One label per chat row, in the rows' order (data/labels/labels.jsonl): its oracle label or `unlabelled`."""
    return [labels.get(r["id"]) or unlabelled(r["id"]) for r in rows]


def removed_by_label(labels: dict[str, dict], failed: list[str]) -> dict[str, int]:
    """What labelling takes out of training, by reason: each dropped tier, and the rows the oracle failed on."""
    removed = Counter(f"tier {lab['tier']} (label.drop_tiers)" for lab in labels.values() if lab["dropped"])
    return {**removed, "failed": len(failed)}


def label_metrics(labels: dict[str, dict], failed: list[str], rows_in: int) -> dict:
    tiers = Counter(lab["tier"] for lab in labels.values())
    overall = [lab["overall"] for lab in labels.values()]
    return {"rows_in": rows_in, "labelled": len(labels), "failed": len(failed),
            "accounting_ok": len(labels) + len(failed) == rows_in,
            "dropped": sum(lab["dropped"] for lab in labels.values()), "tiers": dict(sorted(tiers.items())),
            "mean_overall": round(sum(overall) / len(overall), 3) if overall else None}
