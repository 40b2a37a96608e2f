"""QLoRA supervised fine-tuning with TRL: assistant-only loss, packing, early stopping, resumable checkpoints.

Rank-aware: under `accelerate launch` (train.distributed) every process trains its share of the rows and only the
main process writes the adapter, the dvclive metrics and the summary.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

from slmforge.adapter_folder import ADAPTER_CARD, file_sha256, model_card, save_folder
from slmforge.chat_tokens import build_dataset, epoch_rounds, pack_rounds
from slmforge.finetune import (add_lora, close_live, dvclive_callback, history_summary, last_step_evaluation,
                               open_live, remove_checkpoints, trainer_arguments)
from slmforge.params import LoraParams, ModelParams, TrainParams, as_dict
from slmforge.templates import check_template, template_fingerprint


# --- fingerprints -------------------------------------------------------------------------------

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

def rows_seen_once(train_rows: list[dict], params: TrainParams, n: int) -> list[dict]:
    """Up to n training rows that an epoch shows exactly once (origin_weights repeat facts several times and
    leave part of a fractional origin out), ranked by a seeded hash: the training loss the validation loss is
    compared with, so a gap means the rows were learnt, not that they were shown six times."""
    import hashlib
    from collections import Counter

    if params.max_train_examples:
        train_rows = train_rows[: params.max_train_examples]
    seen = Counter(r["id"] for chosen in epoch_rounds(train_rows, params.origin_weights, params.seed) for r in chosen)
    once = [r for r in train_rows if seen[r["id"]] == 1]
    rank = lambda r: hashlib.sha256(f"{params.seed}:gap:{r['id']}".encode()).hexdigest()  # noqa: E731
    return sorted(once, key=rank)[:n]


def training_datasets(train_rows: list[dict], val_rows: list[dict], tokenizer, params: TrainParams,
                      template_kwargs: dict | None = None, accounting: dict | None = None,
                      stats: dict | None = None):
    """(train, val) datasets of input_ids and assistant-only labels; train packed when params.packing.
    `accounting`, when given, is filled with what became of every row (`row_accounting`); `stats` (a dict)
    receives the tokenisation counts of each side under "train" and "val"."""
    rows_in = train_rows
    counts = {"train": Counter(), "val": Counter()}
    if params.max_train_examples:
        train_rows = train_rows[: params.max_train_examples]
    fates: dict[str, set] = {}
    if params.packing:
        train_ds = pack_rounds(train_rows, tokenizer, params.max_seq_len, params.origin_weights, params.seed, fates,
                               template_kwargs=template_kwargs, stats=counts["train"])
    else:
        train_ds = build_dataset([r for chosen in epoch_rounds(train_rows, params.origin_weights, params.seed)
                                  for r in chosen], tokenizer, params.max_seq_len, fates,
                                 template_kwargs=template_kwargs, stats=counts["train"])
    val_fates: dict[str, set] = {}
    val_ds = build_dataset(val_rows, tokenizer, params.max_seq_len, val_fates, template_kwargs=template_kwargs,
                           stats=counts["val"])
    if accounting is not None:
        picked = {r["id"] for chosen in epoch_rounds(train_rows, params.origin_weights, params.seed) for r in chosen}
        accounting["train"] = row_accounting(rows_in, picked, fates, {
            "max_train_examples": len(rows_in) - len(train_rows),
            "origin_weight": sum(r["id"] not in picked for r in train_rows)})  # weight 0, or outside its fraction
        accounting["val"] = row_accounting(val_rows, {r["id"] for r in val_rows}, val_fates, {})
    if stats is not None:
        for side, c in counts.items():
            stats[side] = {k: int(c[k]) for k in ("rows", "truncated", "dropped_no_answer_left", "context_only_turns")}
    return train_ds, val_ds


def row_accounting(rows: list[dict], picked: set, fates: dict[str, set], dropped: dict[str, int]) -> dict:
    """What became of `rows`, as every stage before train accounts for its records: rows in = rows used + rows
    dropped (by reason). `picked`: the ids that went into the examples; `fates`: build_dataset's cuts."""
    lost = set().union(*(ids for fate, ids in fates.items() if fate != "truncated"))
    dropped = {**dropped, **{fate: len(ids) for fate, ids in fates.items() if fate != "truncated"}}
    dropped = {k: v for k, v in sorted(dropped.items()) if v}
    used = len(picked - lost)
    return {"rows_in": len(rows), "rows_used": used, "dropped": dropped,
            "truncated": len(fates.get("truncated", set()) - lost),  # used, with their end cut by max_seq_len
            "accounting_ok": len(rows) == used + sum(dropped.values())}


