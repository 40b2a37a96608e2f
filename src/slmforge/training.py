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
from collections import Counter
from pathlib import Path

from slmforge.io import UserError, atomic_dir, atomic_write_json, atomic_write_text
from slmforge.params import LoraParams, ModelParams, TrainParams, as_dict
from slmforge.templates import check_template, fit_roles, render, template_fingerprint


# --- tokenisation -------------------------------------------------------------------------------

def tokenize_chat(tokenizer, messages: list[dict], max_len: int, template_kwargs: dict | None = None,
                  stats: Counter | None = None) -> dict:
    """input_ids and labels of one conversation, labels -100 everywhere but the assistant turns.

    The row is the whole conversation rendered once with the model's chat template (slmforge.templates.render).
    An assistant turn's tokens are found by rendering the conversation up to it with the generation prompt, and
    up to and including it: both must be prefixes of the whole (the prefix property, checked for every turn),
    and what lies between (content and end-of-turn) is what the model must learn to produce. This works for any
    chat template, with or without {% generation %} markers. A template that re-renders earlier turns (Qwen3
    drops their <think> blocks) breaks the property for those turns: they stay in the row as context, unlabelled
    and counted (`context_only_turns`), never mislabelled; the last turn must satisfy it.
    `stats` counts truncated rows and context-only turns.
    """
    kwargs = template_kwargs or {}
    messages = fit_roles(messages, tokenizer, kwargs)
    full = render(tokenizer, messages, kwargs, tokenize=True)
    labels = [-100] * len(full)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i in turns:
        start = render(tokenizer, messages[:i], kwargs, add_generation_prompt=True, tokenize=True)
        end = render(tokenizer, messages[: i + 1], kwargs, tokenize=True)
        if full[: len(start)] == start and full[: len(end)] == end and len(end) > len(start):
            labels[len(start): len(end)] = full[len(start): len(end)]
        elif i == turns[-1]:
            raise UserError("chat template renders a prompt differently once the answer follows it; "
                            "assistant-only loss cannot locate the answer tokens")
        elif stats is not None:
            stats["context_only_turns"] += 1
    if stats is not None and len(full) > max_len:
        stats["truncated"] += 1
    return {"input_ids": full[:max_len], "labels": labels[:max_len]}


def tokenize_within(tokenizer, messages: list[dict], max_len: int, template_kwargs: dict | None = None,
                    stats: Counter | None = None) -> tuple[dict, str | None]:
    """tokenize_chat cut to max_len, and what the cut did: None (the conversation fits), "truncated" (answer tokens
    are left) or "answer_truncated_away" (none is left: nothing to learn from, nothing to score). `stats` counts
    the turns kept as context only (tokenize_chat)."""
    turns: Counter = Counter()
    # one token more than fits tells a cut conversation
    example = tokenize_chat(tokenizer, messages, max_len + 1, template_kwargs, turns)
    if stats is not None:
        stats["context_only_turns"] += turns["context_only_turns"]
    if len(example["input_ids"]) <= max_len:
        return example, None
    example = {k: v[:max_len] for k, v in example.items()}
    return example, "truncated" if any(label != -100 for label in example["labels"]) else "answer_truncated_away"


def build_dataset(rows: list[dict], tokenizer, max_len: int, fates: dict[str, set] | None = None, *,
                  template_kwargs: dict | None = None, stats: Counter | None = None):
    """The examples of `rows`; `fates`, when given, collects the ids of rows cut by max_len, by what the cut did
    (a row repeated by origin_weights counts once); `stats` counts rows in, truncated (the end cut by max_len),
    dropped (no answer token left) and context-only turns."""
    from datasets import Dataset

    stats = Counter() if stats is None else stats
    kept = []
    for i, row in enumerate(rows):
        example, fate = tokenize_within(tokenizer, row["messages"], max_len, template_kwargs, stats)
        if fate is None and not any(label != -100 for label in example["labels"]):
            fate = "no_answer_tokens"
        if fate is not None and fates is not None:
            fates.setdefault(fate, set()).add(row.get("id", i))
        stats["rows"] += 1
        stats["truncated"] += fate in ("truncated", "answer_truncated_away")
        # An answer cut off entirely by max_len has nothing to learn from: dropped, and counted above.
        if fate not in ("answer_truncated_away", "no_answer_tokens"):
            kept.append(example)
        else:
            stats["dropped_no_answer_left"] += 1
    return Dataset.from_list(kept)


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


