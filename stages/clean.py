"""Stage `clean`: raw records of every configured source to data/clean/kept.jsonl and rejected.jsonl (with reasons).

Run: dvc repro clean   (python -m stages.clean --raw 'data/raw/{source}.jsonl' --kept data/clean/kept.jsonl ...)
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from slmforge.curation.clean import clean, setting_of
from slmforge.errors import UserError
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl, write_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import require_records, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True, help="each source's records: data/raw/{source}.jsonl")
    ap.add_argument("--quarantine", required=True, help="each source's quarantine: data/raw/{source}.quarantine.jsonl")
    ap.add_argument("--kept", required=True)
    ap.add_argument("--rejected", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--run-facts", default=None, help="(optional) this run's timings (git-ignored, read by no stage)")
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("clean")
    # Exactly the configured sources (clean.sources, derived from `sources`): the file of a source dropped from
    # the configuration stays on disk (DVC never deletes an old stage's output) and must not come back.
    raw = {name: Path(args.raw.replace("{source}", name)) for name in params.sources}
    held = {name: Path(args.quarantine.replace("{source}", name)) for name in params.sources}
    records, malformed, at_collect = [], [], Counter()
    for name, path in raw.items():
        if not path.exists():
            raise UserError(f"{path} not found: source `{name}` is configured but not collected; run "
                            f"`dvc repro collect@{name}`")
        records.extend(read_jsonl(path, malformed, max_line_bytes=params.max_record_bytes))
        if held[name].exists():
            at_collect[name] = len(read_jsonl(held[name], []))
    ignored = sorted(str(p) for folder in {p.parent for p in raw.values()} for p in folder.glob("*.jsonl")
                     if p not in raw.values() and p not in held.values())
    if ignored:
        print(f"clean: ignored {', '.join(ignored)}: not from a configured source ({', '.join(raw)})", file=sys.stderr)
    kept, rejected, metrics = clean(records, params, malformed=malformed)
    reasons = metrics["reasons"]
    top = max(reasons, key=reasons.get) if reasons else None
    require_records("clean", len(kept), metrics["records_in"], reasons,
                    f"loosen {setting_of(top)} in conf/clean/default.yaml" if top else
                    f"the configured sources ({', '.join(raw)}) gave none: see metrics/collect/")
    metrics["quarantined_at_collect"] = dict(sorted(at_collect.items()))
    metrics["sources"], metrics["ignored_files"] = list(raw), ignored
    atomic_write_jsonl(args.kept, kept)
    atomic_write_jsonl(args.rejected, rejected)
    timings = {"seconds": metrics.pop("seconds"), "records_per_s": metrics.pop("records_per_s")}
    atomic_write_json(args.metrics, metrics)
    write_run_facts(args.run_facts, {"stage": "clean", **timings})
    summary = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    print(f"clean: {metrics['records_in']} in, {metrics['kept']} kept, {metrics['rejected']} rejected "
          f"({summary or 'none'}) -> {args.kept}")


if __name__ == "__main__":
    run(main)
