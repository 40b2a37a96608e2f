"""Collectors, one module per source; `COLLECTORS` maps a source's `kind` in params to its function.

A collector is `collect(params, *, run_id, quarantine, stats) -> list[dict]`: bad input goes to `quarantine`
(with its source, line or item and reason) and what the pull cost or skipped goes to `stats` (both end up in
the stage's outputs), and it returns raw records in the contract of design.md:
{id, source, kind: "pair"|"document", prompt, response, text, meta, provenance{query, url, fetched_at, run_id}}.
"""

from slmforge.sources import apify, arxiv, files, hf, sample, stackexchange

COLLECTORS = {
    "sample": sample.collect,
    "apify": apify.collect,
    "stackexchange": stackexchange.collect,
    "arxiv": arxiv.collect,
    "files": files.collect,
    "hf": hf.collect,
}