def pack_rounds(rows: list[dict], tokenizer, max_len: int, weights: dict[str, float], seed: int,
                fates: dict[str, set] | None = None, *, template_kwargs: dict | None = None,
                stats: Counter | None = None):
    """Packed training rows in which a repeated example never meets its own copy.

    Packing all copies at once (best-fit decreasing sorts by length) puts identical copies side by side in
    one row, so a fact would be seen k times in one step and then never again. Instead each round of
    `epoch_rounds` is packed on its own; the Trainer's sampler then spreads the rows over the epoch.
    """
    from datasets import concatenate_datasets
    from trl.data_utils import pack_dataset

    return concatenate_datasets([pack_dataset(build_dataset(chosen, tokenizer, max_len, fates,
                                                            template_kwargs=template_kwargs, stats=stats),
                                              max_len, "bfd")
                                 for chosen in epoch_rounds(rows, weights, seed)])


# --- fingerprints -------------------------------------------------------------------------------

def canonical_adapter_config(folder: str | Path) -> None:
    """Sort the module lists of a saved PEFT adapter_config.json. PEFT keeps target_modules (and exclude_modules)
    as a set and writes the set's order, which follows Python's per-process string hash seed: two trainings with
    bit-identical weights wrote two different configs (measured on the tiny profile), and a DVC output must be the
    same bytes for the same adapter."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # PEFT's own layout


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


def _last_step_evaluation():
    from transformers import TrainerCallback

    class EvaluateLastStep(TrainerCallback):
        """Evaluate (and save) at the last step too, whatever eval_steps says: the Trainer restores the best
        checkpoint at the end, so only an evaluation logged before that restore tells how the run ended."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_evaluate = control.should_save = True
            return control

    return EvaluateLastStep()


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


def add_lora(model, lora: LoraParams):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM", bias="none",
    ))


def sft_config(params: TrainParams, output_dir: Path, model_params: ModelParams, loss_kernel: str = "model"):
    """The SFTConfig of a run (the train stage's and the benchmark's: one place); `loss_kernel` as resolved by
    slmforge.gpu.resolve_loss_kernel."""
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
        # Off by default (small models on CPU: recomputation costs more than the memory saves); train=gpu_24gb
        # turns it on, non-reentrant so the frozen 4-bit inputs need not require gradients.
        activation_checkpointing=params.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        use_liger_kernel=loss_kernel == "liger",
        report_to="none",
        dataloader_num_workers=0,
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
    from dvclive import Live
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
    callbacks = [EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience), _last_step_evaluation()]
    if ctx.is_main:  # one writer of metrics/train
        metrics_dir.mkdir(parents=True, exist_ok=True)
        live = Live(dir=str(metrics_dir), resume=resume is not None, save_dvc_exp=False, dvcyaml=None)
        callbacks.append(_dvclive_callback(live))
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

    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_points = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    best_step, best_eval = min(eval_points, key=lambda x: x[1]) if eval_points else (None, final_eval["eval_loss"])
    last_step, last_eval = eval_points[-1] if eval_points else (trainer.state.global_step, final_eval["eval_loss"])
    recent_train = sum(train_losses[-3:]) / len(train_losses[-3:]) if train_losses else float("nan")
    once_loss = once_eval.get("train_once_loss")
    gap = None if once_loss is None else final_eval["eval_loss"] - once_loss
    summary = {
        "train_loss": recent_train,  # the running loss of the last logged steps (dropout on, repeats included)
        "eval_loss": final_eval["eval_loss"],  # of the saved adapter (the best checkpoint)
        "best_eval_loss": best_eval,
        "best_step": best_step,
        "last_eval_loss": last_eval,  # at the last step, before the best checkpoint was restored
        "last_eval_step": last_step,
        "last_minus_best_eval_loss": last_eval - best_eval,
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
    for key in ("train_loss", "eval_loss", "best_eval_loss", "last_eval_loss", "train_once_loss", "train_eval_gap",
                "overfit_flag", "stopped_early", "best_step", "last_step", "world_size", "rows"):
        live.summary[key] = summary[key]
    live.make_summary()
    live.end()
    # The adapter is safely in place: the checkpoints of this run are no longer needed for resuming.
    shutil.rmtree(ckpt_dir, ignore_errors=True)
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
    with atomic_dir(adapter_dir) as tmp:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(tmp, state_dict=state_dict)
        canonical_adapter_config(tmp)
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
                     for k, v in summary.items() if k not in ("template_sha256", "rows", "tokenisation"))
    counts = "\n".join(f"- {part}: {a['rows_in']} rows in, {a['rows_used']} used, dropped {a['dropped'] or 'none'}, "
                       f"{a['truncated']} cut short by max length" for part, a in summary.get("rows", {}).items())
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

## Rows
{counts}

## Training metrics
| metric | value |
|---|---|
{rows}

Template fingerprint: `{summary['template_sha256']}`. Evaluation against the base model is in `reports/`
and `metrics/eval/<domain>.json` of the run that produced this adapter.
"""