def sft_config(params: TrainParams, output_dir: Path, model_params: ModelParams, loss_kernel: str = "model"):
    """The SFTConfig of a run (the train stage's and the benchmark's: one place): the kit's trainer arguments
    plus what is SFT's own; `loss_kernel` as resolved by slmforge.gpu.resolve_loss_kernel."""
    import torch
    from trl import SFTConfig

    from slmforge.distributed import context

    ctx = context()
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        **trainer_arguments(params, output_dir, model_params, scheduler=params.scheduler, save_total_limit=2),
        max_length=None if params.packing else params.max_seq_len,  # pack_rounds truncated and packed already
        # Rows are packed by pack_rounds already; padding-free collation turns their seq_lengths into
        # position_ids, which keep packed examples apart in attention (TRL passes use_cache=False).
        packing=False,
        padding_free=params.packing,
        # Off by default (small models on CPU: recomputation costs more than the memory saves); train=gpu_24gb
        # turns it on, non-reentrant so the frozen 4-bit inputs need not require gradients.
        activation_checkpointing=params.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        use_liger_kernel=loss_kernel == "liger",
        dataset_num_proc=None,
        disable_tqdm=not ctx.is_main,
        # Several CPU processes talk over gloo (accelerate would pick MPI where torch has it); GPUs use NCCL.
        ddp_backend="gloo" if ctx.distributed and not on_gpu else None,
        ddp_find_unused_parameters=False if ctx.distributed else None,  # every LoRA weight gets a gradient
    )


