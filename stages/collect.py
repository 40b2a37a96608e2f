"""Stage `collect@SOURCE`: pull raw records from one configured source into data/raw/SOURCE.jsonl.

Run: dvc repro collect   (python -m stages.collect --source sample --out data/raw/sample.jsonl ...)
"""

import argparse
import os
import time
import uuid
from collections import Counter
from datetime import datetime, timezone

from slmforge.io import atomic_write_json, atomic_write_jsonl, write_run_facts
from slmforge.params import check_params_fresh, load_source_params
from slmforge.row_identity import origin_of
from slmforge.runner import run
from slmforge.sources import COLLECTORS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quarantine", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--run-facts", default=None, help="(optional) this run's time and run id (git-ignored, read by no stage)")
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_source_params(args.source)
    start = time.perf_counter()
    # A run id ties every record of a live pull to it (a local source's records carry none: they are no
    # snapshot); inside `dvc exp run` it is the experiment's name.
    run_id = os.environ.get("DVC_EXP_NAME") or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    quarantine: list[dict] = []
    stats: dict = {}  # what the source reports of the pull: pages, calls, quota left, seed-filter drops
    records = COLLECTORS[params.kind](params, run_id=run_id, quarantine=quarantine, stats=stats)
    for rec in records:  # `source` is the configured name: two `files` sources stay apart downstream
        rec["source"] = args.source
    atomic_write_jsonl(args.out, records)
    atomic_write_jsonl(args.quarantine, quarantine)
    atomic_write_json(args.metrics, {
        "records": len(records), "quarantined": len(quarantine),
        "by_kind": dict(Counter(r["kind"] for r in records)),
        "by_origin": dict(sorted(Counter(origin_of(r) for r in records).items())),
        "source": stats,
    })
    write_run_facts(args.run_facts, {"stage": f"collect@{args.source}", "run_id": run_id,
                                     "seconds": round(time.perf_counter() - start, 2)})
    print(f"collect@{args.source}: {len(records)} records, {len(quarantine)} quarantined -> {args.out}")


if __name__ == "__main__":
    run(main)
