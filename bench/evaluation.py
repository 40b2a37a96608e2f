"""Evaluation: generation tokens/s of the evaluate stage's batched greedy decoding against one item at a time.

The same base model (loaded as evaluate loads it), the same prompts (the first items of the test split and
the probes) and max_new_tokens; nothing cached. Tokens are the answers' own (up to EOS), so a batch that
runs on for its longest member gains nothing from the rows that had already stopped.

Run: python -m bench.evaluation [--items 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, RUNS, median, need, summary


def bench(items: int = 16, runs: int = RUNS) -> dict:
    need("models/base", "data/split/test.jsonl", "params.yaml")
    from slmforge.evaluation.generate import generate, prompt_messages
    from slmforge.io import read_jsonl
    from slmforge.modeling import load_base, set_threads
    from slmforge.params import load_params

    set_threads()
    params = load_params("eval", ROOT / "params.yaml")
    model, tokenizer = load_base(load_params("model", ROOT / "params.yaml"), ROOT / "models/base",
                                 ROOT / "models/base.json")
    rows = [*read_jsonl(ROOT / "data/split/test.jsonl"), *read_jsonl(ROOT / "data/split/probes.jsonl")][:items]
    conversations = [prompt_messages(r) for r in rows]
    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    texts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as store:
        for _ in range(runs):
            for mode, batch in (("batched", params.batch_size), ("one_at_a_time", 1)):
                t = time.perf_counter()
                out = generate(model, tokenizer, conversations, params.max_new_tokens, batch, desc=mode,
                               store=Path(store))
                rates[mode].append(sum(o["tokens"] for o in out) / (time.perf_counter() - t))
                texts[mode] = [o["text"] for o in out]
    same = sum(a == b for a, b in zip(texts["batched"], texts["one_at_a_time"])) / len(rows)
    speedup = median(rates["batched"]) / median(rates["one_at_a_time"])
    print(f"  generation: batched {median(rates['batched']):.1f} tokens/s, one at a time "
          f"{median(rates['one_at_a_time']):.1f}: {speedup:.2f}x; identical answers {same:.0%}", flush=True)
    return {"eval.batched_speedup": round(speedup, 3),
            "eval.tokens_per_s": {m: summary(v, 1) for m, v in rates.items()},
            "eval.identical_answers_share": round(same, 3),
            "eval.setup": {"items": len(rows), "batch_size": params.batch_size, "max_new_tokens": params.max_new_tokens}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args(argv)
    print(json.dumps(bench(args.items, args.runs), indent=2))


if __name__ == "__main__":
    main()
