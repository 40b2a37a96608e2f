"""Batched greedy generation (left padding, KV cache, cached by model, adapter and prompt) and teacher-forced
scoring of reference answers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from slmforge.io import atomic_write_json
from slmforge.templates import render, stop_token_ids
from slmforge.chat_tokens import tokenize_chat


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to (not including) the last assistant turn."""
    last = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
    return row["messages"][:last]


def reference(row: dict) -> str:
    return [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]


def generation_store() -> Path:
    """Generations are kept outside the repository, like the oracle's answers: DVC deletes evaluate's outputs
    before it runs the stage, and a change to the judge or the report must not regenerate anything."""
    from slmforge.oracle.cache import store_dir

    return store_dir().parent / "generations"  # beside the oracle's store: one $SLMFORGE_CACHE for both


GENERATION_VERSION = 2  # part of every key: bump it when generate() changes what it returns for a prompt
# 2: generation stops at every end-of-turn token of the model's generation_config, not only the tokenizer's EOS


def generation_key(model_fingerprint: str, adapter_sha: str | None, prompt: str, max_new_tokens: int) -> str:
    """sha256(model fingerprint, adapter hash, prompt, decoding, code version): greedy decoding, so nothing else
    shapes the answer (library versions and batch composition aside: left-padded batches may move a logit in
    the last digits)."""
    material = {"v": GENERATION_VERSION, "model": model_fingerprint, "adapter": adapter_sha, "prompt": prompt,
                "decoding": {"greedy": True, "max_new_tokens": max_new_tokens}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
             desc: str = "generate", cache_id: tuple[str, str | None] | None = None,
             store: Path | None = None, template_kwargs: dict | None = None) -> list[dict]:
    """Greedy continuations of each conversation: {text, tokens (generated, EOS excluded), eos (whether the
    model ended its answer before max_new_tokens), cached}. Prompts are sorted by length so a batch pads
    little, and padded on the left so every row's last token is its own. With `cache_id` = (model fingerprint,
    adapter sha), answers are read from and written to the generation store. Prompts are rendered with
    `template_kwargs` (model.chat_template_kwargs: Qwen3's thinking off by default)."""
    model.eval()
    kwargs = template_kwargs or {}
    texts = [render(tokenizer, c, kwargs, add_generation_prompt=True) for c in conversations]
    out: list[dict | None] = [None] * len(texts)
    store = store or generation_store()
    keys = [generation_key(*cache_id, t, max_new_tokens) for t in texts] if cache_id else [None] * len(texts)
    for i, key in enumerate(keys):
        path = store / key[:2] / f"{key}.json" if key else None
        if path is not None and path.exists():
            out[i] = {**json.loads(path.read_text()), "cached": True}
    todo = sorted((i for i in range(len(texts)) if out[i] is None), key=lambda i: len(texts[i]))
    stops = stop_token_ids(model, tokenizer)  # Llama 3.x's <|eot_id|>, Gemma's <end_of_turn>, besides the EOS
    eos_ids = set(stops)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(todo), batch_size), desc=desc, unit="batch", disable=not todo):
            idx = todo[start: start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            new = gen[:, enc["input_ids"].shape[1]:].tolist()
            for j, i in enumerate(idx):
                ids = new[j]
                stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                answer = {"text": tokenizer.decode(ids[:stop], skip_special_tokens=True).strip(),
                          "tokens": len(ids) if stop is None else stop, "eos": stop is not None}
                if keys[i]:
                    atomic_write_json(store / keys[i][:2] / f"{keys[i]}.json", answer)
                out[i] = {**answer, "cached": False}
    finally:
        tokenizer.padding_side = old_side
    return out  # type: ignore[return-value]


@torch.no_grad()
def score_references(model, tokenizer, rows: list[dict], max_len: int, batch_size: int,
                     desc: str = "score", template_kwargs: dict | None = None) -> list[dict]:
    """Per item: summed negative log-likelihood, token count and correct argmax predictions of the
    reference answer (assistant tokens only), under teacher forcing; `truncated` when the row is longer than
    max_len (the reference is scored on what fits)."""
    from collections import Counter

    model.eval()
    examples, cut = [], []
    for r in rows:
        stats = Counter()
        examples.append(tokenize_chat(tokenizer, r["messages"], max_len, template_kwargs, stats))
        cut.append(bool(stats["truncated"]))
    results: list[dict] = [{}] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(examples[i]["input_ids"]))
    pad = tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start: start + batch_size]
        width = max(len(examples[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            n = len(examples[i]["input_ids"])
            ids[j, :n] = torch.tensor(examples[i]["input_ids"])
            labels[j, :n] = torch.tensor(examples[i]["labels"])
            mask[j, :n] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       use_cache=False).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels,
                                                ignore_index=-100, reduction="none")
        valid = shift_labels != -100
        correct = (shift_logits.argmax(-1) == shift_labels) & valid
        for j, i in enumerate(idx):
            results[i] = {"nll": float(nll[j][valid[j]].sum()), "tokens": int(valid[j].sum()),
                          "correct": int(correct[j].sum()), "truncated": cut[i]}
    return results
