"""Stage `clean`: raw records of every source to data/clean/kept.jsonl and rejected.jsonl (with reasons).

Run: dvc repro clean   (python -m stages.clean --raw-dir data/raw --kept data/clean/kept.jsonl ...)
"""

import argparse
from collections import Counter
from pathlib import Path

from slmforge.curation.clean import clean
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl, write_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw-dir", required=True)
    ap.add_argument("--kept", required=True)
    ap.add_argument("--rejected", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--run-facts", required=True, help="this run's timings (git-ignored, read by no stage)")
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("clean")
    records, malformed, at_collect = [], [], Counter()
    for path in sorted(Path(args.raw_dir).glob("*.jsonl")):
        if path.name.endswith(".quarantine.jsonl"):
            at_collect[path.name.removesuffix(".quarantine.jsonl")] = len(read_jsonl(path, []))
        else:
            records.extend(read_jsonl(path, malformed, max_line_bytes=params.max_record_bytes))
    kept, rejected, metrics = clean(records, params, malformed=malformed)
    metrics["quarantined_at_collect"] = dict(sorted(at_collect.items()))
    atomic_write_jsonl(args.kept, kept)
    atomic_write_jsonl(args.rejected, rejected)
    timings = {"seconds": metrics.pop("seconds"), "records_per_s": metrics.pop("records_per_s")}
    atomic_write_json(args.metrics, metrics)
    write_run_facts(args.run_facts, {"stage": "clean", **timings})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(metrics["reasons"].items(), key=lambda kv: -kv[1]))
    print(f"clean: {metrics['records_in']} in, {metrics['kept']} kept, {metrics['rejected']} rejected "
          f"({reasons or 'none'}) -> {args.kept}")


if __name__ == "__main__":
    run(main)
