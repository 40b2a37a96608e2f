"""A run of the label stage's oracle in batch mode, as its own process, so a test can kill it mid-poll:
`python -m tests.oracle.batch_worker BASE_URL OUT_DIR N` asks N scoring requests through the Message Batches API
(against the loopback server at BASE_URL; the store is $SLMFORGE_CACHE) and prints the answers as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.claude import ClaudeBackend
from slmforge.oracle.client import Oracle
from slmforge.oracle.types import Request
from slmforge.params import OracleParams, build

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}


def requests(n: int) -> list[Request]:
    return [Request(id=f"rec{k}", system="Score it. JSON only: {\"score\": <0-10>}.", prompt=f"value={k}",
                    schema=SCHEMA, max_tokens=16) for k in range(n)]


def main(base_url: str, out: str, n: int) -> None:
    conf = yaml.safe_load((ROOT / "conf/oracle/claude.yaml").read_text(encoding="utf-8"))
    params = build(OracleParams, {**conf, "base_url": base_url, "batch": True, "batch_poll_s": 0.05,
                                  "max_retries": 1}, "oracle")
    oracle = Oracle(params, AnswerCache(out), ClaudeBackend(params))
    print(json.dumps(oracle.ask(requests(n), "label", batch=True)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
