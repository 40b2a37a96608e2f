"""The oracle client: cache-first asking, cost estimate and ceiling, repair and validation, bounded concurrency,
resumable runs, batches. Through the real ClaudeBackend against a real loopback Messages API server; a tiny
in-test backend only where counting calls or scripting a crash is the point."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.claude import ClaudeBackend
from slmforge.oracle.client import Oracle, estimate_usd
from slmforge.oracle.types import Answer, OracleAuthError, OracleError, Request
from slmforge.params import OracleParams, build
from tests.oracle.messages_server import MessagesServer, running_messages_server

ROOT = Path(__file__).resolve().parents[2]
CONF = yaml.safe_load((ROOT / "conf/oracle/claude.yaml").read_text(encoding="utf-8"))
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
SYSTEM = "You score records from 0 to 10. Answer with JSON only: {\"score\": <number>}.\n" * 4
SCHEMA = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10}},
          "required": ["score"], "additionalProperties": False}


def request(n: int, rid: str | None = None, **kw) -> Request:
    return Request(id=rid or f"rec{n}", system=SYSTEM, prompt=f"<record>\nvalue={n}\n</record>\nScore it.",
                   schema=SCHEMA, max_tokens=kw.pop("max_tokens", 32), **kw)


def score_from(body: dict) -> str:
    """The server's answer, built from the request: the record's value mod 11, so a mix-up would show."""
    prompt = body["messages"][0]["content"]
    return json.dumps({"score": int(re.search(r"value=(\d+)", prompt).group(1)) % 11})


@pytest.fixture
def server():
    with running_messages_server(score_from) as srv:
        yield srv


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "slmforge-cache"))  # never the user's own store
    return tmp_path / "store"


def params(server: MessagesServer | None = None, **overrides) -> OracleParams:
    data = {**CONF, "max_retries": 2, "timeout_s": 5.0, "batch_poll_s": 0.01, **overrides}
    if server is not None:
        data["base_url"] = server.base_url
    return build(OracleParams, data, "oracle")


def claude_oracle(server, out: Path, store: Path, **overrides) -> Oracle:
    p = params(server, **overrides)
    return Oracle(p, AnswerCache(out, store=store), ClaudeBackend(p))


def messages(server) -> int:
    return len(server.calls("POST", "/v1/messages"))


class CountingBackend:
    """Answers every request with its value mod 11, counting calls; `crash_on` raises on that call (1-based)."""

    name = "fake"

    def __init__(self, crash_on: int | None = None, crash: BaseException = KeyboardInterrupt(),
                 tokens: tuple[int, int, int, int] = (100, 10, 0, 0), on_call=None):
        self.calls, self.crash_on, self.crash, self.tokens, self.on_call = [], crash_on, crash, tokens, on_call
        self._lock = threading.Lock()

    def model_id(self) -> str:
        return "fake-1"

    def complete(self, req: Request) -> Answer:
        with self._lock:
            self.calls.append(req.id)
            n = len(self.calls)
        if self.on_call:
            self.on_call(n)
        if n == self.crash_on:
            raise self.crash
        value = int(re.search(r"value=(\d+)", req.prompt).group(1)) % 11
        tin, tout, cw, cr = self.tokens
        return Answer(text=json.dumps({"score": value}), tokens_in=tin, tokens_out=tout, cache_write_tokens=cw,
                      cache_read_tokens=cr)


# --- the cache makes a warm re-run free ------------------------------------------------------------------------

def test_a_warm_rerun_makes_zero_calls(server, key, store, tmp_path):
    reqs = [request(n) for n in range(6)]
    first = claude_oracle(server, tmp_path / "out1", store)
    answers = first.ask(reqs, "label")
    assert answers == [{"score": n % 11} for n in range(6)]
    assert first.ledger.calls == 6 and first.ledger.cache_hits == 0 and messages(server) == 6

    # `dvc repro -f`: DVC deleted the stage output; the store outside the repo still holds the answers.
    again = claude_oracle(server, tmp_path / "out2", store)
    assert again.ask(reqs, "label") == answers
    assert again.ledger.calls == 0 and again.ledger.cache_hits == 6 and again.ledger.usd == 0
    assert messages(server) == 6 and len(server.calls()) == 6  # nothing new reached the server
    assert len(again.cache) == 6  # the new output lists every answer it used

    # A teammate's machine after `dvc pull`: only the stage output, no store.
    shutil.rmtree(store)
    pulled = claude_oracle(server, tmp_path / "out2", store)
    assert pulled.ask(reqs, "label") == answers
    assert pulled.ledger.calls == 0 and pulled.ledger.cache_hits == 6 and messages(server) == 6


def test_a_changed_request_is_asked_again(server, key, store, tmp_path):
    claude_oracle(server, tmp_path / "out", store).ask([request(1)], "label")
    oracle = claude_oracle(server, tmp_path / "out", store)
    oracle.ask([request(1), request(1, repeat=1), request(1, max_tokens=33)], "label")
    assert oracle.ledger.cache_hits == 1 and oracle.ledger.calls == 2 and messages(server) == 3
    other_model = claude_oracle(server, tmp_path / "out", store, model="claude-haiku-4-5")
    other_model.ask([request(1)], "label")
    assert other_model.ledger.calls == 1


def test_duplicate_requests_are_called_once(server, key, store, tmp_path):
    oracle = claude_oracle(server, tmp_path / "out", store)
    reqs = [request(3, "a"), request(3, "b"), request(4, "c"), request(3, "d")]  # same text, other records
    assert oracle.ask(reqs, "label") == [{"score": 3}, {"score": 3}, {"score": 4}, {"score": 3}]
    assert oracle.ledger.calls == 2 and messages(server) == 2 and len(oracle.cache) == 2


# --- cost -----------------------------------------------------------------------------------------------------

def _usd(tokens_in, tokens_out, cache_write, cache_read) -> float:
    """The price of those tokens, undiscounted, from conf/oracle/claude.yaml's own numbers."""
    pin = CONF["price_in_per_mtok"]
    return (tokens_in * pin + tokens_out * CONF["price_out_per_mtok"]
            + cache_write * pin * CONF["cache_write_multiplier"] + cache_read * pin * CONF["cache_read_multiplier"]) / 1e6


