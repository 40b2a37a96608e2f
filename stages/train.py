"""Stage `train`: QLoRA fine-tuning of the base model on the train split, early-stopped on val.

Run: dvc repro train   (python -m stages.train --split-dir data/split --adapter models/adapter ...)
Checkpoints live in --checkpoints, which is not a DVC output, so a killed run resumes on the next repro.
"""

import argparse
import json
from pathlib import Path

from slmforge.io import read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.training import train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split-dir", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--chatml-metrics", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--checkpoints", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    split = Path(args.split_dir)
    files = [split / "train.jsonl", split / "val.jsonl"]
    summary = train(
        train_rows=read_jsonl(files[0]), val_rows=read_jsonl(files[1]), data_files=files,
        model_params=load_params("model"), lora=load_params("lora"), params=load_params("train"),
        base_dir=Path(args.base), base_json=Path(args.pin), adapter_dir=Path(args.adapter),
        metrics_dir=Path(args.metrics_dir), checkpoint_root=Path(args.checkpoints),
        expected_template_sha=json.loads(Path(args.chatml_metrics).read_text())["template_sha256"],
    )
    print(f"train: eval loss {summary['eval_loss']:.4f} (best {summary['best_eval_loss']:.4f} at step "
          f"{summary['best_step']}), gap {summary['train_eval_gap']:+.3f} -> {args.adapter}")


if __name__ == "__main__":
    run(main)
