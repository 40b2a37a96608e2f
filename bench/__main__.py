"""`make bench`: every benchmark, then bench/results.json and the table in bench/README.md.

Run: python -m bench [--only train curation evaluation pipeline oracle] [--runs 3]
Sections not run keep their last figures in results.json (each section records when and where it ran).
Needs the pipeline's outputs (models/base, data/split: `make repro` or `dvc pull`).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

from bench.common import ROOT, RUNS, machine

RESULTS = ROOT / "bench/results.json"
README = ROOT / "bench/README.md"
SECTIONS = ["train", "curation", "evaluation", "pipeline", "oracle"]

# key: (what it is, goal as text, test of the goal or None, the baseline it is measured against)
GOALS = {
    "train.speedup_vs_naive": ("non-padding tokens/s, ours / naive TRL (no packing, padded)", ">= 2", lambda v: v >= 2,
                               "naive SFTTrainer run, same model, data, steps"),
    "train.fraction_of_ceiling": ("non-padding tokens/s, ours / raw forward+backward on full rows", ">= 0.8",
                                  lambda v: v >= 0.8, "forward+backward of the same model, no Trainer"),
    "train.loss_delta_vs_naive": ("validation loss after training, ours - naive", "within noise", None,
                                  "naive run's validation loss"),
    "curation.clean_records_per_s_100k": ("records/s of clean (rules, language, toxicity, PII, exact dedup)",
                                          "(none)", None, "absolute (the 10k figure beside it)"),
    "curation.semdedup_scaling_exponent": ("k in t ~ n^k, embedding + search, n -> 4n records", "<= 1.3",
                                           lambda v: v <= 1.3, "the same step at n"),
    "curation.semdedup_search_scaling_exponent": ("k in t ~ n^k, search alone, 10k -> 40k vectors", "<= 1.3",
                                                  lambda v: v <= 1.3, "the same search at 10k"),
    "curation.embed_speedup": ("texts/s, our encoder / plain sentence-transformers fp32", ">= 2", lambda v: v >= 2,
                               "plain sentence-transformers in float32"),
    "curation.embed_duplicates_agreement": ("duplicate pairs found by both / by either", "1.0 (quality kept)",
                                            None, "pairs found with plain fp32 embeddings"),
    "eval.batched_speedup": ("generated tokens/s, batched / one item at a time", ">= 5", lambda v: v >= 5,
                             "the same generate() with batch size 1"),
    "dvc.noop_repro_s": ("seconds of a no-op `dvc repro`", "<= 2", lambda v: v <= 2, "absolute"),
    "dvc.only_downstream_executed": ("a param change sets off exactly the stages that read it", "true",
                                     lambda v: v is True, "DVC's graph"),
    "oracle.warm_calls": ("calls made labelling 1,000 records again", "0", lambda v: v == 0, "cold run's calls"),
    "oracle.warm_s_per_1k": ("seconds to label 1,000 records from the cache", "< 1", lambda v: v < 1,
                             "cold run through the API (oracle.cold_s_per_1k)"),
}


def run_section(name: str, runs: int) -> dict:
    import importlib

    module = importlib.import_module(f"bench.{name}")
    print(f"[bench] {name} ...", flush=True)
    t = time.perf_counter()
    figures = module.bench(runs=runs)
    stamp = {"ran_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
             "seconds": round(time.perf_counter() - t, 1)}
    print(f"[bench] {name} done in {stamp['seconds']:.0f} s", flush=True)
    return {**figures, f"{name}.ran": stamp}


def fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(results: dict) -> str:
    lines = ["| key | value | goal | met | what | baseline (same run) |", "|---|---|---|---|---|---|"]
    for key, (what, goal, test, baseline) in GOALS.items():
        if key not in results:
            continue
        value = results[key]
        met = "" if test is None else ("yes" if test(value) else "**no**")
        if key == "train.loss_delta_vs_naive" and "train.loss_within_noise" in results:
            met = "yes" if results["train.loss_within_noise"] else "**no**"
            goal = f"within noise ({fmt(results['train.loss_noise'])})"
        lines.append(f"| `{key}` | {fmt(value)} | {goal} | {met} | {what} | {baseline} |")
    return "\n".join(lines)


def write_readme(results: dict) -> None:
    text = README.read_text() if README.exists() else ""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    block = (f"{start}\nMachine: {results.get('machine', '?')}. Every figure is the median of {results.get('runs', RUNS)} "
             f"runs; the runs themselves are in `results.json`.\n\n{table(results)}\n{end}")
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    README.write_text(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args(argv)
    if args.runs < 3:
        print(f"[bench] --runs {args.runs}: fewer than 3 runs a figure; fine for a try, not for the record", flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.only:
        results.update(run_section(name, args.runs))
        results.update(machine=machine(), runs=args.runs)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")  # each section kept as it ends
    write_readme(results)
    print(table(results))


if __name__ == "__main__":
    main()
