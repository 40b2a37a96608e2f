"""The clean step: raw records in, kept and rejected records out, every rejection with all its reasons.

Order: validate (required fields, size, duplicate id), normalise, rules, language, toxicity on every valid
record, so a rejected record lists everything wrong with it; then PII scrubbing and de-duplication (exact,
then semantic) among the records that passed, so a spam copy never displaces the good original.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np

from slmforge.curation import dedup, language, pii, rules, toxicity
from slmforge.curation.normalise import INVISIBLE, normalise_record
from slmforge.params import CleanParams
from slmforge.row_identity import origin_of


# The setting behind each rejection reason: what a user loosens when a filter removes too much.
SETTING_OF = {"prompt_too_short": "clean.rules.min_prompt_chars", "too_short": "clean.rules.min_chars",
              "too_long": "clean.rules.max_chars", "url": "clean.rules.max_urls", "media": "clean.rules.drop_media",
              "hashtags": "clean.rules.max_hashtags", "shouting": "clean.rules.max_upper_ratio",
              "spam": "clean.rules.spam_patterns", "language": "clean.language.keep and min_prob",
              "toxic": "clean.toxicity.threshold", "duplicate_exact": "clean.dedup.exact",
              "duplicate_semantic": "clean.dedup.threshold", "too_large": "clean.max_record_bytes",
              "unknown_kind": "clean.required", "malformed": "the raw files (see rejected reasons)"}


def setting_of(reason: str) -> str:
    return "clean.required" if reason.startswith("missing_") else SETTING_OF.get(reason, "conf/clean/default.yaml")


def validate(records: list[dict], params: CleanParams) -> list[list[str]]:
    """Reasons a record cannot be curated at all, per record (empty when it can)."""
    seen: set[str] = set()
    out = []
    for rec in records:
        reasons = []
        kind = rec.get("kind")
        if kind not in params.required:
            reasons.append("unknown_kind")
        else:
            reasons += [f"missing_{f}" for f in params.required[kind]
                        if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if len(json.dumps(rec, ensure_ascii=False).encode()) > params.max_record_bytes:
            reasons.append("too_large")
        rid = rec.get("id")
        if isinstance(rid, str) and rid in seen:
            reasons.append("duplicate_id")  # the first record with an id wins; later ones are not lost
        seen.add(rid) if isinstance(rid, str) else None
        out.append(reasons)
    return out


def clean(records: list[dict], params: CleanParams, *, malformed: list[dict] = (), scorer=None,
          encoder=None) -> tuple[list[dict], list[dict], dict]:
    """(kept, rejected, metrics). `malformed` are the quarantine entries of raw lines that were not records:
    rejected as `malformed` with their file and line, so they are accounted for too. `scorer` (toxicity)
    and `encoder` (sentence-transformers) are loaded from params when not given; tests and benchmarks pass
    them to load once."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    reasons = validate(records, params)
    valid = [i for i, r in enumerate(reasons) if not r]
    invisible: Counter = Counter()
    norm, hidden = {}, {}
    for i in valid:
        found: Counter = Counter()
        norm[i] = normalise_record(records[i], params.normalise, found)
        if found:
            hidden[i] = sum(found.values())
            invisible += found
            invisible["records"] += 1
    t = lap("validate_normalise", t0)

    rule_sets, patterns = rules.rules_for(params.rules), rules.compile_patterns(params.rules)
    for i in valid:
        rule_set = rule_sets.get(origin_of(records[i]), params.rules)
        reasons[i] += rules.rule_reasons(norm[i], records[i], rule_set, patterns)
    t = lap("rules", t)

    texts = [f"{norm[i].get('prompt') or ''}\n{rules.body(norm[i])}".strip() for i in valid]
    probs = language.language_probs(texts, params.language)
    signals: dict[int, dict] = {}
    for i, p in zip(valid, probs):
        kept_p = language.kept_prob(p, params.language)
        signals[i] = {"lang": max(p, key=p.get) if p else None, "lang_prob": round(kept_p, 4)}
        if i in hidden:
            signals[i]["invisible_removed"] = hidden[i]
        if kept_p < params.language.min_prob:
            reasons[i].append("language")
    t = lap("language", t)

    scorer = scorer or toxicity.load_scorer(params.toxicity)
    scores = scorer(texts) if texts else np.zeros(0)
    for i, s in zip(valid, scores):
        signals[i]["toxicity"] = round(float(s), 4)
        if s >= params.toxicity.threshold:
            reasons[i].append("toxic")
    t = lap("toxicity", t)

    passed = [i for i in valid if not reasons[i]]
    pii_counts: Counter = Counter()
    for i in passed:
        rec_pii: Counter = Counter()
        for field in ("prompt", "response", "text"):
            if norm[i].get(field):
                norm[i][field], c = pii.scrub(norm[i][field], params.pii)
                rec_pii += c
        signals[i]["pii"] = dict(rec_pii)
        pii_counts += rec_pii
    t = lap("pii", t)

    dup_of: dict[int, tuple[int, float]] = {}
    if params.dedup.exact:
        cand = [norm[i] for i in passed]
        for d, keep in dedup.exact_duplicates(cand, params.dedup).items():
            dup_of[passed[d]] = (passed[keep], 1.0)
            reasons[passed[d]].append("duplicate_exact")
    t = lap("dedup_exact", t)
    if params.dedup.semantic:
        cand_idx = [i for i in passed if i not in dup_of and origin_of(records[i]) not in params.dedup.exclude_origins]
        if len(cand_idx) > 1:
            encoder = encoder or dedup.load_encoder(params.dedup)
            emb = dedup.embed([dedup.dedup_text(norm[i]) for i in cand_idx], encoder, params.dedup.batch_size)
            t = lap("embed", t)
            order = dedup.quality_order([norm[i] for i in cand_idx], params.dedup)
            for d, (keep, sim) in dedup.semantic_duplicates(emb, order, params.dedup.threshold,
                                                            params.dedup.block_size).items():
                dup_of[cand_idx[d]] = (cand_idx[keep], sim)
                reasons[cand_idx[d]].append("duplicate_semantic")
    lap("dedup_semantic", t)
    # An exact copy of B points at B; if semantic de-duplication then drops B for C, follow the chain so
    # every dup_of names a record that was kept.
    for i, (keep, sim) in list(dup_of.items()):
        seen = {i}
        while keep in dup_of and keep not in seen:
            seen.add(keep)
            keep, sim = dup_of[keep][0], min(sim, dup_of[keep][1])
        dup_of[i] = (keep, sim)

    kept, rejected = [], []
    for i, rec in enumerate(records):
        if reasons[i]:
            out = {**rec, "reasons": reasons[i]}
            if i in signals:
                out["signals"] = signals[i]
            if i in dup_of:
                out["dup_of"], out["similarity"] = records[dup_of[i][0]]["id"], round(dup_of[i][1], 4)
            rejected.append(out)
        else:
            out = norm[i]
            out["meta"] = {**(out.get("meta") or {}), "clean": signals[i]}
            kept.append(out)
    by_origin = Counter(origin_of(r) for r in rejected)
    rejected += [{"id": None, "reasons": ["malformed"], "quarantine": bad} for bad in malformed]
    elapsed = time.perf_counter() - t0
    n_in = len(records) + len(malformed)
    metrics = {
        "records_in": n_in, "kept": len(kept), "rejected": len(rejected),
        "accounting_ok": n_in == len(kept) + len(rejected),
        "reasons": dict(sorted(Counter(r for rec in rejected for r in rec["reasons"]).items())),
        "kept_by_origin": dict(sorted(Counter(origin_of(r) for r in kept).items())),
        "rejected_by_origin": dict(sorted(by_origin.items())),
        "pii_replaced": dict(sorted(pii_counts.items())),
        # bidi controls, zero-width and tag characters taken out of valid records (and how many records had any)
        "invisible_removed": {"records": 0, **{name: 0 for name in INVISIBLE}, **invisible},
        "toxicity_backend": params.toxicity.backend,
        "dedup": {"exact": sum(1 for r in rejected if "duplicate_exact" in r["reasons"]),
                  "semantic": sum(1 for r in rejected if "duplicate_semantic" in r["reasons"]),
                  "encoder": params.dedup.encoder, "threshold": params.dedup.threshold},
        "seconds": timings, "records_per_s": round(len(records) / elapsed, 1) if elapsed else None,
    }
    if not metrics["accounting_ok"]:  # cannot happen by construction; a loud check if a change breaks it
        raise AssertionError(f"clean lost records: {n_in} in, {len(kept)} kept, {len(rejected)} rejected")
    return kept, rejected, metrics
