"""The Claude backend through the real `anthropic` SDK against a real loopback Messages API server (no mocks)."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.oracle.claude import ClaudeBackend
from slmforge.oracle.types import Answer, OracleAuthError, OracleError, Request
from slmforge.params import OracleParams, build
from tests.oracle.messages_server import MessagesServer, running_messages_server

ROOT = Path(__file__).resolve().parents[2]
MODEL = yaml.safe_load((ROOT / "conf/oracle/claude.yaml").read_text(encoding="utf-8"))["model"]
RUBRIC = "You grade answers. Reply with JSON only: {\"score\": <1-5>}.\n" * 5


@pytest.fixture
def server():
    with running_messages_server() as srv:
        yield srv


def params(server: MessagesServer, **overrides) -> OracleParams:
    data = yaml.safe_load((ROOT / "conf/oracle/claude.yaml").read_text(encoding="utf-8"))
    data.update(base_url=server.base_url, max_retries=2, timeout_s=5.0, batch_poll_s=0.01)
    data.update(overrides)
    return build(OracleParams, data, "oracle")


def request(n: int = 0, **kw) -> Request:
    return Request(id=f"rec{n}", system=RUBRIC, prompt=f"<record>\nquestion {n}\n</record>\nScore it.",
                   schema={"type": "object"}, max_tokens=kw.pop("max_tokens", 64), **kw)


def test_normal_call_maps_text_usage_and_sends_the_cached_system_block(server, key):
    server.responder = lambda body: '{"score": 4}'
    backend = ClaudeBackend(params(server))
    assert backend.name == "claude" and backend.model_id() == MODEL
    first, second = backend.complete(request(1)), backend.complete(request(2))
    assert first.text == '{"score": 4}' and not first.batch
    assert first.tokens_in > 0 and first.tokens_out > 0
    assert first.cache_write_tokens > 0 and first.cache_read_tokens == 0  # the rubric is written once ...
    assert second.cache_write_tokens == 0 and second.cache_read_tokens == first.cache_write_tokens  # ... then read
    assert first.meta["stop_reason"] == "end_turn" and first.meta["message_id"].startswith("msg_")

    sent = server.calls("POST", "/v1/messages")
    assert len(sent) == 2
    body = sent[0]["body"]
    assert body["model"] == MODEL and body["max_tokens"] == 64
    assert body["system"] == [{"type": "text", "text": RUBRIC, "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [{"role": "user", "content": request(1).prompt}]
    assert "temperature" not in body  # API version 2026-10-21 refuses sampling parameters
    headers = sent[0]["headers"]
    # SDK 2.x sends the key as a bearer token; older ones used x-api-key. Either way it is the env var's value.
    assert key in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))


def test_base_url_null_uses_anthropic_base_url(server, key, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)  # how the end-to-end test points the pipeline here
    assert ClaudeBackend(params(server, base_url=None)).complete(request()).text == '{"ok": true}'
    assert len(server.calls("POST", "/v1/messages")) == 1


def test_prompt_cache_off_sends_a_plain_system_string_and_repeat_is_not_sent(server, key):
    backend = ClaudeBackend(params(server, prompt_cache=False))
    answer = backend.complete(request(1, repeat=2))
    body = server.calls("POST", "/v1/messages")[0]["body"]
    assert body["system"] == RUBRIC and "repeat" not in body
    assert answer.text == '{"ok": true}' and answer.cache_write_tokens == answer.cache_read_tokens == 0


def test_429_honours_retry_after(server, key):
    server.fail_next(429, retry_after="1")
    answer = ClaudeBackend(params(server)).complete(request())
    assert answer.text == '{"ok": true}'
    first, second = server.calls()
    assert second["time"] - first["time"] >= 0.95  # the header's second, not the 0.5 s default backoff
    assert second["headers"].get("x-stainless-retry-count") == "1"


@pytest.mark.parametrize("status", [529, 500])
def test_overloaded_and_server_errors_are_retried(server, key, status):
    server.fail_next(status)
    assert ClaudeBackend(params(server)).complete(request()).text == '{"ok": true}'
    assert len(server.calls()) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_stop_at_once_and_never_show_the_key(server, key, status):
    server.fail_next(status, message=f"invalid key {key}")  # even an API that echoed the key is scrubbed
    with pytest.raises(OracleAuthError) as info:
        ClaudeBackend(params(server)).complete(request())
    message = str(info.value)
    assert len(server.calls()) == 1  # not retried
    assert isinstance(info.value, UserError)
    assert str(status) in message and "ANTHROPIC_API_KEY" in message
    assert key not in message and "\n" not in message


def test_the_key_stays_out_of_debug_logs(server, key, caplog):
    caplog.set_level(logging.DEBUG)  # the SDK's, httpx's and httpcore's debug logs included
    backend = ClaudeBackend(params(server, max_retries=1))
    server.fail_next(500)
    backend.complete(request())
    server.fail_next(401)
    with pytest.raises(OracleAuthError):
        backend.complete(request())
    assert "Sending HTTP Request" in caplog.text and key not in caplog.text


def test_persistent_500_gives_an_oracle_error_after_the_retries(server, key):
    server.fail_next(500, message="internal trouble", times=10)
    with pytest.raises(OracleError) as info:
        ClaudeBackend(params(server, max_retries=2)).complete(request())
    assert not isinstance(info.value, OracleAuthError)
    assert len(server.calls()) == 3  # max_retries + 1
    message = str(info.value)
    assert "500" in message and "api_error" in message and "internal trouble" in message
    assert "\n" not in message and len(message) < 260


def test_a_timeout_is_an_oracle_error(server, key):
    server.delay_next(1.0)
    with pytest.raises(OracleError, match="Timeout"):
        ClaudeBackend(params(server, max_retries=0, timeout_s=0.2)).complete(request())


def test_malformed_content_comes_back_verbatim(server, key):
    text = '```json\n{"score": 3, "reason": "ok",}\n```'
    server.malformed_next(text)
    assert ClaudeBackend(params(server)).complete(request()).text == text


@pytest.mark.parametrize("value", [None, "  "])
def test_missing_key_is_a_user_error_naming_the_variable(server, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    else:
        monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        ClaudeBackend(params(server))
    assert server.calls() == []


def test_batch_answers_errors_and_polls(server, key):
    items = [(hashlib.sha256(f"rec{n}".encode()).hexdigest(), request(n)) for n in range(3)]
    server.script_batch_result(items[1][0], "errored", error_type="api_error", message="prompt is too long")
    seen = []
    backend = ClaudeBackend(params(server, batch_poll_s=0.2))
    out = backend.complete_batch(items, progress=lambda done, total: seen.append((done, total)))

    assert set(out) == {k for k, _ in items}
    good = [out[items[0][0]], out[items[2][0]]]
    assert all(isinstance(a, Answer) and a.batch and a.text == '{"ok": true}' and a.tokens_in > 0 for a in good)
    assert isinstance(out[items[1][0]], OracleError) and "prompt is too long" in str(out[items[1][0]])
    assert not isinstance(out[items[1][0]], UserError)  # a server-side error of one request: transient

    create = server.calls("POST", "/v1/messages/batches")
    assert len(create) == 1
    sent = create[0]["body"]["requests"]
    assert [r["custom_id"] for r in sent] == [k for k, _ in items]
    assert sent[0]["params"]["system"][0]["cache_control"] == {"type": "ephemeral"}
    polls = [r for r in server.calls("GET") if not r["path"].endswith("/results")]
    assert polls[0]["time"] - create[0]["time"] >= 0.19  # waited batch_poll_s before the first poll
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)  # in progress, then ended


def test_batch_auth_error_raises(server, key):
    server.fail_next(401)
    with pytest.raises(OracleAuthError, match="ANTHROPIC_API_KEY"):
        ClaudeBackend(params(server)).complete_batch([("a" * 64, request())])


def test_many_concurrent_calls(server, key):
    backend = ClaudeBackend(params(server))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(backend.complete, [request(n) for n in range(64)]))
    assert len(answers) == 64 and len(server.calls("POST", "/v1/messages")) == 64
    assert sum(a.cache_write_tokens > 0 for a in answers) == 1  # one write, every other call reads
