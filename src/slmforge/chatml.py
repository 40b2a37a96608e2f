"""Raw pair records to chat rows ({id, source, messages, meta, provenance}), with accounting."""

from __future__ import annotations

from collections import Counter

from slmforge.params import ChatmlParams


def to_messages(rec: dict, system_prompt: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": rec["prompt"].strip()})
    messages.append({"role": "assistant", "content": rec["response"].strip()})
    return messages


def convert(records: list[dict], params: ChatmlParams) -> tuple[list[dict], dict]:
    """Rows for every record of a kind in params.kinds that has a prompt and a response; the metrics say
    what was converted and why anything was not (documents wait for the synthesize stage)."""
    rows, skipped = [], Counter()
    for rec in records:
        if rec.get("kind") not in params.kinds:
            skipped[f"kind_{rec.get('kind')}"] += 1
            continue
        if not (rec.get("prompt") or "").strip() or not (rec.get("response") or "").strip():
            skipped["empty_prompt_or_response"] += 1
            continue
        rows.append({"id": rec["id"], "source": rec["source"], "messages": to_messages(rec, params.system_prompt),
                     "meta": rec.get("meta", {}), "provenance": rec.get("provenance", {})})
    metrics = {
        "records_in": len(records), "rows_out": len(rows), "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "rows_by_origin": dict(sorted(Counter(r["meta"].get("origin", r["source"]) for r in rows).items())),
    }
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"]
    return rows, metrics