def test_the_ledger_prices_each_kind_of_token(store, tmp_path):
    backend = CountingBackend(tokens=(1000, 200, 3000, 40_000))
    oracle = Oracle(params(), AnswerCache(tmp_path / "out", store=store), backend)
    oracle.ask([request(n) for n in range(3)], "label")
    # 3 x (1000 in x price_in + 200 out x price_out + 3000 written x price_in x 1.25 + 40000 read x price_in x 0.1)
    assert oracle.ledger.usd == pytest.approx(3 * _usd(1000, 200, 3000, 40_000))
    m = oracle.metrics()["oracle"]
    assert (m["calls"], m["tokens_in"], m["tokens_out"], m["cache_write_tokens"], m["cache_read_tokens"]) == \
        (3, 3000, 600, 9000, 120_000)


def test_claude_usage_is_priced_with_prompt_caching_and_the_estimate_bounds_it(server, key, store, tmp_path):
    reqs = [request(n) for n in range(5)]
    oracle = claude_oracle(server, tmp_path / "out", store, concurrency=1)
    oracle.ask(reqs, "label")
    led = oracle.ledger
    assert led.cache_write_tokens > 0 and led.cache_read_tokens == 4 * led.cache_write_tokens  # one write, 4 reads
    assert led.usd == pytest.approx(_usd(led.tokens_in, led.tokens_out, led.cache_write_tokens, led.cache_read_tokens))
    assert 0 < led.usd <= estimate_usd(reqs, oracle.params, batch=False)  # the estimate is an upper bound


