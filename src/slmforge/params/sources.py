"""Params of the sources: one dataclass per source kind under `sources.<name>`, picked by its `kind`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CollectCodeParams:
    """The code a source's collect stage depends on (dvc.yaml): a live API names a constant file for both, so a
    code change does not repeat a pull."""
    stage: str  # stages/collect.py
    library: str  # src/slmforge


@dataclass(frozen=True)
class SampleSourceParams:
    kind: str  # "sample"
    watch: str  # every source: the one path DVC watches (its data folder; a constant file for a live API)
    code: CollectCodeParams
    path: str
    files: list[str]
    max_records: int  # 0: no cap


@dataclass(frozen=True)
class HttpParams:
    """How a live source talks to its API: the base URL is configurable so tests point it at 127.0.0.1."""
    base_url: str
    timeout_s: float
    max_retries: int  # attempts after the first, on 429, 5xx, timeouts and truncated bodies
    backoff_s: float  # first wait of the exponential backoff (a Retry-After header or API `backoff` wins)


@dataclass(frozen=True)
class StackExchangeSourceParams:
    kind: str  # "stackexchange"
    watch: str
    code: CollectCodeParams
    http: HttpParams
    site: str  # e.g. stats, datascience, stackoverflow
    tags: list[str]  # questions carrying all of these tags (the API's `tagged`)
    min_score: int  # question score at least this
    accepted_only: bool  # keep only questions with an accepted answer (else accepted, or top answer)
    from_date: str | None  # ISO date, inclusive
    to_date: str | None
    sort: str  # votes | activity | creation
    page_size: int  # at most 100 (the API's limit)
    max_pages: int
    key_env: str  # environment variable holding an optional API key (raises the daily quota)
    max_records: int  # 0: no cap


@dataclass(frozen=True)
class ArxivSourceParams:
    kind: str  # "arxiv"
    watch: str
    code: CollectCodeParams
    http: HttpParams
    query: str  # the export API's search_query terms, e.g. 'abs:"A/B test"'
    categories: list[str]  # ORed together and ANDed with the query, e.g. [stat.ME, stat.AP]
    sort_by: str  # relevance | lastUpdatedDate | submittedDate
    sort_order: str  # ascending | descending
    page_size: int
    delay_s: float  # arXiv asks for 3 s between calls
    max_records: int


@dataclass(frozen=True)
class TweetFilterParams:
    """Seed filters for tweet/reply pairs, applied at collection; each failure is counted by reason."""
    reply_likes: list[int]  # [min, max]
    author_followers: list[int]  # [min, max]
    reply_delay_minutes: list[float]  # [min, max] minutes between tweet and reply
    no_media: bool
    no_url: bool
    chars: list[int]  # [min, max] characters of the reply


@dataclass(frozen=True)
class ApifyParentParams:
    """Fetching the tweets that replies answer when the search did not return them."""
    fetch: str  # ids (a run by the parents' tweet URLs) | conversation (a run by conversation ids) | none
    max_parents: int  # parents asked for in one run at most (0: no cap)
    run_input: dict[str, Any]  # further input of that run (maxItems, ...), merged under the ids


@dataclass(frozen=True)
class ApifySourceParams:
    kind: str  # "apify"
    watch: str
    code: CollectCodeParams
    api_url: str  # Apify API root (https://api.apify.com); tests use 127.0.0.1
    actor: str | None  # actor to run, e.g. apidojo/tweet-scraper; null with dataset_id to read a dataset
    run_input: dict[str, Any]  # the actor's input
    dataset_id: str | None  # read an existing dataset instead of running the actor
    token_env: str  # environment variable holding the API token
    timeout_s: float  # how long to wait for the actor run
    max_retries: int
    filters: TweetFilterParams
    parents: ApifyParentParams
    max_records: int


@dataclass(frozen=True)
class FilesSourceParams:
    kind: str  # "files"
    watch: str
    code: CollectCodeParams
    paths: list[str]  # files or globs, relative to the project root
    format: str  # auto (by suffix) | csv | json | jsonl | parquet | txt
    record_kind: str  # pair | document
    columns: dict[str, str]  # our field (id, prompt, response, text) -> the file's column
    meta_columns: list[str]  # further columns copied into meta
    txt_unit: str  # txt files: file | paragraph | line
    origin: str  # meta.origin of the records (chatml templates and train weights key on it)
    max_record_bytes: int  # a record larger than this is quarantined
    max_records: int


@dataclass(frozen=True)
class HfSourceParams:
    kind: str  # "hf"
    watch: str
    code: CollectCodeParams
    name: str  # a hub dataset id, or a local folder / data file path
    config: str | None
    split: str
    revision: str | None
    record_kind: str  # pair | document
    columns: dict[str, str]
    meta_columns: list[str]
    origin: str
    max_records: int
