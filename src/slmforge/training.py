"""QLoRA supervised fine-tuning with TRL: assistant-only loss, packing, early stopping, resumable checkpoints.

Rank-aware: under `accelerate launch` (train.distributed) every process trains its share of the rows and only the
main process writes the adapter, the dvclive metrics and the summary.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from slmforge.io import UserError, atomic_dir, atomic_write_json, atomic_write_text
from slmforge.params import LoraParams, ModelParams, TrainParams, as_dict


# --- tokenisation -------------------------------------------------------------------------------

def tokenize_chat(tokenizer, messages: list[dict], max_len: int) -> dict:
    """input_ids and labels of one conversation, labels -100 everywhere but the assistant turns.

    Each assistant turn's tokens are found by rendering the conversation up to it with the generation
    prompt and then with the turn itself: the new tokens (content and end-of-turn) are what the model must
    learn to produce. This works for any chat template, with or without {% generation %} markers.
    """
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=False)
        if full[: len(prefix)] != prefix:
            raise UserError("chat template renders a prompt differently once the answer follows it; "
                            "assistant-only loss cannot locate the answer tokens")
        prompt_part = prefix[len(ids):]
        answer_part = full[len(prefix):]
        ids += prompt_part + answer_part
        labels += [-100] * len(prompt_part) + answer_part
    return {"input_ids": ids[:max_len], "labels": labels[:max_len]}


def build_dataset(rows: list[dict], tokenizer, max_len: int):
    from datasets import Dataset

    examples = [tokenize_chat(tokenizer, row["messages"], max_len) for row in rows]
    # An answer cut off entirely by max_len has nothing to learn from.
    return Dataset.from_list([e for e in examples if any(label != -100 for label in e["labels"])])


def epoch_rounds(rows: list[dict], weights: dict[str, float], seed: int) -> list[list[dict]]:
    """The rows of one epoch, as rounds: a weight w for an origin means int(w) full passes over its rows
    plus a seeded random fraction w - int(w) of them (origins not named weigh 1). Round r holds every
    origin's r-th pass, shuffled."""
    import random

    by_origin: dict[str, list[dict]] = {}
    for row in rows:
        by_origin.setdefault(row.get("meta", {}).get("origin", ""), []).append(row)
    rounds: list[list[dict]] = []
    for origin, members in sorted(by_origin.items()):
        weight = weights.get(origin, 1.0)
        passes = [list(members) for _ in range(int(weight))]
        frac = weight - int(weight)
        if frac > 0:
            picked = list(members)
            random.Random(f"{seed}:{origin}").shuffle(picked)
            passes.append(picked[: round(frac * len(picked))])
        for r, chosen in enumerate(passes):
            if r == len(rounds):
                rounds.append([])
            rounds[r].extend(chosen)
    for r, chosen in enumerate(rounds):
        random.Random(seed + r).shuffle(chosen)
    return [r for r in rounds if r]


def pack_rounds(rows: list[dict], tokenizer, max_len: int, weights: dict[str, float], seed: int):
    """Packed training rows in which a repeated example never meets its own copy.

    Packing all copies at once (best-fit decreasing sorts by length) puts identical copies side by side in
    one row, so a fact would be seen k times in one step and then never again. Instead each round of
    `epoch_rounds` is packed on its own; the Trainer's sampler then spreads the rows over the epoch.
    """
    from datasets import concatenate_datasets
    from trl.data_utils import pack_dataset

    return concatenate_datasets([pack_dataset(build_dataset(chosen, tokenizer, max_len), max_len, "bfd")
                                 for chosen in epoch_rounds(rows, weights, seed)])


# --- fingerprints -------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(data_files: list[Path], model: ModelParams, lora: LoraParams, train: TrainParams,
                    template_sha: str) -> str:
    """What a checkpoint must share with a run to be resumed by it: data, model, template and params."""
    blob = json.dumps({"data": [file_sha256(p) for p in data_files], "model": as_dict(model),
                       "lora": as_dict(lora), "train": as_dict(train), "template": template_sha},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def last_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


# --- training -----------------------------------------------------------------------------------

def _dvclive_callback(live):
    from transformers import TrainerCallback

    class DvcLiveLogger(TrainerCallback):
        """Log losses and learning rate by global step. (transformers' own DVCLiveCallback also logs every
        TrainingArguments field as params, machine paths included; we keep metrics to numbers.)"""

        def on_log(self, args, state, control, logs=None, **kwargs):
            live.step = state.global_step  # before logging: a value belongs to the step it was measured at
            for key, value in (logs or {}).items():
                if key in {"loss", "eval_loss", "learning_rate", "grad_norm", "eval_mean_token_accuracy",
                           "mean_token_accuracy"} and isinstance(value, (int, float)):
                    name = {"loss": "train/loss", "eval_loss": "eval/loss"}.get(key, key.replace("eval_", "eval/"))
                    live.log_metric(name, float(value), timestamp=False)
            live.make_summary()

    return DvcLiveLogger()


def training_datasets(train_rows: list[dict], val_rows: list[dict], tokenizer, params: TrainParams):
    """(train, val) datasets of input_ids and assistant-only labels; train packed when params.packing."""
    if params.max_train_examples:
        train_rows = train_rows[: params.max_train_examples]
    if params.packing:
        train_ds = pack_rounds(train_rows, tokenizer, params.max_seq_len, params.origin_weights, params.seed)
    else:
        train_ds = build_dataset([r for chosen in epoch_rounds(train_rows, params.origin_weights, params.seed)
                                  for r in chosen], tokenizer, params.max_seq_len)
    return train_ds, build_dataset(val_rows, tokenizer, params.max_seq_len)


def add_lora(model, lora: LoraParams):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM", bias="none",
    ))


