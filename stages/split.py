"""Stage `split`: deterministic stratified train/val/test split, fact probes held out, leakage checked.

Run: dvc repro split   (python -m stages.split --chatml data/chatml/all.jsonl --out-dir data/split ...)
"""

import argparse
from pathlib import Path

from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.split import stratified_split


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chatml", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("split")
    splits, metrics = stratified_split(read_jsonl(args.chatml), params)
    for name, rows in splits.items():
        atomic_write_jsonl(Path(args.out_dir) / f"{name}.jsonl", rows)
    atomic_write_json(args.metrics, metrics)
    print("split: " + ", ".join(f"{k}={v}" for k, v in metrics["counts"].items()))


if __name__ == "__main__":
    run(main)