def sft_trainer(loss_kernel: str | None = None, **kwargs):
    """TRL's SFTTrainer, with the model's own loss where TRL's fused LM head has no kernel (`loss_kernel` "model";
    None: "trl" on CUDA, "model" elsewhere, as slmforge.gpu.resolve_loss_kernel("auto") without Liger).

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

    own_loss = (loss_kernel or ("trl" if torch.cuda.is_available() else "model")) == "model"

    class PlainHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not own_loss:
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
          metrics_dir: Path, checkpoint_root: Path) -> dict | None:
    """Train and save the adapter; returns the summary on the main process (its "run": this run's timings and
    processes), None on the others."""
    from accelerate.utils import gather_object
    from transformers import EarlyStoppingCallback, set_seed

    from slmforge.distributed import context
    from slmforge.gpu import plan_run
    from slmforge.modeling import load_base, set_threads

    ctx = context()
    set_threads(ctx.local_world_size)  # processes on one machine share its cores
    set_seed(params.seed)
    # Kernels and the peak-memory estimate first: a run that cannot fit the GPU stops here, in one line.
    plan = plan_run(model_params, lora, params, base_dir, fsdp=ctx.fsdp)
    model, tokenizer = load_base(model_params, base_dir, base_json, for_training=True, attention=plan["attention"])
    kwargs = model_params.chat_template_kwargs
    check_template(tokenizer, kwargs)
    # The adapter carries the fingerprint; evaluate, chat and merge check the base's against it.
    template_sha = template_fingerprint(tokenizer, kwargs)

    accounting: dict = {}
    tokenisation: dict = {}
    train_ds, val_ds = training_datasets(train_rows, val_rows, tokenizer, params, kwargs, accounting, tokenisation)
    n_train_tokens = sum(len(x) for x in train_ds["input_ids"])

    model = add_lora(model, lora)

    fingerprint = run_fingerprint(data_files, model_params, lora, params, template_sha)
    ckpt_dir = checkpoint_root / fingerprint
    resume = last_checkpoint(ckpt_dir)
    config = sft_config(params, ckpt_dir, model_params, plan["loss_kernel"])

    live = None
    callbacks = [EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience), last_step_evaluation()]
    if ctx.is_main:  # one writer of metrics/train
        live = open_live(metrics_dir, resume=resume is not None)
        callbacks.append(dvclive_callback(live))
    trainer = sft_trainer(
        loss_kernel=plan["loss_kernel"], model=model, args=config, train_dataset=train_ds, eval_dataset=val_ds,
        processing_class=tokenizer, callbacks=callbacks,
    )
    start = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - start
    # A copy: the evaluations below append to the log. It ends with the last step's evaluation, made before the
    # Trainer restored the best checkpoint.
    history = list(trainer.state.log_history)
    final_eval = trainer.evaluate()  # the best checkpoint: the adapter that is saved
    # The gap on as many rows seen once as there are validation rows, by the same model and the same evaluation.
    once = rows_seen_once(train_rows, params, len(val_rows))
    once_ds = build_dataset(once, tokenizer, params.max_seq_len) if once else None
    trainer.remove_callback(EarlyStoppingCallback)  # training is over; it would only warn about the prefix below
    once_eval = trainer.evaluate(eval_dataset=once_ds, metric_key_prefix="train_once") if once_ds else {}
    # one record per process, in rank order (accelerate's gather returns the list as is in a one-process run)
    ranks = gather_object([{"rank": ctx.rank, "pid": os.getpid(), "device": str(trainer.args.device),
                            "steps": trainer.state.global_step, "train_seconds": round(seconds, 2)}])

    h = history_summary(history, final_eval["eval_loss"], trainer.state.global_step)
    once_loss = once_eval.get("train_once_loss")
    gap = None if once_loss is None else final_eval["eval_loss"] - once_loss
    summary = {
        "train_loss": h["train_loss"],  # the running loss of the last logged steps (dropout on, repeats included)
        "eval_loss": final_eval["eval_loss"],  # of the saved adapter (the best checkpoint)
        "best_eval_loss": h["best_eval_loss"],
        "best_step": h["best_step"],
        "last_eval_loss": h["last_eval_loss"],  # at the last step, before the best checkpoint was restored
        "last_eval_step": h["last_eval_step"],
        "last_minus_best_eval_loss": h["last_eval_loss"] - h["best_eval_loss"],
        "last_step": trainer.state.global_step,
        "train_once_loss": once_loss,  # the saved adapter's loss on training rows an epoch shows once
        "train_once_rows": len(once),
        "train_eval_gap": gap,  # validation loss minus train_once_loss, same model, same evaluation
        "overfit_flag": bool(gap is not None and gap > params.gap_threshold),
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "train_examples": len(train_ds),
        "train_tokens_per_epoch": n_train_tokens,
        "rows": accounting,  # train and val rows in = used + dropped (max_train_examples, origin_weight, truncation)
        "perplexity_val": math.exp(min(final_eval["eval_loss"], 50)),
        "template_sha256": template_sha,
        "world_size": ctx.world_size,
        "distributed": params.distributed,
        "load_in_4bit": model_params.load_in_4bit,
        # rows longer than max_seq_len are cut here (chatml no longer knows the model): counted per side
        "tokenisation": tokenisation,
        **plan,
    }
    # Times, process ids and devices say how this run went, not what it made: they stay out of the adapter and
    # of metrics/train (DVC outputs) and go to the stage's run facts.
    run_facts = {"resumed_from_step": int(resume.name.split("-")[-1]) if resume else 0,
                 "train_seconds": round(seconds, 2),
                 "train_samples_per_s": result.metrics.get("train_samples_per_second", 0.0), "ranks": ranks,
                 "peak_gpu_memory_gb": peak_gpu_memory_gb()}
    save_adapter(trainer, tokenizer, adapter_dir, model_params=model_params, lora=lora, params=params,
                 summary=summary, data_files=data_files, fingerprint=fingerprint, is_main=ctx.is_main)
    if not ctx.is_main:
        return None
    close_live(live, summary, ("train_loss", "eval_loss", "best_eval_loss", "last_eval_loss", "train_once_loss",
                               "train_eval_gap", "overfit_flag", "stopped_early", "best_step", "last_step",
                               "world_size", "rows"))
    remove_checkpoints(ckpt_dir)  # the adapter is safely in place: the checkpoints are no longer needed
    return {**summary, "run": run_facts}


def peak_gpu_memory_gb() -> float | None:
    """The peak GPU memory this process reserved (what nvidia-smi would show), None without CUDA."""
    import torch

    return round(torch.cuda.max_memory_reserved() / 1e9, 2) if torch.cuda.is_available() else None


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
    card = {"base_model": model_params.hub_id, "model": as_dict(model_params), "lora": as_dict(lora),
            "train": as_dict(params), "data_sha256": data, "run_fingerprint": fingerprint,
            "template_sha256": summary["template_sha256"], "metrics": summary}
    save_folder(trainer.accelerator.unwrap_model(trainer.model), tokenizer, adapter_dir, ADAPTER_CARD, card,
                readme=model_card(model_params, lora, params, summary, data), state_dict=state_dict)
