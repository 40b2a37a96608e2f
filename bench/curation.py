"""Curation: throughput of clean, how semantic de-duplication scales, and our embedding against a plain one.

Records are assembled from the sentences of the embedded sample corpus, so their lengths and vocabulary
are those of the real sources; 8% are exact copies, 4% reworded copies, 3% non-English and 2% spam, so
every filter has work to do.
- clean: records/s of the clean step's rules, language, toxicity, PII and exact de-duplication (semantic
  de-duplication off: it is measured apart) on 10,000 and 100,000 records, with the seconds of each part.
- semantic de-duplication at n and 4n records, embedding and search together, as an exponent k of t ~ n^k;
  and the search alone (the part that is not linear by nature) at 10,000 and 40,000 unit vectors with
  planted near-duplicates.
- embedding: our encoder (params' clean.dedup: bf16 where the CPU has it) against plain
  sentence-transformers in float32 on the same texts, and how many of the duplicate pairs each finds agree.

Run: python -m bench.curation [--sizes 10000 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import time
from pathlib import Path

from bench.common import ROOT, RUNS, exponent, median, summary


def sentence_pool() -> tuple[list[str], list[str], list[str]]:
    from slmforge.params import build, compose, SampleSourceParams
    from slmforge.sources.sample import collect

    params = build(SampleSourceParams, {**compose(ROOT / "conf")["sources"]["sample"],
                                        "path": str(ROOT / "data/sample")}, "sources.sample")
    records = collect(params, run_id="bench", quarantine=[], stats={})
    drops = {json.loads(line)["id"]: json.loads(line)["reason"]
             for name in ("stackexchange_expected_drops.jsonl", "tweets_arxiv_expected_drops.jsonl")
             for line in (ROOT / "data/sample" / name).read_text().splitlines()}
    english, foreign, spam = [], [], []
    for rec in records:
        text = f"{rec['prompt']} {rec['response']} {rec['text']}"
        pieces = [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if 20 <= len(s.strip()) <= 300]
        {"non_english": foreign, "spam": spam}.get(drops.get(rec["id"]), english).extend(pieces)
    return english, foreign, spam


def generate(n: int, seed: int = 0) -> list[dict]:
    english, foreign, spam = sentence_pool()
    rng = random.Random(seed)
    out: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.08:
            rec = dict(rng.choice(out))  # an exact copy under a new id
        elif out and roll < 0.12:
            src = rng.choice(out)
            words = src["response"].split()
            rec = {**src, "prompt": src["prompt"].lower(), "response": " ".join(words[:-1] + ["indeed."])}
        else:
            pool = foreign if roll < 0.15 else spam if roll < 0.17 else english
            rec = {"prompt": " ".join(rng.sample(english, 2)), "response": " ".join(rng.sample(pool, rng.randint(2, 5)))}
        out.append({"id": f"bench:{i}", "source": "bench", "kind": "pair", "prompt": rec["prompt"],
                     "response": rec["response"], "text": "", "meta": {"origin": "bench", "score": rng.randint(0, 50)},
                     "provenance": {"query": "bench", "url": None, "fetched_at": "2026-01-01T00:00:00+00:00",
                                    "run_id": "bench"}})
    return out


def clean_throughput(sizes: list[int], runs: int, params, scorer) -> dict:
    from slmforge.curation.clean import clean

    out: dict = {}
    no_semantic = dataclasses.replace(params, dedup=dataclasses.replace(params.dedup, semantic=False))
    for n in sizes:
        records = generate(n)
        walls, parts = [], []
        for _ in range(runs):
            t = time.perf_counter()
            kept, rejected, metrics = clean(records, no_semantic, scorer=scorer)
            walls.append(time.perf_counter() - t)
            parts.append(metrics["seconds"])
            assert len(kept) + len(rejected) == n, "clean lost records"
        rate = [n / w for w in walls]
        print(f"  clean {n}: {median(rate):.0f} records/s (runs {', '.join(f'{r:.0f}' for r in rate)})", flush=True)
        size = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        out[f"curation.clean_records_per_s_{size}"] = round(median(rate), 1)
        out[f"curation.clean_{size}"] = {
            "records_per_s": summary(rate, 1), "kept": metrics["kept"], "reasons": metrics["reasons"],
            "seconds_by_part": {k: round(median([p[k] for p in parts]), 3) for k in parts[0]}}
    return out


def dedup_pairs(emb, threshold: float, block_size: int) -> set[tuple[int, int]]:
    from slmforge.curation.dedup import semantic_duplicates

    return {(d, keep) for d, (keep, _) in semantic_duplicates(emb, list(range(len(emb))), threshold, block_size).items()}


def planted_vectors(n: int, dim: int = 384, dup_share: float = 0.05, seed: int = 0):
    """Unit vectors, a share of them near-copies (cosine about 0.95) of an earlier one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    copies = rng.choice(np.arange(1, n), size=int(dup_share * n), replace=False)
    for i in copies:
        j = int(rng.integers(0, i))
        emb[i] = emb[j] / np.linalg.norm(emb[j]) * 3.0 + rng.standard_normal(dim).astype(np.float32) * 0.05
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def semantic_scaling(n: int, runs: int, params, encoder, search_n: int = 10_000) -> dict:
    """Embedding + search at n and 4n real records; the search alone at search_n and 4 search_n planted vectors
    (large enough that the comparisons, not the per-block bookkeeping, take the time)."""
    from slmforge.curation import dedup
    from slmforge.curation.normalise import normalise_record

    texts = [dedup.dedup_text(normalise_record(r, params.normalise)) for r in generate(4 * n, seed=1)]
    whole: dict[int, list[float]] = {n: [], 4 * n: []}
    for _ in range(runs):
        for size in whole:
            t = time.perf_counter()
            emb = dedup.embed(texts[:size], encoder, params.dedup.batch_size)
            dedup.semantic_duplicates(emb, list(range(size)), params.dedup.threshold, params.dedup.block_size)
            whole[size].append(time.perf_counter() - t)
    search: dict[int, list[float]] = {search_n: [], 4 * search_n: []}
    found: dict[str, int] = {}
    for size in search:
        emb = planted_vectors(size)
        for _ in range(runs):
            t = time.perf_counter()
            dups = dedup.semantic_duplicates(emb, list(range(size)), params.dedup.threshold, params.dedup.block_size)
            search[size].append(time.perf_counter() - t)
        found[str(size)] = len(dups)
    k_whole = exponent(median(whole[n]), median(whole[4 * n]))
    k_search = exponent(median(search[search_n]), median(search[4 * search_n]))
    print(f"  semantic dedup {n} -> {4 * n} records: exponent {k_whole:.2f}; search alone {search_n} -> {4 * search_n}: "
          f"{k_search:.2f}", flush=True)
    return {"curation.semdedup_scaling_exponent": round(k_whole, 3),
            "curation.semdedup_search_scaling_exponent": round(k_search, 3),
            "curation.semdedup_seconds": {str(size): summary(v, 3) for size, v in whole.items()},
            "curation.semdedup_search_seconds": {str(size): summary(v, 3) for size, v in search.items()},
            "curation.semdedup_search_duplicates_found": found}


