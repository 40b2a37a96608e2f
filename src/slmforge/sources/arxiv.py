"""arXiv export API collector: titles and abstracts of a search as documents, read from Atom with feedparser."""

from __future__ import annotations

import io
import json
import time
import xml.sax
from collections.abc import Callable

import feedparser
import requests
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.params import ArxivSourceParams
from slmforge.sources import http
from slmforge.sources.records import arxiv_document, now_iso

SOURCE = "arxiv"
WHERE = "sources.arxiv"


def search_query(params: ArxivSourceParams) -> str:
    """The API's search_query: the query, ANDed with the categories ORed together."""
    if not params.categories:
        return params.query
    return f"({params.query}) AND ({' OR '.join(f'cat:{c}' for c in params.categories)})"


def parse_feed(response: requests.Response) -> feedparser.FeedParserDict:
    # A stream, not response.text: feedparser takes a str that looks like a URL or a path for one and fetches
    # or opens it; and from bytes it reads the encoding the XML declares.
    feed = feedparser.parse(io.BytesIO(response.content))
    # feedparser is lenient: XML it cannot read strictly (a body cut short) still yields the entries before the
    # cut, silently. arXiv always sends well-formed XML, so a syntax error means a damaged body: ValueError, so
    # the shared GET retries it.
    if feed.get("bozo") and isinstance(feed.get("bozo_exception"), xml.sax.SAXException):
        raise ValueError(f"not well-formed Atom: {feed.bozo_exception}")
    if "opensearch_totalresults" not in feed.feed and not feed.entries:
        raise ValueError("not an arXiv Atom feed (no opensearch:totalResults)")
    return feed


def error_entry(feed: feedparser.FeedParserDict) -> str | None:
    """The message of the error entry the API sends instead of results (its id holds `api/errors`), if any."""
    for entry in feed.entries:
        if "api/errors" in entry.get("id", ""):
            return " ".join(entry.get("summary", "unknown error").split())
    return None


def api_error(response: requests.Response) -> str:
    """An error response's detail: arXiv answers a bad query with a 400 carrying the same Atom error entry."""
    try:
        message = error_entry(feedparser.parse(io.BytesIO(response.content)))
    except Exception:  # a detail for a message: never worth failing over
        message = None
    return message or http.body_excerpt(response)


def entry_dict(entry: feedparser.FeedParserDict) -> dict:
    """A feedparser entry as the plain dict `arxiv_document` reads (the shape stored in data/sample/arxiv.jsonl)."""
    abs_url = entry.get("id", "")
    if "/abs/" not in abs_url:
        raise ValueError(f"entry id {abs_url!r} is not an arXiv abstract URL")
    if not (entry.get("title") or "").strip() or not (entry.get("summary") or "").strip():
        raise ValueError("entry without a title or an abstract")
    return {
        "id": abs_url, "title": entry["title"], "summary": entry["summary"],
        "authors": [{"name": a.get("name")} for a in entry.get("authors", [])],
        "published": entry.get("published"), "updated": entry.get("updated"),
        "categories": [t["term"] for t in entry.get("tags", []) if t.get("term")],
        "primary_category": (entry.get("arxiv_primary_category") or {}).get("term"),
    }


def collect(params: ArxivSourceParams, *, run_id: str, quarantine: list[dict], stats: dict,
            sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Documents from the search, page by page, until totalResults or max_records is reached."""
    stats.update(calls=0, retries=0, pages=0, total_results=None, empty_page_retries=0, duplicates=0)
    query = search_query(params)
    prov = {"source": SOURCE, "query": f"arxiv export api: {query}", "fetched_at": now_iso(), "run_id": run_id}
    session = http.new_session()
    records: list[dict] = []
    seen: set[str] = set()
    total = 0  # the largest totalResults any page reported
    start = 0
    empty_in_a_row = 0
    bar = tqdm(total=params.max_records or None, unit="rec", desc=f"collect {SOURCE}", mininterval=1.0)
    try:
        while True:
            if stats["calls"]:
                sleep(params.delay_s)  # arXiv's terms: one call every 3 s, or the client gets blocked
            feed = http.get(session, params.http.base_url,
                            {"search_query": query, "start": start, "max_results": params.page_size,
                             "sortBy": params.sort_by, "sortOrder": params.sort_order},
                            params.http, stats, where=WHERE, parse=parse_feed, describe_error=api_error, sleep=sleep)
            stats["pages"] += 1
            # Decision: an error entry stops the pull rather than skipping the page, because arXiv sends one
            # only for a query it cannot run (bad syntax, bad start or max_results), which no retry fixes.
            message = error_entry(feed)
            if message:
                raise UserError(f"arXiv API error: {message}: fix {WHERE}.query or categories in conf/")
            total = max(total, int(feed.feed.get("opensearch_totalresults") or 0))
            stats["total_results"] = total
            if not feed.entries:
                # arXiv now and then answers a page inside a result set it has already counted with no entries
                # (and totalResults 0); asking again gets the page. Past the count, an empty page is the end.
                if start < total and empty_in_a_row < params.http.max_retries:
                    empty_in_a_row += 1
                    stats["empty_page_retries"] += 1
                    continue
                if start < total:
                    stats["stopped"] = f"empty pages at start={start} of {total} results: kept what was pulled"
                break
            empty_in_a_row = 0
            for i, entry in enumerate(feed.entries):
                try:
                    rec = arxiv_document(entry_dict(entry), **prov)
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    quarantine.append({"source": SOURCE, "item": entry.get("id") or start + i,
                                       "reason": f"bad entry: {type(exc).__name__}: {exc}",
                                       "raw": json.dumps(entry, default=str)[:500]})
                    continue
                # Results shift between pages when papers are added during a pull (sort by date): skip repeats.
                if rec["id"] in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(rec["id"])
                records.append(rec)
                bar.update(1)
                if params.max_records and len(records) >= params.max_records:
                    stats["capped_at"] = params.max_records
                    return records
            start += len(feed.entries)
            if start >= total:
                break
    finally:
        bar.close()
    return records
