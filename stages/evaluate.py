"""Stage `evaluate`: tuned against base on the test split and the held-out fact probes.

Run: dvc repro evaluate   (python -m stages.evaluate --split-dir data/split --adapter models/adapter ...)
"""

import argparse
from pathlib import Path

from slmforge.evaluation.compare import compare
from slmforge.evaluation.report import render
from slmforge.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split-dir", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--items", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    split = Path(args.split_dir)
    result = compare(
        test_rows=read_jsonl(split / "test.jsonl"), probes=read_jsonl(split / "probes.jsonl"),
        model_params=load_params("model"), params=load_params("eval"),
        max_len=load_params("train").max_seq_len, base_dir=Path(args.base), base_json=Path(args.pin),
        adapter_dir=Path(args.adapter),
    )
    atomic_write_jsonl(args.items, result["items"])
    atomic_write_text(args.report, render(result))
    atomic_write_json(args.metrics, {k: result[k] for k in ("base", "tuned", "delta", "template_sha256")})
    d = result["delta"]
    print(f"evaluate: perplexity {result['base']['perplexity']:.2f} -> {result['tuned']['perplexity']:.2f}, "
          f"probe accuracy {result['base']['probe_accuracy']:.2%} -> {result['tuned']['probe_accuracy']:.2%} "
          f"(delta {d['probe_accuracy']:+.2%})")


if __name__ == "__main__":
    run(main)