def embedding_speed(n: int, runs: int, params, encoder) -> dict:
    """Our encoder against plain sentence-transformers in float32 (batch 32, its defaults) on the same texts."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from slmforge.curation import dedup
    from slmforge.curation.normalise import normalise_record

    texts = [dedup.dedup_text(normalise_record(r, params.normalise)) for r in generate(n, seed=2)]
    plain = SentenceTransformer(dedup.encoder_path(params.dedup.encoder), device="cpu")
    plain.max_seq_length = encoder.max_seq_length  # the same truncation: only the speed should differ
    ours_s, plain_s = [], []
    for _ in range(runs):
        t = time.perf_counter()
        ours = dedup.embed(texts, encoder, params.dedup.batch_size)
        ours_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        base = np.asarray(plain.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)
        plain_s.append(time.perf_counter() - t)
    pairs_ours = dedup_pairs(ours, params.dedup.threshold, params.dedup.block_size)
    pairs_plain = dedup_pairs(base, params.dedup.threshold, params.dedup.block_size)
    union = pairs_ours | pairs_plain
    agreement = len(pairs_ours & pairs_plain) / len(union) if union else 1.0
    speedup = median(plain_s) / median(ours_s)
    cos = float(np.median(np.sum(ours * base, axis=1)))
    print(f"  embedding {n} texts: {speedup:.2f}x plain fp32; duplicate pairs {len(pairs_ours)} vs {len(pairs_plain)}, "
          f"agreement {agreement:.3f}", flush=True)
    return {"curation.embed_speedup": round(speedup, 3),
            "curation.embed_duplicates_agreement": round(agreement, 4),
            "curation.embed_texts_per_s": {"ours": summary([n / s for s in ours_s], 1),
                                           "plain_fp32": summary([n / s for s in plain_s], 1)},
            "curation.embed_duplicate_pairs": {"ours": len(pairs_ours), "plain_fp32": len(pairs_plain),
                                               "both": len(pairs_ours & pairs_plain)},
            "curation.embed_median_cosine_to_plain": round(cos, 5),
            "curation.embed_setup": {"texts": n, "dtype": str(next(encoder.parameters()).dtype),
                                     "batch_size": params.dedup.batch_size, "max_tokens": encoder.max_seq_length}}


def bench(sizes=(10_000, 100_000), runs: int = RUNS, semantic_n: int = 500, embed_n: int = 500) -> dict:
    from slmforge.curation import dedup, toxicity
    from slmforge.modeling import set_threads
    from slmforge.params import CleanParams, build, compose

    set_threads()
    params = build(CleanParams, compose(ROOT / "conf")["clean"], "clean")
    encoder, scorer = dedup.load_encoder(params.dedup), toxicity.load_scorer(params.toxicity)  # loaded once
    return {**embedding_speed(embed_n, runs, params, encoder), **semantic_scaling(semantic_n, runs, params, encoder),
            **clean_throughput(list(sizes), runs, params, scorer)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--semantic-n", type=int, default=500)
    ap.add_argument("--embed-n", type=int, default=500)
    args = ap.parse_args(argv)
    print(json.dumps(bench(args.sizes, args.runs, args.semantic_n, args.embed_n), indent=2))


if __name__ == "__main__":
    main()
