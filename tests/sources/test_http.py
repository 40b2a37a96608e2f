"""The live sources' shared GET against a real loopback server: what it retries, how long it waits, what it says."""

import socket
import time

import pytest

from slmforge.errors import UserError
from slmforge.params import HttpParams
from slmforge.sources import http
from tests.sources.loopback import TRUNCATE, Loopback, json_response


@pytest.fixture
def lb():
    with Loopback() as server:
        yield server


def call(lb, params=None, *, retries=3, backoff=0.01, timeout=2.0, path="/thing", **kw):
    """GET path on the loopback; returns (parsed body, stats, requested sleeps)."""
    stats, sleeps = {}, []
    body = http.get(http.new_session(), lb.url + path, params or {"q": "x"},
                    HttpParams(base_url=lb.url, timeout_s=timeout, max_retries=retries, backoff_s=backoff),
                    stats, where="sources.test", sleep=sleeps.append, **kw)
    return body, stats, sleeps


def test_429_waits_what_retry_after_says_then_succeeds(lb):
    lb.route("GET", "/thing", json_response({"error": "slow down"}, 429, {"Retry-After": "7"}),
             json_response({"ok": 1}))
    body, stats, sleeps = call(lb)
    assert body == {"ok": 1}
    assert sleeps == [7.0]
    assert stats == {"calls": 2, "retries": 1}


def test_retry_after_as_an_http_date(lb):
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    lb.route("GET", "/thing", json_response({}, 503, {"Retry-After": when}), json_response({"ok": 1}))
    _, _, sleeps = call(lb)
    assert len(sleeps) == 1 and 25 <= sleeps[0] <= 31


def test_a_retry_after_beyond_the_limit_is_reported_not_slept(lb):
    lb.route("GET", "/thing", json_response({}, 429, {"Retry-After": "86400"}))
    with pytest.raises(UserError, match="wait 86400 s: run again later") as err:
        call(lb)
    assert len(lb.calls()) == 1 and "\n" not in str(err.value)


def test_5xx_backs_off_exponentially_with_jitter_from_backoff_s(lb):
    lb.route("GET", "/thing", json_response({}, 500), json_response({}, 502), json_response({}, 503),
             json_response({"ok": 1}))
    body, stats, sleeps = call(lb, backoff=0.5)
    assert body == {"ok": 1} and stats == {"calls": 4, "retries": 3}
    for i, slept in enumerate(sleeps):
        assert 0.5 * 2**i <= slept <= 0.5 * 2**i + 0.5  # base doubling, plus up to backoff_s of jitter


def test_5xx_forever_ends_in_one_line_naming_url_status_and_advice(lb):
    lb.route("GET", "/thing", json_response({"error_id": 500, "error_name": "internal_error"}, 500))
    with pytest.raises(UserError) as err:
        call(lb, {"site": "stats", "key": "SECRET-KEY-123"}, retries=2)
    message = str(err.value)
    assert "\n" not in message
    assert f"{lb.url}/thing?site=stats" in message and "HTTP 500" in message
    assert "run again later or raise sources.test.http.max_retries" in message
    assert "SECRET-KEY-123" not in message and "key=" not in message
    assert len(lb.calls()) == 3  # the first attempt and max_retries more
    assert lb.calls()[0]["query"]["key"] == ["SECRET-KEY-123"]  # the key is still sent


@pytest.mark.parametrize("status, advice", [(400, "check sources.test in conf/"),
                                            (404, "check sources.test.http.base_url"), (403, "API key or token")])
def test_other_4xx_is_not_retried(lb, status, advice):
    lb.route("GET", "/thing", json_response({"error_message": "nope"}, status))
    with pytest.raises(UserError, match=f"HTTP {status}") as err:
        call(lb)
    assert advice in str(err.value) and "nope" in str(err.value)
    assert len(lb.calls()) == 1


def test_a_truncated_body_is_retried(lb):
    lb.route("GET", "/thing", (200, {"Content-Type": "application/json", TRUNCATE: "1"}, '{"items": [1, 2'),
             json_response({"items": [1, 2, 3]}))
    body, stats, _ = call(lb)
    assert body == {"items": [1, 2, 3]} and stats["retries"] == 1


def test_a_body_that_does_not_parse_is_retried(lb):
    lb.route("GET", "/thing", (200, {"Content-Type": "text/html"}, "<html>proxy error</html>"),
             json_response({"ok": 1}))
    body, stats, _ = call(lb)
    assert body == {"ok": 1} and stats["retries"] == 1


def test_a_timeout_is_retried(lb):
    slow = {"n": 0}

    def answer(req):
        slow["n"] += 1
        if slow["n"] == 1:
            time.sleep(0.15)  # under the loopback's lock: the retry is answered once this is over
        return json_response({"n": slow["n"]})

    lb.handle("GET", "/thing", answer)
    body, stats, _ = call(lb, timeout=0.1, retries=5)
    assert stats["retries"] >= 1 and body["n"] >= 2


def test_a_refused_connection_is_retried_then_reported():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stats, sleeps = {}, []
    with pytest.raises(UserError, match="ConnectionError") as err:
        http.get(http.new_session(), f"http://127.0.0.1:{port}/x", {"key": "SECRET-KEY-123"},
                 HttpParams(base_url="", timeout_s=1, max_retries=2, backoff_s=0.01), stats, where="sources.t",
                 sleep=sleeps.append)
    assert stats == {"calls": 3, "retries": 2} and len(sleeps) == 2
    assert "SECRET-KEY-123" not in str(err.value) and "\n" not in str(err.value)


def test_safe_url_drops_credentials():
    assert http.safe_url("https://a/b", {"site": "stats", "key": "k", "access_token": "t", "x": None}) == \
        "https://a/b?site=stats"