def test_the_estimate_is_printed_before_any_call(store, tmp_path, capsys):
    seen = []
    backend = CountingBackend(on_call=lambda n: seen.append(capsys.readouterr().err) if n == 1 else None)
    Oracle(params(concurrency=1), AnswerCache(tmp_path / "out", store=store), backend).ask(
        [request(n) for n in range(3)], "label")
    assert re.search(r"3 to ask fake:fake-1 \(estimated at most \$\d+\.\d\d; ceiling oracle\.max_usd=\$"
                     + re.escape(f"{CONF['max_usd']:.2f})"), seen[0])


def test_an_estimate_above_max_usd_stops_before_any_request(server, key, store, tmp_path):
    reqs = [request(n) for n in range(50)]
    ceiling = estimate_usd(reqs, params(server), batch=False) * 0.9
    oracle = claude_oracle(server, tmp_path / "out", store, max_usd=ceiling)
    with pytest.raises(UserError, match=r"oracle\.max_usd"):
        oracle.ask(reqs, "label")
    assert server.calls() == [] and oracle.ledger.calls == 0


def test_the_ceiling_counts_only_cache_misses(server, key, store, tmp_path):
    reqs = [request(n) for n in range(3)]
    claude_oracle(server, tmp_path / "out", store).ask(reqs, "label")
    warm = claude_oracle(server, tmp_path / "out", store, max_usd=0.0)
    assert warm.ask(reqs, "label") == [{"score": n} for n in range(3)]  # free: allowed under any ceiling
    with pytest.raises(UserError):
        warm.ask(reqs + [request(99)], "label")
    assert messages(server) == 3


def test_batch_mode_goes_through_message_batches_at_the_discount(server, key, store, tmp_path):
    reqs = [request(n) for n in range(4)]
    oracle = claude_oracle(server, tmp_path / "out", store)
    assert oracle.ask(reqs, "label", batch=True) == [{"score": n} for n in range(4)]
    assert messages(server) == 0 and len(server.calls("POST", "/v1/messages/batches")) == 1
    led = oracle.ledger
    assert led.calls == 4 and led.tokens_in > 0
    full = _usd(led.tokens_in, led.tokens_out, led.cache_write_tokens, led.cache_read_tokens)
    assert led.usd == pytest.approx(full * CONF["batch_discount"]) and led.usd < full
    assert all(json.loads(p.read_text())["batch"] for p in (tmp_path / "out").glob("*/*.json"))
    again = claude_oracle(server, tmp_path / "out2", store)
    again.ask(reqs, "label", batch=True)  # answers from a batch are cached like any other
    assert again.ledger.calls == 0 and len(server.calls("POST", "/v1/messages/batches")) == 1


def test_a_batch_error_is_a_failure_and_the_rest_are_answered(server, key, store, tmp_path):
    oracle = claude_oracle(server, tmp_path / "out", store, max_failure_share=1.0)
    server.script_batch_result(oracle.key(request(1)), "errored", error_type="api_error", message="prompt is too long")
    answers = oracle.ask([request(n) for n in range(3)], "label", batch=True)
    assert answers == [{"score": 0}, None, {"score": 2}]
    assert [f["id"] for f in oracle.failures] == ["rec1"] and "prompt is too long" in oracle.failures[0]["error"]


# --- answers are repaired or refused, never half-trusted --------------------------------------------------------

def test_fenced_json_with_a_trailing_comma_is_repaired(server, key, store, tmp_path):
    server.malformed_next('```json\n{"score": 7,}\n```')
    oracle = claude_oracle(server, tmp_path / "out", store)
    assert oracle.ask([request(1)], "label") == [{"score": 7}]
    assert oracle.failures == [] and len(oracle.cache) == 1


def test_json_inside_prose_is_repaired(server, key, store, tmp_path):
    server.malformed_next('Sure! Here is my score: {"score": 6} Hope it helps.')
    assert claude_oracle(server, tmp_path / "out", store).ask([request(1)], "label") == [{"score": 6}]


