"""Collectors, one module per source; `COLLECTORS` maps a source's `kind` in params to its function.

Each collector returns raw records in the contract of design.md:
{id, source, kind: "pair"|"document", prompt, response, text, meta, provenance{query, url, fetched_at, run_id}}.
"""

from slmforge.sources import sample

COLLECTORS = {
    "sample": sample.collect,
}
