"""Training throughput: our train configuration against a naive TRL run and against the hardware's ceiling.

Three modes, each in a fresh process, on the same base model (4-bit when params.yaml says so), LoRA, data
(data/split) and number of optimizer steps:
- ours: the train stage's own trainer and SFTConfig (slmforge.training.sft_trainer, sft_config) on its packed rows;
- ours_fused_head: the same with TRL's stock SFTTrainer, whose fused LM head the train stage used before
  (the before-and-after of replacing it off Triton, in the same run);
- naive: the same SFTTrainer with no packing, each batch padded to its longest example, and as many
  examples a step as one of our packed rows holds on average (so both see the same data in the same steps);
- ceiling: forward + backward of the same model on full rows of max_seq_len real tokens, no Trainer, no
  optimizer, no data loading: what the hardware does when nothing else is in the way.
Reported: non-padding tokens/s (counted from each batch a training step received), peak resident
memory, and the validation loss after training (ours against naive: the same loss within noise).

Run: python -m bench.train [--steps 12] [--runs 3]      (one mode: python -m bench.train --mode ours --out F)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, RUNS, median, need, peak_rss_mb, summary, worker


def _load(steps: int, seed: int, packing: bool):
    from slmforge.io import read_jsonl
    from slmforge.modeling import load_base, set_threads
    from slmforge.params import load_params
    from slmforge.finetune import add_lora
    from slmforge.training import training_datasets

    set_threads()
    from transformers import set_seed

    set_seed(seed)
    model_params, lora = load_params("model", ROOT / "params.yaml"), load_params("lora", ROOT / "params.yaml")
    params = dataclasses.replace(load_params("train", ROOT / "params.yaml"), max_steps=steps, seed=seed,
                                 eval_steps=10**6, logging_steps=steps, packing=packing)
    model, tokenizer = load_base(model_params, ROOT / "models/base", ROOT / "models/base.json", for_training=True)
    train_rows, val_rows = read_jsonl(ROOT / "data/split/train.jsonl"), read_jsonl(ROOT / "data/split/val.jsonl")
    train_ds, val_ds = training_datasets(train_rows, val_rows, tokenizer, params)
    return add_lora(model, lora), tokenizer, params, model_params, train_ds, val_ds, train_rows, val_rows


def run_trainer(mode: str, steps: int, seed: int) -> dict:
    from trl import SFTTrainer

    from slmforge.training import sft_config, sft_trainer, training_datasets

    model, tokenizer, params, model_params, train_ds, val_ds, train_rows, val_rows = _load(steps, seed, mode != "naive")
    if mode == "naive":
        packed, _ = training_datasets(train_rows, val_rows, tokenizer, dataclasses.replace(params, packing=True))
        per_row = len(train_ds) / len(packed)  # examples in one of our packed rows, on average
        params = dataclasses.replace(params, batch_size=max(1, round(per_row)))
    with tempfile.TemporaryDirectory() as tmp:
        # ours: the train stage's trainer; naive and ours_fused_head: TRL's SFTTrainer as it comes
        make = sft_trainer if mode == "ours" else SFTTrainer
        # No evaluation or checkpoint inside the timed steps (the Trainer evaluates at the last step otherwise);
        # the validation loss is measured after them.
        args = dataclasses.replace(sft_config(params, Path(tmp), model_params), eval_strategy="no", save_strategy="no",
                                   load_best_model_at_end=False)
        trainer = make(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer)
        counted = {"tokens": 0, "slots": 0}
        step = trainer.training_step

        def counting(model, inputs, *args, **kwargs):  # what each optimizer step really trains on
            mask = inputs.get("attention_mask")
            counted["tokens"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            counted["slots"] += inputs["input_ids"].numel()
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counting
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        eval_loss = trainer.evaluate()["eval_loss"]
    return {"mode": mode, "steps": trainer.state.global_step, "batch_size": params.batch_size, "seconds": seconds,
            "tokens": counted["tokens"], "padding_share": 1 - counted["tokens"] / max(1, counted["slots"]),
            "tokens_per_s": counted["tokens"] / seconds, "eval_loss": eval_loss, "peak_rss_mb": peak_rss_mb(),
            "max_seq_len": params.max_seq_len}


def run_ceiling(steps: int, seed: int) -> dict:
    import torch

    from slmforge.modeling import compute_dtype

    model, tokenizer, params, model_params, train_ds, *_ = _load(steps, seed, True)
    full = [ids for ids in train_ds["input_ids"] if len(ids) == params.max_seq_len] or \
        [(list(train_ds["input_ids"][0]) * params.max_seq_len)[: params.max_seq_len]]
    dtype = compute_dtype(model_params.compute_dtype)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x = torch.tensor([full[step % len(full)]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    tokens = steps * params.max_seq_len
    return {"mode": "ceiling", "steps": steps, "batch_size": 1, "seconds": seconds, "tokens": tokens,
            "padding_share": 0.0, "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_rss_mb(),
            "max_seq_len": params.max_seq_len}


def bench(steps: int = 12, runs: int = RUNS) -> dict:
    need("models/base", "data/split/train.jsonl", "params.yaml")
    results: dict[str, list[dict]] = {"ours": [], "ours_fused_head": [], "naive": [], "ceiling": []}
    for seed in range(runs):  # interleaved, so drift in the machine's speed hits every mode alike
        for mode in results:
            r = worker("bench.train", "--mode", mode, "--steps", str(steps), "--seed", str(seed))
            print(f"  train {mode} seed {seed}: {r['tokens_per_s']:.0f} tokens/s, {r['seconds']:.1f} s, "
                  f"peak {r['peak_rss_mb']:.0f} MB" + (f", eval loss {r['eval_loss']:.4f}" if "eval_loss" in r else ""),
                  flush=True)
            results[mode].append(r)
    tps = {m: [r["tokens_per_s"] for r in rs] for m, rs in results.items()}
    loss = {m: [r["eval_loss"] for r in results[m]] for m in ("ours", "ours_fused_head", "naive")}
    # Noise of the final loss: how far apart the seeds of one configuration land.
    noise = max(max(loss[m]) - min(loss[m]) for m in ("ours", "naive"))
    delta = median(loss["ours"]) - median(loss["naive"])
    return {
        "train.speedup_vs_naive": round(median(tps["ours"]) / median(tps["naive"]), 3),
        "train.fraction_of_ceiling": round(median(tps["ours"]) / median(tps["ceiling"]), 3),
        "train.speedup_vs_fused_head": round(median(tps["ours"]) / median(tps["ours_fused_head"]), 3),
        "train.fused_head_speedup_vs_naive": round(median(tps["ours_fused_head"]) / median(tps["naive"]), 3),
        "train.fused_head_fraction_of_ceiling": round(median(tps["ours_fused_head"]) / median(tps["ceiling"]), 3),
        "train.loss_delta_vs_naive": round(delta, 4),
        "train.loss_noise": round(noise, 4),
        "train.loss_within_noise": bool(abs(delta) <= noise),
        "train.tokens_per_s": {m: summary(v, 1) for m, v in tps.items()},
        "train.peak_rss_mb": {m: summary([r["peak_rss_mb"] for r in rs], 0) for m, rs in results.items()},
        "train.eval_loss": {m: summary(v) for m, v in loss.items()},
        "train.padding_share": {m: round(median([r["padding_share"] for r in rs]), 3) for m, rs in results.items()},
        "train.setup": {"steps": steps, "runs": runs, "naive_batch_size": results["naive"][0]["batch_size"],
                        "max_seq_len": results["ours"][0]["max_seq_len"]},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["ours", "ours_fused_head", "naive", "ceiling"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.mode:
        result = run_ceiling(args.steps, args.seed) if args.mode == "ceiling" else run_trainer(args.mode, args.steps, args.seed)
    else:
        result = bench(args.steps, args.runs)
    text = json.dumps(result, indent=2)
    Path(args.out).write_text(text + "\n") if args.out else print(text)


if __name__ == "__main__":
    main()
