"""A real HTTP server on 127.0.0.1 that speaks enough of Anthropic's Messages API for the real `anthropic` SDK.

Point a client at `server.base_url` (or set ANTHROPIC_BASE_URL to it): `POST /v1/messages` answers through a
pluggable `responder(body) -> text`, with token counts estimated from characters (about 4 a token) and prompt
caching played like the real API (a system block with cache_control is written once, then read). Faults are
scripted in a queue that the next requests consume one each (`fail_next`, `malformed_next`, `delay_next`), and
the Message Batches endpoints store a batch, report it in progress for a poll, then serve its results as JSONL.
Every request is recorded (method, path, lower-cased headers, parsed body, monotonic time received).
No pytest in here: the end-to-end test runs the pipeline as a subprocess against this server.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# The error type the real API puts in the body for each status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}

BATCHES = "/v1/messages/batches"


def default_responder(body: dict) -> str:
    return '{"ok": true}'


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def text_of(content) -> str:
    """The text of a `system` or message `content` value: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def _now_iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat().replace("+00:00", "Z")


class MessagesServer:
    def __init__(self, responder: Callable[[dict], str] | None = None, batch_polls_in_progress: int = 1,
                 tokens: Callable[[str], int] | None = None):
        self.responder = responder or default_responder
        self.tokens = tokens or estimate_tokens  # how the "API" counts a text's tokens in its usage
        self.batch_polls_in_progress = batch_polls_in_progress  # retrieves answered in_progress before `ended`
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        self.batches: dict[str, dict] = {}
        self.batch_results: dict[str, dict] = {}  # custom_id -> scripted non-succeeded result
        self._cached: set[tuple[str, str]] = set()  # (model, system text) prefixes written to the "cache"
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                req = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                       "time": time.monotonic()}
                status, headers, payload = outer._answer(req)
                data = payload.encode("utf-8")
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left first
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    # --- scripting -------------------------------------------------------------------------------------------

    def fail_next(self, status: int, error_type: str | None = None, message: str | None = None,
                  retry_after: str | None = None, headers: dict | None = None, times: int = 1) -> None:
        """The next `times` requests get an error in Anthropic's shape: {"type": "error", "error": {...}}."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = str(retry_after)
        error_type = error_type or ERROR_TYPES.get(status, "api_error")
        fault = {"kind": "error", "status": status, "type": error_type,
                 "message": message or f"scripted {error_type}", "headers": extra}
        with self._lock:
            self.faults.extend(dict(fault) for _ in range(times))

    def malformed_next(self, text: str) -> None:
        """The next request gets a normal 200 Message whose content text is `text`, whatever the responder says."""
        with self._lock:
            self.faults.append({"kind": "text", "text": text})

    def delay_next(self, seconds: float) -> None:
        """The next request is answered normally after `seconds` (longer than the client's timeout: a timeout)."""
        with self._lock:
            self.faults.append({"kind": "delay", "seconds": seconds})

    def script_batch_result(self, custom_id: str, kind: str = "errored", error_type: str = "invalid_request_error",
                            message: str = "scripted batch error") -> None:
        """The batch request with this custom_id ends `errored` (with this error), `expired` or `canceled`."""
        result = {"type": kind}
        if kind == "errored":
            result["error"] = {"type": "error", "error": {"type": error_type, "message": message},
                               "request_id": f"req_{uuid.uuid4().hex[:24]}"}
        self.batch_results[custom_id] = result

    def calls(self, method: str | None = None, path: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if (method is None or r["method"] == method)
                    and (path is None or r["path"] == path)]

    # --- answering -------------------------------------------------------------------------------------------

    def message(self, body: dict, text: str | None = None) -> dict:
        """A real-shaped Message answering `body` (a /v1/messages request body)."""
        if text is None:
            text = self.responder(body)
        system = body.get("system") or ""
        system_text = text_of(system)
        cacheable = isinstance(system, list) and any("cache_control" in b for b in system if isinstance(b, dict))
        prompt_tokens = sum(self.tokens(text_of(m.get("content"))) for m in body.get("messages", []))
        system_tokens = self.tokens(system_text)
        write = read = 0
        if cacheable:  # like the API: the cached prefix is billed as a write once, then as reads
            key = (body.get("model", ""), system_text)
            with self._lock:
                seen = key in self._cached
                self._cached.add(key)
            write, read = (0, system_tokens) if seen else (system_tokens, 0)
        else:
            prompt_tokens += system_tokens
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": body.get("model", ""), "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": self.tokens(text),
                          "cache_creation_input_tokens": write, "cache_read_input_tokens": read}}

    def _answer(self, req: dict) -> tuple[int, dict, str]:
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        with self._lock:
            self.requests.append(req)
            fault = self.faults.pop(0) if self.faults else None
        headers = {"Content-Type": "application/json", "request-id": request_id}
        text = None
        if fault and fault["kind"] == "error":
            body = {"type": "error", "error": {"type": fault["type"], "message": fault["message"]},
                    "request_id": request_id}
            return fault["status"], {**headers, **fault["headers"]}, json.dumps(body)
        if fault and fault["kind"] == "delay":
            time.sleep(fault["seconds"])
        if fault and fault["kind"] == "text":
            text = fault["text"]
        method, path = req["method"], req["path"]
        if method == "POST" and path == "/v1/messages":
            return 200, headers, json.dumps(self.message(req["body"] or {}, text))
        if method == "POST" and path == BATCHES:
            return 200, headers, json.dumps(self._create_batch(req["body"] or {}))
        if method == "GET" and path.startswith(BATCHES + "/"):
            batch_id, _, rest = path[len(BATCHES) + 1:].partition("/")
            if batch_id in self.batches and rest == "":
                return 200, headers, json.dumps(self._poll_batch(batch_id))
            if batch_id in self.batches and rest == "results":
                lines = "".join(json.dumps(line) + "\n" for line in self.batches[batch_id]["results"])
                return 200, {**headers, "Content-Type": "application/binary"}, lines
        body = {"type": "error", "error": {"type": "not_found_error", "message": f"{method} {path}: not found"},
                "request_id": request_id}
        return 404, headers, json.dumps(body)

    def _create_batch(self, body: dict) -> dict:
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        results = []
        for item in body.get("requests", []):  # answered now, served once the batch has "ended"
            scripted = self.batch_results.get(item["custom_id"])
            result = scripted or {"type": "succeeded", "message": self.message(item["params"])}
            results.append({"custom_id": item["custom_id"], "result": result})
        batch = {"id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(results), "succeeded": 0, "errored": 0, "canceled": 0,
                                    "expired": 0},
                 "created_at": _now_iso(), "expires_at": _now_iso(timedelta(hours=24)), "ended_at": None,
                 "archived_at": None, "cancel_initiated_at": None, "results_url": None}
        with self._lock:
            self.batches[batch_id] = {"object": batch, "results": results, "polls": 0}
        return batch

    def _poll_batch(self, batch_id: str) -> dict:
        with self._lock:
            state = self.batches[batch_id]
            state["polls"] += 1
            batch = state["object"]
            if state["polls"] > self.batch_polls_in_progress and batch["processing_status"] != "ended":
                counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
                for line in state["results"]:
                    counts[line["result"]["type"]] += 1
                batch.update(processing_status="ended", request_counts=counts, ended_at=_now_iso(),
                             results_url=f"{self.base_url}{BATCHES}/{batch_id}/results")
            return dict(batch)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> MessagesServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> MessagesServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def running_messages_server(responder: Callable[[dict], str] | None = None, **kwargs) -> Iterator[MessagesServer]:
    """A started MessagesServer (its URL in `.base_url`), stopped on exit."""
    with MessagesServer(responder, **kwargs) as server:
        yield server


if __name__ == "__main__":  # by hand: `python -m tests.oracle.messages_server`, then export ANTHROPIC_BASE_URL
    with running_messages_server() as srv:
        print(srv.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