def sft_config(params: TrainParams, output_dir: Path, model_params: ModelParams):
    """The SFTConfig of a run (the train stage's and the benchmark's: one place)."""
    import torch
    from trl import SFTConfig

    from slmforge.distributed import context
    from slmforge.modeling import compute_dtype

    ctx = context()
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=max(params.batch_size, 8),  # no gradients: bigger batches are cheap
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.lr,
        lr_scheduler_type=params.scheduler,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        max_length=None if params.packing else params.max_seq_len,  # pack_rounds truncated and packed already
        # Rows are packed by pack_rounds already; padding-free collation turns their seq_lengths into
        # position_ids, which keep packed examples apart in attention (TRL passes use_cache=False).
        packing=False,
        padding_free=params.packing,
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        save_strategy="steps",
        save_steps=params.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=params.logging_steps,
        seed=params.seed,
        data_seed=params.seed,
        bf16=compute_dtype(model_params.compute_dtype) == torch.bfloat16,
        use_cpu=not on_gpu,
        gradient_checkpointing=False,  # small models on CPU: recomputation costs more than the memory saves
        report_to="none",
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=not ctx.is_main,
        # Several CPU processes talk over gloo (accelerate would pick MPI where torch has it); GPUs use NCCL.
        ddp_backend="gloo" if ctx.distributed and not on_gpu else None,
        ddp_find_unused_parameters=False if ctx.distributed else None,  # every LoRA weight gets a gradient
    )


