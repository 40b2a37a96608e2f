"""Cleaned pair records to chat rows ({id, source, messages, meta, provenance}) through per-origin templates,
with over-long examples truncated or dropped and a token-length histogram, all accounted for."""

from __future__ import annotations

from collections import Counter

import numpy as np

from slmforge.io import UserError
from slmforge.params import ChatmlParams


def to_messages(rec: dict, template: dict[str, str], origin: str) -> list[dict]:
    fields = {**(rec.get("meta") or {}), "prompt": (rec.get("prompt") or "").strip(),
                      "response": (rec.get("response") or "").strip(), "text": (rec.get("text") or "").strip()}
    try:
        user = template["user"].format_map(fields)
    except KeyError as exc:
        raise UserError(f"params.yaml: chatml.templates.{origin}.user names {{{exc.args[0]}}}, which record "
                        f"{rec.get('id')} does not have (fields: prompt, response, text and meta keys)") from None
    messages = [{"role": "system", "content": template["system"]}] if template["system"] else []
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": fields["response"]})
    return messages


def n_tokens(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def fit(tokenizer, messages: list[dict], max_tokens: int) -> list[dict] | None:
    """The messages with the assistant's reply cut (at a token boundary) so the whole example fits in
    max_tokens, or None when even the prompt does not fit."""
    prompt_only = n_tokens(tokenizer, messages[:-1] + [{"role": "assistant", "content": ""}])
    reply_ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    budget = max_tokens - prompt_only
    while budget > 0:
        cut = messages[:-1] + [{"role": "assistant", "content": tokenizer.decode(reply_ids[:budget]).rstrip()}]
        if n_tokens(tokenizer, cut) <= max_tokens:  # decode + re-encode can merge tokens differently: check
            return cut
        budget -= 4
    return None


def histogram(lengths: list[int], bins: list[int]) -> dict[str, int]:
    """Counts of lengths at or under each edge ("le_0064") and over the last ("le_inf"); zero-padded so the
    keys sort in order where JSON is written with sorted keys (dvc metrics show)."""
    edges = sorted(bins)
    width = len(str(edges[-1]))
    keys = [f"le_{e:0{width}d}" for e in edges] + ["le_inf"]
    counts = Counter()
    for n in lengths:
        counts[next((k for k, e in zip(keys, edges) if n <= e), keys[-1])] += 1
    return {k: counts.get(k, 0) for k in keys}


def convert(records: list[dict], params: ChatmlParams, tokenizer) -> tuple[list[dict], dict]:
    """Rows for every record of a kind in params.kinds; the metrics say what was converted, truncated or
    skipped and why (documents wait for the synthesize stage)."""
    if params.overflow not in ("truncate", "drop"):
        raise UserError(f"params.yaml: chatml.overflow must be truncate or drop, got {params.overflow!r}")
    for origin, template in params.templates.items():
        if set(template) != {"system", "user"}:
            raise UserError(f"params.yaml: chatml.templates.{origin} needs exactly the keys system and user")
    if "default" not in params.templates:
        raise UserError("params.yaml: chatml.templates needs a `default` template for other origins")
    rows, skipped, truncated, lengths = [], Counter(), 0, []
    for rec in records:
        if rec.get("kind") not in params.kinds:
            skipped[f"kind_{rec.get('kind')}"] += 1
            continue
        if not (rec.get("prompt") or "").strip() or not (rec.get("response") or "").strip():
            skipped["empty_prompt_or_response"] += 1
            continue
        origin = (rec.get("meta") or {}).get("origin", rec.get("source"))
        template = params.templates.get(origin, params.templates["default"])
        messages = to_messages(rec, template, origin if origin in params.templates else "default")
        length, meta = n_tokens(tokenizer, messages), {**rec.get("meta", {})}
        if length > params.max_tokens:
            fitted = fit(tokenizer, messages, params.max_tokens) if params.overflow == "truncate" else None
            if fitted is None:
                skipped["over_length" if params.overflow == "drop" else "prompt_over_length"] += 1
                continue
            meta["truncated_from_tokens"] = length
            messages, length, truncated = fitted, n_tokens(tokenizer, fitted), truncated + 1
        lengths.append(length)
        rows.append({"id": rec["id"], "source": rec["source"], "messages": messages,
                     "meta": {**meta, "tokens": length}, "provenance": rec.get("provenance", {})})
    metrics = {
        "records_in": len(records), "rows_out": len(rows), "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())), "truncated": truncated,
        "rows_by_origin": dict(sorted(Counter(r["meta"].get("origin", r["source"]) for r in rows).items())),
        "tokens": {"histogram": histogram(lengths, params.histogram_bins), "total": int(sum(lengths)),
                   **({"mean": round(float(np.mean(lengths)), 1), "p50": int(np.percentile(lengths, 50)),
                       "p95": int(np.percentile(lengths, 95)), "max": int(max(lengths))} if lengths else {})},
    }
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"]
    return rows, metrics
