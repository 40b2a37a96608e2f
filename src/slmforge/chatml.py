"""Cleaned pair records to chat rows ({id, source, messages, meta, provenance}) through per-origin templates,
with a character-length histogram, all accounted for.

Model-independent on purpose: no tokenizer and no chat template here, so the rows, and every stage after them up to
split, are the same whichever `model` is trained, and two models are compared on the same items. The model's own
length limit is applied where its tokenizer is (train and evaluate tokenise, cut at train.max_seq_len, and count)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from slmforge.errors import UserError
from slmforge.params import ChatmlParams
from slmforge.row_identity import origin_of


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


def n_chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


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


def convert(records: list[dict], params: ChatmlParams) -> tuple[list[dict], dict]:
    """Rows for every record of a kind in params.kinds; the metrics say what was converted or skipped and why
    (documents wait for the synthesize stage)."""
    for origin, template in params.templates.items():
        if set(template) != {"system", "user"}:
            raise UserError(f"params.yaml: chatml.templates.{origin} needs exactly the keys system and user")
    if "default" not in params.templates:
        raise UserError("params.yaml: chatml.templates needs a `default` template for other origins")
    rows, skipped, lengths = [], Counter(), []
    for rec in records:
        if rec.get("kind") not in params.kinds:
            skipped[f"kind_{rec.get('kind')}"] += 1
            continue
        if not (rec.get("prompt") or "").strip() or not (rec.get("response") or "").strip():
            skipped["empty_prompt_or_response"] += 1
            continue
        origin = origin_of(rec)
        template = params.templates.get(origin, params.templates["default"])
        messages = to_messages(rec, template, origin if origin in params.templates else "default")
        length = n_chars(messages)
        lengths.append(length)
        rows.append({"id": rec["id"], "source": rec["source"], "messages": messages,
                     "meta": {**rec.get("meta", {}), "chars": length}, "provenance": rec.get("provenance", {})})
    metrics = {
        "records_in": len(records), "rows_out": len(rows), "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "rows_by_origin": dict(sorted(Counter(origin_of(r) for r in rows).items())),
        "chars": {"histogram": histogram(lengths, params.histogram_bins), "total": int(sum(lengths)),
                   **({"mean": round(float(np.mean(lengths)), 1), "p50": int(np.percentile(lengths, 50)),
                       "p95": int(np.percentile(lengths, 95)), "max": int(max(lengths))} if lengths else {})},
    }
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"]
    return rows, metrics
