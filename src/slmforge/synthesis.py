"""Synthetic Q&A from documents (the seed's Claude-made pairs from papers): N pairs a document, each carrying its
citation, schema-validated by the oracle client, de-duplicated, and cached like every oracle answer."""

from __future__ import annotations

import hashlib
from collections import Counter

from slmforge.oracle.client import Oracle
from slmforge.oracle.prompts import synth_request
from slmforge.params import SynthesizeParams
from slmforge.row_identity import question_key  # the same question key split groups exact duplicates by


def citation(doc: dict) -> dict:
    meta = doc.get("meta") or {}
    arxiv_id = doc["id"].split(":", 1)[1] if doc["id"].startswith("arxiv:") else meta.get("arxiv_id")
    return {"title": meta.get("title") or (doc.get("text") or "").split("\n", 1)[0][:200], "arxiv_id": arxiv_id,
            "url": (doc.get("provenance") or {}).get("url"), "authors": meta.get("authors", [])}


def documents(records: list[dict], params: SynthesizeParams) -> tuple[list[dict], int]:
    """(the documents asked about, in id order and capped by max_documents; how many the cap left out)."""
    docs = sorted((r for r in records if r.get("kind") == "document"), key=lambda r: r["id"])
    skipped = len(docs) - params.max_documents if params.max_documents and len(docs) > params.max_documents else 0
    return (docs[:params.max_documents] if params.max_documents else docs), skipped


def synth_requests(records: list[dict], params: SynthesizeParams, max_tokens: int) -> list:
    return [synth_request(d, params.pairs_per_document, params.max_document_chars, max_tokens)
            for d in documents(records, params)[0]]


def has_documents(records: list[dict]) -> bool:
    return any(r.get("kind") == "document" for r in records)


def no_document_metrics() -> dict:
    """The metrics of a run with no document to ask about: no oracle opened, no model loaded, no call made."""
    return {"documents": 0, "pairs": 0,
            "oracle": {"calls": 0, "cache_hits": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}}


def synthesize(records: list[dict], oracle: Oracle, params: SynthesizeParams) -> tuple[list[dict], dict]:
    """Pair records made from every `document` record (none: an empty list, and the stage passes through)."""
    docs, skipped = documents(records, params)
    requests = synth_requests(docs, params, oracle.params.max_tokens)
    answers = oracle.ask(requests, "synthesize") if docs else []
    pairs, seen, dropped = [], set(), Counter()
    for doc, ans in zip(docs, answers):
        if ans is None:
            dropped["oracle_failure"] += 1
            continue
        cite = citation(doc)
        for k, qa in enumerate(ans["pairs"]):
            question, answer = qa["question"].strip(), qa["answer"].strip()
            key = question_key(question)
            if key in seen:  # the same question twice (a small model often repeats itself) teaches nothing
                dropped["duplicate_question"] += 1
                continue
            if len(answer) < params.min_answer_chars:
                dropped["answer_too_short"] += 1
                continue
            seen.add(key)
            digest = hashlib.sha256(f"{question}\x00{answer}".encode()).hexdigest()[:10]
            pairs.append({
                "id": f"synthetic:{doc['id']}:{k}:{digest}", "source": doc.get("source", "synthetic"),
                "kind": "pair", "prompt": question, "response": answer, "text": "",
                "meta": {"origin": "synthetic", "document_id": doc["id"], "citation": cite,
                         "oracle": {"backend": oracle.backend.name, "model": oracle.backend.model_id()}},
                "provenance": {**(doc.get("provenance") or {}), "derived_from": doc["id"]},
            })
    metrics = {"documents": len(docs), "documents_skipped_by_cap": skipped, "pairs": len(pairs),
               "pairs_asked": len(docs) * params.pairs_per_document, "dropped": dict(sorted(dropped.items())),
               **oracle.metrics()}
    return pairs, metrics
