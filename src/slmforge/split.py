"""Deterministic, stratified train/val/test split by salted hash, with fact phrasings held out as probes."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

from slmforge.io import UserError
from slmforge.params import SplitParams

SPLITS = ("train", "val", "test")


def stable_hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def user_text(row: dict) -> str:
    return " ".join(m["content"] for m in row["messages"] if m["role"] == "user")


def stratified_split(rows: list[dict], params: SplitParams) -> tuple[dict[str, list[dict]], dict]:
    """Split rows into train/val/test (plus `probes`: held-out phrasings of each fact).

    - A stratum is the row's origin (stackexchange, tweets, facts, ...); inside it rows are ranked by
      sha256(salt, key) and cut at the cumulative fractions, so every stratum gets its share and a re-run
      gives the same split.
    - Rows whose normalised question is identical share one key, so an exact duplicate can never sit on
      both sides of the split.
    - Facts: for each fact, `probe_phrasings_per_fact` phrasings (chosen by hash) become probes and are never
      trained on; the other phrasings all go to train, since a fact is only learnable from training.
    """
    if set(params.fractions) != set(SPLITS) or abs(sum(params.fractions.values()) - 1.0) > 1e-6:
        raise UserError(f"split.fractions must have keys {SPLITS} summing to 1, got {params.fractions}")
    out: dict[str, list[dict]] = {name: [] for name in (*SPLITS, "probes")}

    facts: dict[str, list[dict]] = defaultdict(list)
    strata: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        origin = row.get("meta", {}).get("origin", row["source"])
        if origin == "facts":
            facts[row["meta"]["fact_id"]].append(row)
        else:
            strata[origin][_norm(user_text(row))].append(row)

    for fact_id, phrasings in sorted(facts.items()):
        ranked = sorted(phrasings, key=lambda r: stable_hash(params.salt, r["id"]))
        k = min(params.probe_phrasings_per_fact, len(ranked) - 1)
        out["probes"].extend(ranked[:k])
        out["train"].extend(ranked[k:])

    for origin, groups in sorted(strata.items()):
        keyed = sorted(groups.values(), key=lambda g: stable_hash(params.salt, min(r["id"] for r in g)))
        n = len(keyed)
        cut_train = round(n * params.fractions["train"])
        cut_val = cut_train + round(n * params.fractions["val"])
        for i, group in enumerate(keyed):
            name = "train" if i < cut_train else "val" if i < cut_val else "test"
            out[name].extend(group)

    for name in out:
        out[name].sort(key=lambda r: r["id"])
    check_disjoint(out)
    metrics = {
        "rows_in": len(rows),
        "counts": {name: len(out[name]) for name in out},
        "by_origin": {name: dict(sorted(Counter(r["meta"].get("origin", r["source"]) for r in out[name]).items()))
                      for name in out},
        "facts": len(facts),
    }
    assert sum(metrics["counts"].values()) == len(rows), "split lost or duplicated rows"
    return out, metrics


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """No id and no normalised question may appear in two splits (probes count as a split)."""
    seen_id: dict[str, str] = {}
    seen_q: dict[str, str] = {}
    for name, rows in splits.items():
        for row in rows:
            if seen_id.setdefault(row["id"], name) != name:
                raise UserError(f"split leakage: id {row['id']} is in {seen_id[row['id']]} and {name}")
            q = _norm(user_text(row))
            if seen_q.setdefault(q, name) != name:
                raise UserError(f"split leakage: the question of {row['id']} is in {seen_q[q]} and {name}")
