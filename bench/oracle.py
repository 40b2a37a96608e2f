"""Oracle: labelling 1,000 records again with every answer in the cache: calls made and seconds.

The Claude backend against a real HTTP server on 127.0.0.1 that speaks the Messages API (the tests' own),
so the cold run is a real client making real requests, and every request the server receives is counted.
- cold (the baseline): an empty answer store; every record is one call.
- warm: the stage as DVC re-runs it: its cache folder deleted (DVC removes a stage's outputs before it runs
  it), the answer store beside the repo full. Goal: 0 calls, under 1 s per 1,000 records.

Run: python -m bench.oracle [--records 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, RUNS, median, summary


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    from bench.curation import generate

    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]},
                                         {"role": "assistant", "content": r["response"]}],
             "meta": {"origin": "bench"}} for r in generate(n, seed=seed)]


def bench(records: int = 1000, runs: int = RUNS) -> dict:
    from slmforge.labeling import label_rows
    from slmforge.oracle.cache import AnswerCache
    from slmforge.oracle.claude import ClaudeBackend
    from slmforge.oracle.client import Oracle
    from slmforge.params import LabelParams, OracleParams, RubricParams, build, compose
    from tests.oracle.messages_server import MessagesServer

    conf = compose(ROOT / "conf", ["oracle=claude"])
    rubric = build(RubricParams, conf["rubric"], "rubric")
    drop = build(LabelParams, conf["label"], "label").drop_tiers
    rows = chat_rows(records)
    rng = random.Random(0)

    def responder(body: dict) -> str:
        return json.dumps({d: rng.randint(rubric.min_score, rubric.max_score) for d in rubric.dimensions})

    cold_s, warm_s, warm_calls, cold_calls = [], [], [], []
    key_env = "SLMFORGE_BENCH_FAKE_KEY"  # a loopback server: no real key is read or needed
    os.environ[key_env] = "bench-not-a-key"
    with MessagesServer(responder) as server, tempfile.TemporaryDirectory() as tmp:
        params = build(OracleParams, {**conf["oracle"], "base_url": server.base_url, "api_key_env": key_env,
                                      "max_retries": 0}, "oracle")
        for run in range(runs):
            store = Path(tmp) / f"store{run}"

            def label(out: str) -> tuple[float, int]:
                before = len(server.requests)
                oracle = Oracle(params, AnswerCache(Path(tmp) / out, store), ClaudeBackend(params))
                t = time.perf_counter()
                labels, failed = label_rows(rows, oracle, rubric, drop, desc="bench label")
                seconds = time.perf_counter() - t
                assert len(labels) == len(rows) and not failed, f"{len(failed)} records failed"
                return seconds, len(server.requests) - before

            seconds, calls = label(f"cold{run}")
            cold_s.append(seconds), cold_calls.append(calls)
            seconds, calls = label(f"warm{run}")  # a new cache folder, as after DVC removed the stage's outputs
            warm_s.append(seconds), warm_calls.append(calls)
    per_1k = 1000 / records
    print(f"  oracle {records} records: cold {median(cold_s):.2f} s ({median(cold_calls):.0f} calls), warm "
          f"{median(warm_s):.3f} s ({max(warm_calls)} calls)", flush=True)
    return {"oracle.warm_calls": max(warm_calls),
            "oracle.warm_s_per_1k": round(median(warm_s) * per_1k, 4),
            "oracle.cold_s_per_1k": round(median(cold_s) * per_1k, 3),
            "oracle.cold_calls": int(median(cold_calls)),
            "oracle.warm_speedup_vs_cold": round(median(cold_s) / median(warm_s), 1),
            "oracle.seconds": {"cold": summary(cold_s, 3), "warm": summary(warm_s, 4)},
            "oracle.setup": {"records": records, "backend": "claude SDK against a Messages API server on 127.0.0.1",
                             "concurrency": params.concurrency}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args(argv)
    print(json.dumps(bench(args.records, args.runs), indent=2))


if __name__ == "__main__":
    main()
