"""The live sources' shared GET: one requests.Session, tenacity retries, and failures as one-line UserErrors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from slmforge.errors import UserError
from slmforge.params import HttpParams

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0  # cap of one exponential wait; a longer outage is better reported than slept through
# A server asking for a longer pause than this (a spent daily quota, say) is told to the user instead of
# slept through by a stage that would look hung.
MAX_RETRY_AFTER_S = 600.0
# Query parameters that carry credentials: kept out of every URL we print, log or raise.
SECRET_PARAMS = frozenset({"key", "access_token", "token", "api_key", "apikey"})


class Retryable(Exception):
    """A failure that another attempt may not meet; `wait_s` is the server's Retry-After, when it sent one."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def new_session() -> requests.Session:
    session = requests.Session()
    # arXiv and StackExchange both ask clients to identify themselves; the default python-requests UA is
    # the first thing their abuse filters throttle.
    session.headers["User-Agent"] = f"slmforge-collect (research data pull) {requests.utils.default_user_agent()}"
    return session


def safe_url(url: str, params: dict | None) -> str:
    """The URL as a user may see it: every query parameter except credentials."""
    shown = {k: v for k, v in (params or {}).items() if k.lower() not in SECRET_PARAMS and v is not None}
    return f"{url}?{urlencode(shown)}" if shown else url


def retry_after_s(response: requests.Response) -> float | None:
    """Retry-After in seconds, given either as seconds or as an HTTP date; None when absent or unreadable."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def body_excerpt(response: requests.Response) -> str:
    return " ".join(response.text[:200].split())


def json_body(response: requests.Response) -> Any:
    # A cut-off or non-JSON body (a proxy's HTML error page with status 200) raises ValueError: retried.
    return response.json()


def redact(text: str, secrets: list[str]) -> str:
    """The text with every secret replaced by *** and whitespace collapsed: fit for an error line or a log."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _advice(status: int, where: str) -> str:
    if status in (401, 403):
        return f"check the API key or token named in {where} and that it is set in the environment"
    if status == 404:
        return f"check {where}.http.base_url"
    return f"check {where} in conf/ (the API rejected the query)"


def get(session: requests.Session, url: str, params: dict, http: HttpParams, stats: dict, *, where: str,
        parse: Callable[[requests.Response], Any] = json_body,
        describe_error: Callable[[requests.Response], str] = body_excerpt,
        sleep: Callable[[float], None] = time.sleep) -> Any:
    """GET url?params and return parse(response).

    429, 5xx, timeouts, dropped connections and bodies that fail `parse` (ValueError) are retried up to
    http.max_retries times with exponential backoff from http.backoff_s, or after the server's Retry-After.
    Another 4xx, or the last failed attempt, raises a UserError naming the URL (credentials removed), the
    status and what to do. `where` is the params section the user would edit (sources.stackexchange);
    `describe_error` turns an error response into a short detail (an API's own error name and message).
    """
    shown = safe_url(url, params)
    secrets = [str(v) for k, v in params.items() if k.lower() in SECRET_PARAMS and v]
    stats.setdefault("calls", 0)
    stats.setdefault("retries", 0)

    def attempt() -> Any:
        stats["calls"] += 1
        try:
            response = session.get(url, params=params, timeout=http.timeout_s)
        except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            # ChunkedEncodingError is how requests reports a body shorter than its Content-Length.
            raise Retryable(f"{type(exc).__name__}: {redact(str(exc), secrets)[:200]}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            wait = retry_after_s(response)
            detail = redact(describe_error(response), secrets)
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                raise UserError(f"GET {shown}: HTTP {status} {detail}; the server asks to wait {wait:.0f} s: "
                                "run again later")
            raise Retryable(f"HTTP {status} {detail}".strip(), wait)
        if status >= 400:
            detail = redact(describe_error(response), secrets)
            raise UserError(f"GET {shown}: HTTP {status} {detail}: {_advice(status, where)}")
        try:
            return parse(response)
        except ValueError as exc:
            raise Retryable(f"HTTP {status} with a malformed or cut-off body ({redact(str(exc), secrets)[:120]})") \
                from exc

    backoff = wait_exponential_jitter(multiplier=http.backoff_s, jitter=http.backoff_s, max=MAX_BACKOFF_S)

    def wait(state) -> float:
        exc = state.outcome.exception()
        if isinstance(exc, Retryable) and exc.wait_s is not None:
            return exc.wait_s  # the server knows when it will take us again better than our backoff does
        return backoff(state)

    def count_retry(state) -> None:
        stats["retries"] += 1
        log.warning("GET %s: %s; retry %d of %d in %.1f s", shown, state.outcome.exception(),
                    state.attempt_number, http.max_retries, state.next_action.sleep)

    retrying = Retrying(retry=retry_if_exception_type(Retryable), stop=stop_after_attempt(http.max_retries + 1),
                        wait=wait, sleep=sleep, before_sleep=count_retry, reraise=True)
    try:
        return retrying(attempt)
    except Retryable as exc:
        raise UserError(f"GET {shown} failed {http.max_retries + 1} times, last with {exc}: the API is down or "
                        f"rate-limiting; run again later or raise {where}.http.max_retries") from None