@pytest.mark.parametrize("text, why", [
    ("I think this is a great answer, really high quality.", "not a JSON object"),
    ('{"score": 11}', "schema"),
    ('{"score": -1}', "schema"),
    ('{"grade": 4}', "schema"),
    ('{"score": "high"}', "schema"),
    ('{"score": 4, "reason": "extra key"}', "schema"),
])
def test_a_hopeless_or_invalid_answer_is_a_failure_that_is_asked_again(server, key, store, tmp_path, text, why):
    server.malformed_next(text)
    # concurrency 1: the scripted text goes to rec 1; one failure in two tolerated, as transient failures are
    oracle = claude_oracle(server, tmp_path / "out", store, concurrency=1, max_failure_share=1.0)
    assert oracle.ask([request(1, "paper:42"), request(2)], "label") == [None, {"score": 2}]
    (failure,) = oracle.failures
    assert failure["id"] == "paper:42" and failure["raw"] == text and why in failure["error"]
    assert oracle.ledger.failures == 1 and oracle.ledger.calls == 2  # paid for, so counted in the ledger
    assert len(oracle.cache) == 1  # the failure is not cached ...
    rerun = claude_oracle(server, tmp_path / "out", store)
    assert rerun.ask([request(1, "paper:42"), request(2)], "label") == [{"score": 1}, {"score": 2}]
    assert rerun.ledger.calls == 1 and rerun.ledger.cache_hits == 1  # ... so the next run asks again


def test_a_call_that_fails_for_good_is_recorded_and_the_run_goes_on(server, key, store, tmp_path):
    server.fail_next(500, message="internal trouble", times=3)  # max_retries=2: three attempts, all 500
    oracle = claude_oracle(server, tmp_path / "out", store, concurrency=1, max_failure_share=0.5)
    assert oracle.ask([request(n) for n in range(3)], "label") == [None, {"score": 1}, {"score": 2}]
    (failure,) = oracle.failures
    assert failure["id"] == "rec0" and "500" in failure["error"] and failure["raw"] is None
    assert oracle.ledger.failures == 1 and oracle.ledger.calls == 2


def test_a_backend_answer_that_breaks_the_schema_is_refused(store, tmp_path):
    class Parsed(CountingBackend):
        def complete(self, req):
            return Answer(text='{"score": 12}', tokens_in=1, tokens_out=1, parsed={"score": 12})

    oracle = Oracle(params(max_failure_share=1.0), AnswerCache(tmp_path / "out", store=store), Parsed())
    assert oracle.ask([request(1)], "label") == [None]
    assert "schema" in oracle.failures[0]["error"] and len(oracle.cache) == 0


# --- concurrency, auth, resuming -------------------------------------------------------------------------------

def test_at_most_concurrency_requests_are_in_flight(key, store, tmp_path):
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def slow(body):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return score_from(body)

    with running_messages_server(slow) as srv:
        oracle = claude_oracle(srv, tmp_path / "out", store, concurrency=4)
        answers = oracle.ask([request(n) for n in range(14)], "label")
    assert answers == [{"score": n % 11} for n in range(14)]  # each answer belongs to its own request
    assert state["max"] == 4 and oracle.ledger.calls == 14


@pytest.mark.parametrize("concurrency", [1, 4])
def test_401_stops_the_run_naming_the_key_variable(server, key, store, tmp_path, concurrency):
    server.fail_next(401, times=50)
    oracle = claude_oracle(server, tmp_path / "out", store, concurrency=concurrency)
    with pytest.raises(OracleAuthError, match="ANTHROPIC_API_KEY") as info:
        oracle.ask([request(n) for n in range(20)], "label")
    assert isinstance(info.value, UserError) and key not in str(info.value)
    assert len(server.calls()) <= concurrency  # stopped, not tried once per record
    assert oracle.failures == [] and len(oracle.cache) == 0


