"""The embedded sample corpus (data/sample/): StackExchange, tweet and arXiv shapes plus a fact table."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.io import read_jsonl
from slmforge.params import SampleSourceParams
from slmforge.sources.records import arxiv_document, record, stackexchange_pair, tweet_pair


def fact_pairs(fact: dict, **prov) -> list[dict]:
    """One pair record per phrasing of a fact; meta carries what the probes check."""
    out = []
    for i, question in enumerate(fact["phrasings"]):
        out.append(record(
            id=f"sample:facts:{fact['fact_id']}:{i}", kind="pair", prompt=question, response=fact["response"],
            meta={"origin": "facts", "fact_id": fact["fact_id"], "phrasing": i, "answer": fact["answer"],
                  "aliases": fact.get("aliases", []), "topic": fact.get("topic")},
            url=None, **prov,
        ))
    return out


PARSERS = {
    "stackexchange.jsonl": lambda item, **p: [r for r in [stackexchange_pair(item, **p)] if r],
    "tweets.jsonl": lambda item, **p: [tweet_pair(item, **p)],
    "arxiv.jsonl": lambda item, **p: [arxiv_document(item, **p)],
    "facts.jsonl": fact_pairs,
}


def collect(params: SampleSourceParams, *, run_id: str, quarantine: list[dict], stats: dict) -> list[dict]:
    """All records of the sample corpus, in file order; unparseable items go to `quarantine`.

    A local source, not a snapshot: no pull time and no run id in the records (both null), so the same files
    give byte-identical records on every run and machine (`run_id` is part of every collector's signature)."""
    root = Path(params.path)
    records: list[dict] = []
    for name in tqdm(params.files, desc="sample", unit="file", disable=None):
        if name not in PARSERS:
            raise UserError(f"sources.sample.files: no parser for `{name}` (known: {', '.join(PARSERS)})")
        for item in read_jsonl(root / name, quarantine):
            try:
                found = PARSERS[name](item, source="sample", query=f"sample:{name}",
                                      fetched_at=None, run_id=None)
            except (KeyError, TypeError, AttributeError) as exc:
                quarantine.append({"file": str(root / name), "reason": f"bad item: {type(exc).__name__}: {exc}",
                                   "raw": json.dumps(item)[:500]})
                continue
            records.extend(found)
            if params.max_records and len(records) >= params.max_records:
                stats["capped_at"] = params.max_records
                return records[: params.max_records]
    return records
