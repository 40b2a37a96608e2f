"""Deterministic train/val/test split, stratified by source and oracle tier, fact probes held out, leakage gated."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from slmforge.errors import UserError
from slmforge.params import SplitParams
from slmforge.row_identity import origin_of, question_key, stable_hash, user_text

SPLITS = ("train", "val", "test")
MAX_MOVED_IDS = 20  # ids listed in the metrics; the counts are complete
LABEL_KEYS = ("tier", "overall", "dropped")

Embed = Callable[[list[str]], np.ndarray]


def score_bin(overall: float, edges: list[float]) -> str:
    """The fallback stratum of a row in a small tier: the first upper edge its overall score is at or under."""
    i = bisect.bisect_left(edges, overall)
    return f"bin_le_{float(edges[i])}" if i < len(edges) else f"bin_gt_{float(edges[-1])}" if edges else "bin_all"


def fingerprint(rows: list[dict]) -> str:
    """sha256 over the test rows' ids and messages: evaluate and reports can tell the test set changed."""
    h = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["id"]):
        messages = json.dumps(row["messages"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        h.update(f"{row['id']}\x00{messages}\n".encode())
    return h.hexdigest()


def stratified_split(rows: list[dict], labels: dict[str, dict], params: SplitParams,
                     embed: Embed | None = None) -> tuple[dict[str, list[dict]], dict]:
    """Split labelled chat rows into train/val/test, plus `probes` (held-out phrasings of each fact).

    - A stratum is (origin, tier), or (origin, score bin) for a tier with under `min_tier_rows` rows in that
      origin; inside it, groups of rows sharing a normalised question are ranked by sha256(salt, smallest id)
      and cut at the cumulative fractions, so every stratum gets its share and a re-run gives the same split.
    - `embed(texts)` -> unit vectors drives the leakage gate (see `leakage_gate`); None gates exact questions only.
    """
    if set(params.fractions) != set(SPLITS) or abs(sum(params.fractions.values()) - 1.0) > 1e-6:
        raise UserError(f"split.fractions must have keys {SPLITS} summing to 1, got {params.fractions}")
    seen: set[str] = set()
    kept: list[dict] = []
    duplicate_ids = 0
    dropped_by_tier: Counter = Counter()
    for row in rows:
        if row["id"] in seen:  # the first copy wins; a second copy would be the same example twice
            duplicate_ids += 1
            continue
        seen.add(row["id"])
        label = labels.get(row["id"])
        if label is None or any(k not in label for k in LABEL_KEYS):
            what = "no label" if label is None else f"a label without {'/'.join(LABEL_KEYS)}"
            raise UserError(f"chat row {row['id']!r} has {what}: the labels are stale; re-run the label stage "
                            "(`dvc repro label`)")
        if label["dropped"]:
            dropped_by_tier[label["tier"]] += 1
        else:
            kept.append(row)

    out: dict[str, list[dict]] = {name: [] for name in (*SPLITS, "probes")}
    facts: dict[str, list[dict]] = defaultdict(list)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in kept:
        if origin_of(row) == "facts":
            facts[row["meta"]["fact_id"]].append(row)
        else:
            groups[question_key(user_text(row))].append(row)

    # Facts: probes are paraphrases of trained facts on purpose (they test recall of a fact learnt from its
    # other phrasings), so they stay outside the leakage gate; every other phrasing goes to train, since a
    # fact is only learnable from training.
    for fact_id, phrasings in sorted(facts.items()):
        ranked = sorted(phrasings, key=lambda r: stable_hash(params.salt, r["id"]))
        k = min(params.probe_phrasings_per_fact, len(ranked) - 1)
        out["probes"].extend(ranked[:k])
        out["train"].extend(ranked[k:])

    tier_rows = Counter((origin_of(r), labels[r["id"]]["tier"]) for rows_ in groups.values() for r in rows_)

    def stratum(row: dict) -> tuple[str, str, bool]:
        origin, label = origin_of(row), labels[row["id"]]
        if tier_rows[origin, label["tier"]] >= params.min_tier_rows:
            return origin, label["tier"], False
        # A tier this small in this origin would be cut into shares of zero or one: bin it by score instead.
        return origin, score_bin(float(label["overall"]), params.score_bins), True

    by_stratum: dict[tuple[str, str, bool], list[list[dict]]] = defaultdict(list)
    for group in groups.values():
        group.sort(key=lambda r: r["id"])
        # A group goes where its smallest id's stratum goes: rows sharing a question stay on one side even
        # when their tiers (or origins) differ.
        by_stratum[stratum(group[0])].append(group)
    stratum_of: dict[str, str] = {}
    strata: dict[str, dict] = {}
    for (origin, key, binned), stratum_groups in sorted(by_stratum.items()):
        name = f"{origin}/{key}"
        ranked = sorted(stratum_groups, key=lambda g: stable_hash(params.salt, g[0]["id"]))
        n = len(ranked)
        cut_train = round(n * params.fractions["train"])
        cut_val = cut_train + round(n * params.fractions["val"])
        for i, group in enumerate(ranked):
            out["train" if i < cut_train else "val" if i < cut_val else "test"].extend(group)
            stratum_of.update((r["id"], name) for r in group)
        strata[name] = {"binned": binned, "groups": n, "rows": sum(len(g) for g in ranked)}

    for name in out:
        out[name].sort(key=lambda r: r["id"])
    leakage = leakage_gate(out, params.leakage_threshold, embed)
    check_disjoint(out)

    for name in SPLITS:
        for stratum_name, count in Counter(stratum_of[r["id"]] for r in out[name] if r["id"] in stratum_of).items():
            strata[stratum_name][name] = count
    metrics = {
        "rows_in": len(rows),
        "duplicate_ids": duplicate_ids,
        "dropped_by_label": sum(dropped_by_tier.values()),
        "dropped_by_tier": dict(sorted(dropped_by_tier.items())),
        "counts": {name: len(out[name]) for name in out},
        "by_origin": {name: dict(sorted(Counter(origin_of(r) for r in out[name]).items())) for name in out},
        "by_tier": {name: dict(sorted(Counter(labels[r["id"]]["tier"] for r in out[name]).items()))
                    for name in out},
        "strata": {name: {"train": 0, "val": 0, "test": 0, **s} for name, s in strata.items()},
        "facts": len(facts),
        "leakage": leakage,
        "test_fingerprint": fingerprint(out["test"]),
    }
    assert len(rows) == sum(metrics["counts"].values()) + duplicate_ids + metrics["dropped_by_label"], \
        "split lost or duplicated rows"
    return out, metrics


def _max_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of `a`, its largest dot product with a row of `b`, in blocks of about 16M floats."""
    if not len(b):
        return np.full(len(a), -1.0, dtype=np.float32)
    block = max(1, (1 << 24) // len(b))
    return np.concatenate([(a[i:i + block] @ b.T).max(axis=1) for i in range(0, len(a), block)]
                          or [np.empty(0, dtype=np.float32)])


def leakage_gate(out: dict[str, list[dict]], threshold: float, embed: Embed | None) -> dict:
    """Move every val/test row whose question is within `threshold` cosine of a train question into train,
    with its exact-duplicate group, in place; return the leakage metrics. A moved row is a train row from
    then on, so the gate repeats until no held-out row is near train. Without `embed`, only exact
    (normalised) questions count, which the grouping already keeps apart except for trained fact phrasings."""
    held = out["val"] + out["test"]
    held_norm = [question_key(user_text(r)) for r in held]
    moving = np.zeros(len(held), dtype=bool)
    best = None
    if embed is None:
        train_q = {question_key(user_text(r)) for r in out["train"]}
        moving[:] = [q in train_q for q in held_norm]
    else:
        # Each distinct text embedded once, in sorted order, so the input's order cannot change a vector.
        texts = sorted({user_text(r) for r in out["train"] + held})
        vectors = np.asarray(embed(texts), dtype=np.float32)
        index = {t: i for i, t in enumerate(texts)}
        held_e = vectors[[index[user_text(r)] for r in held]]
        best = _max_cosine(held_e, vectors[[index[user_text(r)] for r in out["train"]]])
        new = best >= threshold
        while new.any():
            near_q = {held_norm[i] for i in np.flatnonzero(new)}
            new |= np.array([q in near_q for q in held_norm], dtype=bool) & ~moving
            moving |= new
            rest = np.flatnonzero(~moving)
            best[rest] = np.maximum(best[rest], _max_cosine(held_e[rest], held_e[new]))
            new = np.zeros(len(held), dtype=bool)
            new[rest] = best[rest] >= threshold

    moved = {held[i]["id"] for i in np.flatnonzero(moving)}
    n_val = len(out["val"])
    metrics = {"threshold": threshold, "gate": "exact_only" if embed is None else "semantic",
               "moved_val": int(moving[:n_val].sum()), "moved_test": int(moving[n_val:].sum()),
               "moved_ids": sorted(moved)[:MAX_MOVED_IDS], "max_cosine_test_train": None,
               "max_cosine_val_train": None}
    if best is not None:
        for name, part in (("val", slice(0, n_val)), ("test", slice(n_val, len(held)))):
            left = best[part][~moving[part]]
            metrics[f"max_cosine_{name}_train"] = float(left.max()) if len(left) else None
    out["train"] = sorted(out["train"] + [r for r in held if r["id"] in moved], key=lambda r: r["id"])
    for name in ("val", "test"):
        out[name] = [r for r in out[name] if r["id"] not in moved]
    return metrics


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """No id and no normalised question may appear in two splits (probes count as a split)."""
    seen_id: dict[str, str] = {}
    seen_q: dict[str, str] = {}
    for name, rows in splits.items():
        for row in rows:
            if seen_id.setdefault(row["id"], name) != name:
                raise UserError(f"split leakage: id {row['id']} is in {seen_id[row['id']]} and {name}")
            q = question_key(user_text(row))
            if seen_q.setdefault(q, name) != name:
                raise UserError(f"split leakage: the question of {row['id']} is in {seen_q[q]} and {name}")
