"""StackExchange API 2.3 collector: a site's questions by tags and score, each with its accepted or top answer."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime, time as dtime, timezone

import requests
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.params import StackExchangeSourceParams
from slmforge.sources import http
from slmforge.sources.records import now_iso, stackexchange_pair

SOURCE = "stackexchange"
WHERE = "sources.stackexchange"
MAX_PAGE_SIZE = 100  # the API's limit, both for pagesize and for the ids of one vectorised call


def unix_seconds(value: str | None, key: str, *, end_of_day: bool = False) -> int | None:
    """An ISO date or datetime (UTC unless it says otherwise) as unix seconds; a bare date given as an
    inclusive upper bound means the end of that day."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{WHERE}.{key}: {value!r} is not an ISO date (use YYYY-MM-DD)") from None
    if end_of_day and len(value) == 10:
        when = datetime.combine(when.date(), dtime(23, 59, 59))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def questions_query(params: StackExchangeSourceParams) -> dict:
    """The /questions query of the API, without page and key."""
    if not 1 <= params.page_size <= MAX_PAGE_SIZE:
        raise UserError(f"{WHERE}.page_size: {params.page_size} is outside 1..{MAX_PAGE_SIZE}, the API's limit")
    query = {"site": params.site, "sort": params.sort, "order": "desc", "pagesize": params.page_size,
             "filter": "withbody"}
    if params.tags:
        query["tagged"] = ";".join(params.tags)  # the API ANDs tags given this way
    if params.sort == "votes":
        # `min` bounds the sort field: a score under sort=votes but a date under activity/creation, so it is
        # sent only for votes; the score is also checked on each item below, whatever the sort.
        query["min"] = params.min_score
    fromdate = unix_seconds(params.from_date, "from_date")
    todate = unix_seconds(params.to_date, "to_date", end_of_day=True)
    if fromdate is not None:
        query["fromdate"] = fromdate
    if todate is not None:
        query["todate"] = todate
    return query


def describe(params: StackExchangeSourceParams) -> str:
    """The query in words, for each record's provenance."""
    parts = [f"{params.site} questions"]
    if params.tags:
        parts.append("tagged " + " & ".join(params.tags))
    parts.append(f"score >= {params.min_score}")
    if params.from_date or params.to_date:
        parts.append(f"created {params.from_date or '...'} to {params.to_date or '...'}")
    parts.append(f"sorted by {params.sort}")
    if params.accepted_only:
        parts.append("accepted answers only")
    return "stackexchange api 2.3: " + ", ".join(parts)


def api_error(response: requests.Response) -> str:
    """The API's error wrapper {error_id, error_name, error_message} as one short line."""
    try:
        body = response.json()
    except ValueError:
        return http.body_excerpt(response)
    if isinstance(body, dict) and "error_name" in body:
        return f"{body['error_name']} ({body.get('error_id')}): {body.get('error_message')}"
    return http.body_excerpt(response)


class Api:
    """One pull's link to the API: its session and key, the quota it reports, and the backoff each method owes."""

    def __init__(self, params: StackExchangeSourceParams, stats: dict, sleep: Callable[[float], None]):
        self.params, self.stats, self.sleep = params, stats, sleep
        self.session = http.new_session()
        self.key = os.environ.get(params.key_env) or None  # without a key the quota is 300 calls a day per IP
        self.owed: dict[str, float] = {}

    def get(self, method: str, path: str, query: dict) -> dict:
        # The wrapper's `backoff` asks that *this method* not be called again for that many seconds; calls
        # made before it is over are refused, and repeat offenders get their IP throttled.
        owed = self.owed.pop(method, 0)
        if owed:
            self.stats["backoff_s"] += owed
            self.sleep(owed)
        if self.key:
            query = {**query, "key": self.key}
        body = http.get(self.session, self.params.http.base_url.rstrip("/") + path, query, self.params.http,
                        self.stats, where=WHERE, describe_error=api_error, sleep=self.sleep)
        if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
            raise UserError(f"GET {http.safe_url(self.params.http.base_url + path, {})}: the answer is not the "
                            f"API's wrapper {{items, has_more, ...}}: check {WHERE}.http.base_url")
        for field in ("quota_remaining", "quota_max"):
            if field in body:
                self.stats[field] = body[field]
        if body.get("backoff"):
            self.owed[method] = float(body["backoff"])
        return body

    def quota_spent(self) -> bool:
        if self.stats.get("quota_remaining") != 0:
            return False
        self.stats["stopped"] = (f"quota spent ({self.stats.get('quota_max')} calls a day): kept what was "
                                 f"pulled so far; run again after the daily reset or set {self.params.key_env}")
        return True


