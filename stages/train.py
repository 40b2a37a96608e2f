"""Stage `train`: QLoRA fine-tuning of the base model on the train split, early-stopped on val.

Run: dvc repro train@DOMAIN   (python -m stages.train --domain all --train data/split/train.jsonl --adapter models/adapters/all ...)
One stage per domain (dvc.yaml foreach over `domains`): the domain's rows of the shared split, its own adapter.
Checkpoints live in --checkpoints, which is not a DVC output, so a killed run resumes on the next repro.
With train.distributed set, it runs itself again through `accelerate launch --config_file conf/accelerate/NAME.yaml`.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from slmforge.distributed import relaunch
from slmforge.domains import select_split
from slmforge.io import read_jsonl, write_run_facts
from slmforge.params import as_dict, check_params_fresh, load_domain_params, load_params
from slmforge.runner import run
from slmforge.training import train


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domain", required=True, help="a key of `domains` in params.yaml: which rows it trains on")
    ap.add_argument("--train", required=True, help="data/split/train.jsonl")
    ap.add_argument("--val", required=True, help="data/split/val.jsonl")
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
    files = [Path(args.train), Path(args.val)]
    domain = load_domain_params(args.domain)
    rows = select_split({"train": read_jsonl(files[0]), "val": read_jsonl(files[1])}, args.domain, domain)
    # the checkpoints of one selection of rows: a changed selection never resumes from another's
    selection = hashlib.sha256(json.dumps(as_dict(domain), sort_keys=True).encode()).hexdigest()[:12]
    summary = train(
        train_rows=rows["train"], val_rows=rows["val"], data_files=files,
        model_params=load_params("model"), lora=load_params("lora"), params=params,
        base_dir=Path(args.base), base_json=Path(args.pin), adapter_dir=Path(args.adapter),
        metrics_dir=Path(args.metrics_dir), checkpoint_root=Path(args.checkpoints) / selection,
    )
    if summary is None:  # not the main process: it writes nothing and says nothing
        return
    write_run_facts(args.run_facts, {"stage": f"train@{args.domain}", **summary.pop("run")})
    print(f"train@{args.domain}: {len(rows['train'])} rows, eval loss {summary['eval_loss']:.4f} (best "
          f"{summary['best_eval_loss']:.4f} at step {summary['best_step']}), gap {summary['train_eval_gap']:+.3f}, "
          f"{summary['world_size']} process(es) -> {args.adapter}")


if __name__ == "__main__":
    run(main)
