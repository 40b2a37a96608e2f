"""A real HTTP server on 127.0.0.1 that plays scripted responses, for testing live sources without a network.

Each route (method, path) has a queue of responses; a request takes the next one, and the last one repeats.
A response is (status, headers, body) where body is bytes or str; `TRUNCATE` as a header value sends a
Content-Length longer than the body and closes the connection, as a dropped connection does.
Every request is recorded (method, path, query, headers, body) so tests can assert what the client sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TRUNCATE = "x-loopback-truncate"


def json_response(obj, status: int = 200, headers: dict | None = None):
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, json.dumps(obj)


class Loopback:
    def __init__(self):
        self.routes: dict[tuple[str, str], list] = {}
        self.handlers: dict[tuple[str, str], object] = {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                       "headers": dict(self.headers), "body": body}
                with outer._lock:
                    outer.requests.append(req)
                    key = (self.command, parts.path)
                    prefixed = [fn for (m, p), fn in outer.handlers.items()
                                if m == self.command and p.endswith("*") and parts.path.startswith(p[:-1])]
                    if key in outer.handlers:
                        resp = outer.handlers[key](req)
                    elif prefixed:
                        resp = prefixed[0](req)
                    elif key in outer.routes and outer.routes[key]:
                        queue = outer.routes[key]
                        resp = queue.pop(0) if len(queue) > 1 else queue[0]
                    else:
                        resp = json_response({"error": f"no route {key}"}, 404)
                status, headers, payload = resp
                data = payload.encode() if isinstance(payload, str) else payload
                headers = dict(headers)  # a copy: a response that repeats must truncate every time
                truncate = headers.pop(TRUNCATE, None)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data) * 2 if truncate else len(data)))
                    if truncate:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                    if truncate:
                        self.wfile.flush()
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a timeout test)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for the next poll, and every test starts and stops a server.
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def route(self, method: str, path: str, *responses):
        """Queue responses for a route; the last one repeats for further requests."""
        self.routes[(method, path)] = list(responses)

    def handle(self, method: str, path: str, fn):
        """A route answered by fn(request) -> (status, headers, body), for responses that depend on the query.
        A path ending in `*` answers every path that starts with what precedes it (ids inside the path)."""
        self.handlers[(method, path)] = fn

    def calls(self, method: str | None = None, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method)
                and (path is None or r["path"] == path)]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
