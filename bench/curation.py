"""Throughput of the clean step on generated records (10,000 and 100,000 by default).

Run: python bench/curation.py [--sizes 10000 100000] [--out bench/curation.json]

Records are assembled from the sentences of the embedded sample corpus, so their lengths and vocabulary
are those of the real sources; 8% are exact copies, 4% reworded copies, 3% non-English and 2% spam, so
every filter has work to do. Reported: records/s of the whole clean step and of each part.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", default=str(ROOT / "bench/curation.json"))
    args = ap.parse_args(argv)
    from slmforge.curation import dedup, toxicity
    from slmforge.curation.clean import clean
    from slmforge.params import CleanParams, build, compose

    params = build(CleanParams, compose(ROOT / "conf")["clean"], "clean")
    encoder, scorer = dedup.load_encoder(params.dedup), toxicity.load_scorer(params.toxicity)  # loaded once
    results = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "runs": []}
    for n in args.sizes:
        records = generate(n)
        t = time.perf_counter()
        kept, rejected, metrics = clean(records, params, scorer=scorer, encoder=encoder)
        wall = time.perf_counter() - t
        without_semantic = wall - metrics["seconds"].get("embed", 0) - metrics["seconds"].get("dedup_semantic", 0)
        run = {"records": n, "seconds": round(wall, 1), "records_per_s": round(n / wall, 1),
               "records_per_s_without_semantic_dedup": round(n / without_semantic, 1),
               "kept": metrics["kept"], "reasons": metrics["reasons"], "seconds_by_part": metrics["seconds"]}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
