"""Batched greedy generation (left padding, KV cache) and teacher-forced scoring of reference answers."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from slmforge.training import tokenize_chat


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to (not including) the last assistant turn."""
    last = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
    return row["messages"][:last]


def reference(row: dict) -> str:
    return [m for m in row["messages"] if m["role"] == "assistant"][-1]["content"]


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
             desc: str = "generate") -> list[str]:
    """Greedy continuations of each conversation. Prompts are sorted by length so a batch pads little,
    and padded on the left so every row's last token is its own."""
    model.eval()
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            idx = order[start: start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for j, i in enumerate(idx):
                out[i] = tokenizer.decode(new[j], skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = old_side
    return out


@torch.no_grad()
def score_references(model, tokenizer, rows: list[dict], max_len: int, batch_size: int,
                     desc: str = "score") -> list[dict]:
    """Per item: summed negative log-likelihood, token count and correct argmax predictions of the
    reference answer (assistant tokens only), under teacher forcing."""
    model.eval()
    examples = [tokenize_chat(tokenizer, r["messages"], max_len) for r in rows]
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
                          "correct": int(correct[j].sum())}
    return results