def sft_trainer(**kwargs):
    """TRL's SFTTrainer, with the model's own loss where TRL's fused LM head has no kernel.

    TRL 1.x computes the loss through a fused LM head: tiles of the logits with an online softmax, and the
    logits computed again in the backward pass. With Triton (CUDA) that is a fused kernel and saves memory;
    elsewhere it runs as a loop of float32 torch operations over (tokens x 32k) tiles: on SmolLM2-135M with
    384-token rows on 2 CPU cores, 8 steps took 19.1 s with it and 15.4 s with the model's own loss, the same
    loss to 3 decimals (bench/train.py compares both in every run). Off Triton we therefore take
    transformers' standard loss from the model's forward (one bf16 projection, one cross-entropy) and
    compute the token accuracy TRL would have logged from the same logits.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if torch.cuda.is_available():
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            with torch.no_grad():
                labels = inputs["labels"][:, 1:]
                mask = labels != -100
                hits = (outputs.logits[:, :-1].argmax(-1) == labels) & mask
                seen = int(mask.sum())
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append(int(hits.sum()) / seen if seen else 0.0)
            return (loss, outputs) if return_outputs else loss

    return PlainHeadSFTTrainer(**kwargs)


def train(*, train_rows: list[dict], val_rows: list[dict], data_files: list[Path], model_params: ModelParams,
          lora: LoraParams, params: TrainParams, base_dir: Path, base_json: Path, adapter_dir: Path,
          metrics_dir: Path, checkpoint_root: Path, expected_template_sha: str) -> dict | None:
    """Train and save the adapter; returns the summary on the main process, None on the others."""
    from accelerate.utils import gather_object
    from dvclive import Live
    from transformers import EarlyStoppingCallback, set_seed

    from slmforge.distributed import context
    from slmforge.modeling import load_base, set_threads, template_fingerprint

    ctx = context()
    set_threads(ctx.local_world_size)  # processes on one machine share its cores
    set_seed(params.seed)
    model, tokenizer = load_base(model_params, base_dir, base_json, for_training=True)
    template_sha = template_fingerprint(tokenizer)
    if template_sha != expected_template_sha:
        raise UserError("chat template of models/base differs from the one chatml recorded in metrics/chatml.json: "
                        "run `dvc repro chatml`")

    train_ds, val_ds = training_datasets(train_rows, val_rows, tokenizer, params)
    n_train_tokens = sum(len(x) for x in train_ds["input_ids"])

    model = add_lora(model, lora)

    fingerprint = run_fingerprint(data_files, model_params, lora, params, template_sha)
    ckpt_dir = checkpoint_root / fingerprint
    resume = last_checkpoint(ckpt_dir)
    config = sft_config(params, ckpt_dir, model_params)

    live = None
    callbacks = [EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience)]
    if ctx.is_main:  # one writer of metrics/train
        metrics_dir.mkdir(parents=True, exist_ok=True)
        live = Live(dir=str(metrics_dir), resume=resume is not None, save_dvc_exp=False, dvcyaml=None)
        callbacks.append(_dvclive_callback(live))
    trainer = sft_trainer(
        model=model, args=config, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        callbacks=callbacks,
    )
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - start
    final_eval = trainer.evaluate()
    # one record per process, in rank order (accelerate's gather returns the list as is in a one-process run)
    ranks = gather_object([{"rank": ctx.rank, "pid": os.getpid(), "device": str(trainer.args.device),
                            "steps": trainer.state.global_step, "train_seconds": round(seconds, 2)}])

    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_points = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    best_step, best_eval = min(eval_points, key=lambda x: x[1]) if eval_points else (None, final_eval["eval_loss"])
    recent_train = sum(train_losses[-3:]) / len(train_losses[-3:]) if train_losses else float("nan")
    gap = final_eval["eval_loss"] - recent_train
    summary = {
        "train_loss": recent_train,
        "eval_loss": final_eval["eval_loss"],
        "best_eval_loss": best_eval,
        "best_step": best_step,
        "last_step": trainer.state.global_step,
        "train_eval_gap": gap,
        "overfit_flag": bool(gap > params.gap_threshold),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else 0,
        "train_examples": len(train_ds),
        "train_tokens_per_epoch": n_train_tokens,
        "train_seconds": seconds,
        "train_samples_per_s": result.metrics.get("train_samples_per_second", 0.0),
        "perplexity_val": math.exp(min(final_eval["eval_loss"], 50)),
        "template_sha256": template_sha,
        "world_size": ctx.world_size,
        "distributed": params.distributed,
        "load_in_4bit": model_params.load_in_4bit,
        "ranks": ranks,
    }
    save_adapter(trainer, tokenizer, adapter_dir, model_params=model_params, lora=lora, params=params,
                 summary=summary, data_files=data_files, fingerprint=fingerprint, is_main=ctx.is_main)
    if not ctx.is_main:
        return None
    for key in ("train_loss", "eval_loss", "best_eval_loss", "train_eval_gap", "overfit_flag", "best_step",
                "last_step", "resumed_from_step", "train_seconds", "world_size"):
        live.summary[key] = summary[key]
    live.make_summary()
    live.end()
    # The adapter is safely in place: the checkpoints of this run are no longer needed for resuming.
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return summary


def save_adapter(trainer, tokenizer, adapter_dir: Path, *, model_params: ModelParams, lora: LoraParams,
                 params: TrainParams, summary: dict, data_files: list[Path], fingerprint: str,
                 is_main: bool = True) -> None:
    # Under FSDP the LoRA weights are sharded: gathering them is collective (every rank takes part), then the
    # main process writes them as a plain PEFT adapter. Under DDP every rank holds them all already.
    state_dict = None
    if getattr(trainer, "is_fsdp_enabled", False):
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return
    data = {str(p): file_sha256(p) for p in data_files}
    with atomic_dir(adapter_dir) as tmp:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "slmforge_adapter.json", {
            "base_model": model_params.hub_id, "model": as_dict(model_params), "lora": as_dict(lora),
            "train": as_dict(params), "data_sha256": data, "run_fingerprint": fingerprint,
            "template_sha256": summary["template_sha256"], "metrics": summary,
        })
        atomic_write_text(Path(tmp) / "README.md", model_card(model_params, lora, params, summary, data))


def model_card(model_params: ModelParams, lora: LoraParams, params: TrainParams, summary: dict,
               data: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in summary.items() if k not in ("template_sha256", "ranks"))
    files = "\n".join(f"- `{name}`: sha256 `{sha[:16]}…`" for name, sha in data.items())
    return f"""---
base_model: {model_params.hub_id}
library_name: peft
pipeline_tag: text-generation
tags: [slmforge, qlora, lora, sft, trl]
---

# slmforge adapter: {model_params.name}, LoRA r={lora.r}

A QLoRA adapter (NF4 4-bit base, double quantisation) trained by slmforge's `train` stage with TRL's
SFTTrainer: loss on assistant tokens only, packed examples kept apart by position ids.

Load it with plain PEFT:

```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("models/adapters/<domain>")
```

## Base model
`{model_params.hub_id}` (slmforge preset `{model_params.name}`, source `{model_params.source}`).

## Data
{files}

## Parameters
- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, target modules {lora.target_modules}
- Training profile `{params.profile}`: epochs={params.epochs}, lr={params.lr}, {params.scheduler} schedule,
  warmup {params.warmup_ratio}, batch {params.batch_size} x accumulation {params.grad_accum},
  max length {params.max_seq_len}, packing={params.packing}, seed={params.seed}

## Training metrics
| metric | value |
|---|---|
{rows}

Template fingerprint: `{summary['template_sha256']}`. Evaluation against the base model is in `reports/`
and `metrics/eval/<domain>.json` of the run that produced this adapter.
"""