@pytest.mark.parametrize("crash", [KeyboardInterrupt(), RuntimeError("the machine went away")])
def test_a_killed_run_resumes_with_only_the_remaining_calls(store, tmp_path, crash):
    reqs = [request(n) for n in range(10)]
    dying = CountingBackend(crash_on=6, crash=crash)
    with pytest.raises(type(crash)):
        Oracle(params(concurrency=1), AnswerCache(tmp_path / "out", store=store), dying).ask(reqs, "label")
    assert len(dying.calls) == 6
    # DVC deletes a failed stage's outputs: the store alone must carry answers 1-5.
    cache = AnswerCache(tmp_path / "fresh-out", store=store)
    resumed = CountingBackend()
    oracle = Oracle(params(concurrency=1), cache, resumed)
    assert oracle.ask(reqs, "label") == [{"score": n} for n in range(10)]
    assert resumed.calls == [f"rec{n}" for n in range(5, 10)]
    assert oracle.ledger.cache_hits == 5 and oracle.ledger.calls == 5


def test_a_killed_concurrent_run_loses_only_the_calls_in_flight(store, tmp_path):
    reqs = [request(n) for n in range(20)]
    dying = CountingBackend(crash_on=9)
    with pytest.raises(KeyboardInterrupt):
        Oracle(params(concurrency=3), AnswerCache(tmp_path / "out", store=store), dying).ask(reqs, "label")
    assert len(dying.calls) <= 9 + 2  # nothing new submitted after the interrupt
    saved = len(AnswerCache(tmp_path / "out", store=store))
    assert saved >= 9 - 3  # every call that finished before the crash was recorded
    resumed = CountingBackend()
    oracle = Oracle(params(concurrency=3), AnswerCache(tmp_path / "out2", store=store), resumed)
    assert oracle.ask(reqs, "label") == [{"score": n % 11} for n in range(20)]
    assert len(resumed.calls) == 20 - saved and oracle.ledger.cache_hits == saved


def test_metrics_name_calls_hits_tokens_and_cost(server, key, store, tmp_path):
    oracle = claude_oracle(server, tmp_path / "out", store)
    oracle.ask([request(1), request(1, "again"), request(2)], "label")
    m = oracle.metrics()
    assert set(m) == {"oracle"}
    flat = {f"oracle.{k}": v for k, v in m["oracle"].items()}
    for name in ("oracle.calls", "oracle.cache_hits", "oracle.tokens_in", "oracle.tokens_out", "oracle.usd",
                 "oracle.failures", "oracle.backend", "oracle.model"):
        assert name in flat
    assert flat["oracle.calls"] == 2 and flat["oracle.cache_hits"] == 0 and flat["oracle.usd"] > 0
    assert flat["oracle.backend"] == "claude" and flat["oracle.model"] == CONF["model"]
    json.dumps(m)  # written as a DVC metrics file
    cached = claude_oracle(server, tmp_path / "out", store)
    cached.ask([request(1)], "label")
    assert cached.metrics()["oracle"]["cache_hits"] == 1 and cached.metrics()["oracle"]["usd"] == 0


def test_an_unknown_backend_is_a_user_error():
    from slmforge.oracle.client import make_backend

    with pytest.raises(UserError, match="oracle.backend"):
        make_backend(params(backend="gpt"))


def test_an_oracle_error_fails_that_record_only(store, tmp_path):
    class Flaky(CountingBackend):
        def complete(self, req):
            if req.id == "rec1":
                raise OracleError("claude: HTTP 400 invalid_request_error: prompt is too long")
            return super().complete(req)

    oracle = Oracle(params(concurrency=2, max_failure_share=0.25), AnswerCache(tmp_path / "out", store=store), Flaky())
    assert oracle.ask([request(n) for n in range(4)], "label") == [{"score": 0}, None, {"score": 2}, {"score": 3}]
    assert oracle.failures[0]["id"] == "rec1" and "prompt is too long" in oracle.failures[0]["error"]
