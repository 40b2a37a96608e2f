"""A Hugging Face Hub on 127.0.0.1 speaking the endpoints huggingface_hub calls to create a repository and commit a
folder: POST /api/repos/create, /api/models/{repo}/preupload/{rev} (every file "regular", so its bytes travel
base64 in the commit) and /api/models/{repo}/commit/{rev} (NDJSON). It keeps what arrives and every request."""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


class Hub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}, "commits": [...]}
        self.requests: list[dict] = []  # method, path, headers, body of every request
        self.cards_validated = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                hub.requests.append({"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                if self.headers.get("Authorization", "") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                path = self.path.split("?")[0]
                if path == "/api/validate-yaml":  # the card's front matter must be a YAML mapping, as the Hub checks
                    content = json.loads(body)["content"]
                    head = content.split("---")[1] if content.startswith("---") else ""
                    try:
                        ok = isinstance(yaml.safe_load(head), dict)
                    except yaml.YAMLError:
                        ok = False
                    hub.cards_validated += 1
                    return self._send(200 if ok else 400, {"errors": [] if ok else [{"message": "bad metadata"}],
                                                           "warnings": []})
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    hub.repos.setdefault(repo, {"private": req.get("visibility") == "private", "files": {},
                                                "commits": []})
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                parts = path.split("/")  # ['', 'api', 'models', org, name, 'preupload'|'commit', rev]
                if len(parts) >= 7 and parts[1:3] == ["api", "models"]:
                    repo, action = f"{parts[3]}/{parts[4]}", parts[5]
                    if repo not in hub.repos:
                        return self._send(404, {"error": f"Repository {repo} not found"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False} for f in files]})
                    if action == "commit":
                        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                        for line in lines:
                            if line["key"] == "file":
                                hub.repos[repo]["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        hub.repos[repo]["commits"].append(lines[0]["value"])
                        return self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'1' * 40}",
                                                "commitOid": "1" * 40})
                return self._send(404, {"error": f"no such endpoint {self.path}"})

            def do_GET(self):
                hub.requests.append({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": b""})
                return self._send(404, {"error": f"no such endpoint {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token = "hf_" + secrets.token_hex(16)  # made for this run: found anywhere else, it leaked
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Hub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
