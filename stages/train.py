"""Stage `train`: QLoRA fine-tuning of the base model on the train split, early-stopped on val.

Run: dvc repro train   (python -m stages.train --split-dir data/split --adapter models/adapter ...)
Checkpoints live in --checkpoints, which is not a DVC output, so a killed run resumes on the next repro.
With train.distributed set, it runs itself again through `accelerate launch --config_file conf/accelerate/NAME.yaml`.
"""

import argparse
import sys
from pathlib import Path

from slmforge.distributed import relaunch
from slmforge.io import read_jsonl, write_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.training import train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split-dir", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--run-facts", default=None, help="(optional) time, resumption, processes (git-ignored, read by no stage)")
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("train")
    code = relaunch(params.distributed, "stages.train", sys.argv[1:] if argv is None else list(argv))
    if code is not None:  # the launched processes did the work
        sys.exit(code)
    split = Path(args.split_dir)
    files = [split / "train.jsonl", split / "val.jsonl"]
    summary = train(
        train_rows=read_jsonl(files[0]), val_rows=read_jsonl(files[1]), data_files=files,
        model_params=load_params("model"), lora=load_params("lora"), params=params,
        base_dir=Path(args.base), base_json=Path(args.pin), adapter_dir=Path(args.adapter),
        metrics_dir=Path(args.metrics_dir), checkpoint_root=Path(args.checkpoints),
    )
    if summary is None:  # not the main process: it writes nothing and says nothing
        return
    write_run_facts(args.run_facts, {"stage": "train", **summary.pop("run")})
    print(f"train: eval loss {summary['eval_loss']:.4f} (best {summary['best_eval_loss']:.4f} at step "
          f"{summary['best_step']}), gap {summary['train_eval_gap']:+.3f}, {summary['world_size']} process(es) "
          f"-> {args.adapter}")


if __name__ == "__main__":
    run(main)