def fetch_answers(api: Api, params: StackExchangeSourceParams, ids: list[int]) -> dict[int, list[dict]]:
    """Every answer of these questions, in one vectorised call (paged while has_more), by question id."""
    by_question: dict[int, list[dict]] = {}
    page = 1
    while True:
        body = api.get("answers", f"/questions/{';'.join(str(i) for i in ids)}/answers",
                       {"site": params.site, "filter": "withbody", "sort": "votes", "order": "desc",
                        "pagesize": MAX_PAGE_SIZE, "page": page})
        for answer in body.get("items", []):
            if isinstance(answer, dict) and "question_id" in answer:
                by_question.setdefault(answer["question_id"], []).append(answer)
        if not body.get("has_more") or not body.get("items") or api.quota_spent():
            return by_question
        page += 1


def select(items: list, params: StackExchangeSourceParams, stats: dict, quarantine: list[dict],
           offset: int) -> list[dict]:
    """The page's questions worth an answers call; malformed ones go to quarantine, filtered ones are counted."""
    keep = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("question_id"), int):
            quarantine.append({"source": SOURCE, "item": offset + i, "reason": "item without an integer question_id",
                               "raw": json.dumps(item, default=str)[:500]})
            continue
        if not isinstance(item.get("score", 0), int) or item.get("score", 0) < params.min_score:
            stats["skipped_low_score"] += 1
        elif params.accepted_only and not item.get("accepted_answer_id"):
            stats["skipped_not_accepted"] += 1
        elif item.get("answer_count", 1) == 0:  # spares the answers call a question nobody answered
            stats["skipped_no_answer"] += 1
        else:
            keep.append(item)
    return keep


def collect(params: StackExchangeSourceParams, *, run_id: str, quarantine: list[dict], stats: dict,
            sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Question/answer pairs from the API, page by page, until has_more is false or a cap is reached."""
    stats.update(calls=0, retries=0, pages=0, quota_remaining=None, quota_max=None, backoff_s=0.0,
                 skipped_no_answer=0, skipped_not_accepted=0, skipped_low_score=0)
    query = questions_query(params)
    prov = {"source": SOURCE, "query": describe(params), "fetched_at": now_iso(), "run_id": run_id}
    api = Api(params, stats, sleep)
    records: list[dict] = []
    seen: set[int] = set()
    bar = tqdm(total=params.max_records or None, unit="rec", desc=f"collect {SOURCE}", mininterval=1.0)
    try:
        page = 1
        while not params.max_pages or page <= params.max_pages:
            body = api.get("questions", "/questions", {**query, "page": page})
            stats["pages"] += 1
            items = body.get("items") or []
            if not items:
                break
            keep = [q for q in select(items, params, stats, quarantine, (page - 1) * params.page_size)
                    if q["question_id"] not in seen]
            if keep and api.quota_spent():
                break
            answers = fetch_answers(api, params, [q["question_id"] for q in keep]) if keep else {}
            for question in keep:
                seen.add(question["question_id"])
                item = {**question, "site": params.site, "answers": answers.get(question["question_id"], [])}
                try:
                    rec = stackexchange_pair(item, **prov)
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    quarantine.append({"source": SOURCE, "item": question["question_id"],
                                       "reason": f"bad item: {type(exc).__name__}: {exc}",
                                       "raw": json.dumps(item, default=str)[:500]})
                    continue
                if rec is None:
                    stats["skipped_no_answer"] += 1
                elif params.accepted_only and not rec["meta"]["accepted"]:
                    stats["skipped_not_accepted"] += 1  # the accepted answer was deleted since
                else:
                    records.append(rec)
                    bar.update(1)
                if params.max_records and len(records) >= params.max_records:
                    stats["capped_at"] = params.max_records
                    return records
            if not body.get("has_more") or api.quota_spent():
                break
            page += 1
    finally:
        bar.close()
    return records
