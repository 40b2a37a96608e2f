"""The student scorer: the base model with a regression head of one output per rubric dimension, LoRA-tuned
(4-bit base, as the chat adapter) on the oracle's labels, so records can be scored without the oracle.

It reads a record as the oracle did (the transcript `render_row` makes, system turns left out), truncated to
its first `head_tokens` and last `tail_tokens` tokens. Targets are the rubric's scores scaled to 0-1; the head
predicts them with MSE. The folder it writes loads with plain transformers + peft (the head is a
`modules_to_save` of the adapter) and carries `slmforge_scorer.json`: the rubric, the model params and the
truncation, so `slmforge score` needs nothing else.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tqdm.auto import tqdm

from slmforge.adapter_folder import save_folder
from slmforge.finetune import (add_lora, close_live, dvclive_callback, history_summary, open_live, remove_checkpoints,
                               trainer_arguments)
from slmforge.errors import UserError
from slmforge.labeling import overall_score, tier_of
from slmforge.oracle.prompts import render_row
from slmforge.params import ModelParams, RubricParams, ScorerParams, as_dict, build

CARD = "slmforge_scorer.json"


def record_text(row: dict) -> str:
    """What the scorer reads: a chat row's transcript, or a raw record's prompt/response or text."""
    if row.get("messages"):
        return render_row(row)
    parts = [f"USER: {row['prompt'].strip()}" if row.get("prompt") else "",
             f"ASSISTANT: {row['response'].strip()}" if row.get("response") else "", (row.get("text") or "").strip()]
    text = "\n\n".join(p for p in parts if p)
    if not text:
        raise UserError(f"record {row.get('id')!r} has no messages, prompt/response or text to score")
    return text


def encode(tokenizer, text: str, head: int, tail: int) -> list[int]:
    """Token ids of `text`; a long one keeps its first `head` and last `tail` tokens (the question and the
    answer's conclusion carry most of what the rubric asks about)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if len(ids) <= head + tail else ids[:head] + (ids[-tail:] if tail else [])


def targets(label: dict, rubric: RubricParams) -> list[float]:
    span = rubric.max_score - rubric.min_score
    return [(label["scores"][d] - rubric.min_score) / span for d in rubric.dimensions]


def training_examples(rows: list[dict], labels: dict[str, dict], rubric: RubricParams, tokenizer,
                      params: ScorerParams) -> tuple[list[dict], int]:
    """(examples with input_ids and labels, rows left out because the oracle gave them no scores)."""
    out, missing = [], 0
    for row in rows:
        label = labels.get(row["id"])
        if not label or not label.get("scores"):
            missing += 1
            continue
        out.append({"input_ids": encode(tokenizer, record_text(row), params.head_tokens, params.tail_tokens),
                    "labels": targets(label, rubric)})
    return out, missing


def load_scorer_base(model_params: ModelParams, base_dir: Path, base_json: Path, n_outputs: int, for_training: bool):
    """models/base as a sequence-regression model (4-bit NF4 when the params say so) and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from slmforge.modeling import compute_dtype, disable_cpu_repack, quantization_config, resolve_base

    where, revision = resolve_base(base_dir, base_json)
    quant = quantization_config(model_params)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        where, num_labels=n_outputs, problem_type="regression", quantization_config=quant,
        dtype=compute_dtype(model_params.compute_dtype) if quant else torch.float32,
        device_map={"": 0} if torch.cuda.is_available() else {"": "cpu"}, **({"revision": revision} if revision else {}))
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not padding
    if quant is not None and for_training:
        disable_cpu_repack(model)  # design.md: the CPU inference repack silently ruins 4-bit training
    return model, tokenizer


def train_scorer(*, train_rows: list[dict], val_rows: list[dict], labels: dict[str, dict], rubric: RubricParams,
                 model_params: ModelParams, params: ScorerParams, base_dir: Path, base_json: Path, out_dir: Path,
                 metrics_dir: Path, checkpoint_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from slmforge.modeling import set_threads

    set_threads()
    set_seed(params.seed)
    model, tokenizer = load_scorer_base(model_params, base_dir, base_json, len(rubric.dimensions), for_training=True)
    if params.max_train_examples and len(train_rows) > params.max_train_examples:
        train_rows = random.Random(params.seed).sample(train_rows, params.max_train_examples)
    train_ex, train_missing = training_examples(train_rows, labels, rubric, tokenizer, params)
    val_ex, val_missing = training_examples(val_rows, labels, rubric, tokenizer, params)
    if not train_ex or not val_ex:
        raise UserError("the scorer needs oracle scores on train and val rows: run `dvc repro label` "
                        f"(train {len(train_ex)} labelled, val {len(val_ex)})")
    model = add_lora(model, params.lora, task_type="SEQ_CLS")  # SEQ_CLS: the head is saved with the adapter
    with torch.no_grad():  # a zero head starts every score at the scale's bottom, not at a random +-1 (10 points)
        model.base_model.model.score.modules_to_save["default"].weight.zero_()
    args = TrainingArguments(**trainer_arguments(params, checkpoint_dir, model_params, scheduler="cosine",
                                                 save_total_limit=1), remove_unused_columns=False)
    live = open_live(metrics_dir)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(train_ex),
                      eval_dataset=Dataset.from_list(val_ex), data_collator=DataCollatorWithPadding(tokenizer),
                      callbacks=[dvclive_callback(live)])
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    final = trainer.evaluate()
    # the log ends with that last evaluation (of the restored best checkpoint)
    h = history_summary(trainer.state.log_history, final["eval_loss"], trainer.state.global_step)
    summary = {"train_examples": len(train_ex), "val_examples": len(val_ex), "unlabelled_left_out":
               train_missing + val_missing, "eval_mse": final["eval_loss"], "best_eval_mse": h["best_eval_loss"],
               "best_step": h["best_step"], "last_step": trainer.state.global_step}
    close_live(live, summary, ("eval_mse", "best_eval_mse", "best_step", "last_step"))
    save_folder(trainer.model, tokenizer, out_dir, CARD, {
        "base_model": model_params.hub_id, "model": as_dict(model_params), "rubric": as_dict(rubric),
        "dimensions": list(rubric.dimensions), "head_tokens": params.head_tokens,
        "tail_tokens": params.tail_tokens, "scorer": as_dict(params), "metrics": summary})
    remove_checkpoints(checkpoint_dir)
    # The time says how the run went, not what it made: outside the scorer's card and metrics (DVC outputs).
    return {**summary, "run": {"train_seconds": round(seconds, 2)}}


def load_scorer(scorer_dir: Path, base_dir: Path, base_json: Path):
    """(model, tokenizer, card) of a trained scorer: the base in the precision it was trained on, plus the
    adapter and head with plain peft."""
    from peft import PeftModel

    card_path = Path(scorer_dir) / CARD
    if not card_path.exists():
        raise UserError(f"{scorer_dir} has no trained scorer ({CARD} missing): run `dvc repro train_scorer`")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    model_params = build(ModelParams, card["model"], f"{card_path}: model")
    model, tokenizer = load_scorer_base(model_params, Path(base_dir), Path(base_json), len(card["dimensions"]),
                                        for_training=False)
    model = PeftModel.from_pretrained(model, str(scorer_dir)).eval()
    return model, tokenizer, card


def predict(model, tokenizer, rows: list[dict], card: dict, batch_size: int, desc: str = "score") -> list[dict]:
    """Per row: {id, scores{dimension}, overall, tier} on the rubric's scale; batched (sorted by length, padded
    on the right: the head reads each row's last real token), with a progress bar."""
    import torch

    rubric = build(RubricParams, card["rubric"], "scorer rubric")
    ids = [encode(tokenizer, record_text(r), card["head_tokens"], card["tail_tokens"]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
    out: list[dict] = [{}] * len(rows)
    span = rubric.max_score - rubric.min_score
    old_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not rows):
            idx = order[start: start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().clamp(0, 1)
            for j, i in enumerate(idx):
                scores = {d: round(rubric.min_score + span * float(v), 3) for d, v in zip(card["dimensions"], logits[j])}
                overall = overall_score(scores, rubric)
                out[i] = {"id": rows[i].get("id"), "scores": scores, "overall": overall, "tier": tier_of(overall, rubric)}
    finally:
        tokenizer.padding_side = old_side
    return out
