"""Stage `train_scorer`: the student scorer (base model + regression head, LoRA on a 4-bit base) trained on the
oracle's labels of the train split, keeping the checkpoint with the best validation MSE.

Run: dvc repro train_scorer   (python -m stages.train_scorer --train data/split/train.jsonl --labels data/labels/labels.jsonl ...)
"""

import argparse
from pathlib import Path

from slmforge.io import read_jsonl, write_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.student import train_scorer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", required=True, help="data/split/train.jsonl")
    ap.add_argument("--val", required=True, help="data/split/val.jsonl")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--out", required=True, help="the scorer's folder (adapter, head, tokenizer, card)")
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--run-facts", default=None, help="(optional) this run's time (git-ignored, read by no stage)")
    args = ap.parse_args(argv)
    check_params_fresh()
    labels = {lab["id"]: lab for lab in read_jsonl(args.labels)}
    summary = train_scorer(
        train_rows=read_jsonl(args.train), val_rows=read_jsonl(args.val), labels=labels,
        rubric=load_params("rubric"), model_params=load_params("model"), params=load_params("scorer"),
        base_dir=Path(args.base), base_json=Path(args.pin), out_dir=Path(args.out),
        metrics_dir=Path(args.metrics_dir), checkpoint_dir=Path(args.checkpoints),
    )
    write_run_facts(args.run_facts, {"stage": "train_scorer", **summary.pop("run")})
    print(f"train_scorer: {summary['train_examples']} examples, val MSE {summary['eval_mse']:.4f} (best "
          f"{summary['best_eval_mse']:.4f} at step {summary['best_step']}) -> {args.out}")


if __name__ == "__main__":
    run(main)
