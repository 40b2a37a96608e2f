"""Stage `label`: every chat row scored by the oracle on the rubric (dimension scores, overall, tier), once the
calibration gate allows it.

Run: dvc repro label   (python -m stages.label --chatml data/chatml/all.jsonl --calibration metrics/calibration.json ...)
"""

import argparse
import json
import sys
from pathlib import Path

from slmforge.calibration import open_gate
from slmforge.cost import attach_budget, load_cost_params, parse_spent
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl, write_run_facts
from slmforge.labeling import label_metrics, label_rows, labels_file, removed_by_label
from slmforge.oracle.client import open_oracle, split_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import require_records, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chatml", required=True, help="data/chatml/all.jsonl")
    ap.add_argument("--calibration", required=True, help="metrics/calibration.json (the verdicts)")
    ap.add_argument("--oracle-model", required=True, help="models/oracle (the local oracle's own model)")
    ap.add_argument("--oracle-pin", required=True, help="models/oracle.json")
    ap.add_argument("--cache", required=True, help="this stage's oracle cache folder (a DVC output)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--failures", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--run-facts", default=None, help="(optional) oracle calls, cache hits, time (git-ignored, read by no stage)")
    ap.add_argument("--spent", nargs="*", default=[], help="STAGE=METRICS of the oracle stages before this one")
    args = ap.parse_args(argv)
    check_params_fresh()
    params, cost_params = load_params("label"), load_cost_params()
    rubric, oracle_params = cost_params.rubric, cost_params.oracle
    cal = json.loads(Path(args.calibration).read_text())
    gate, failures = open_gate(cal, cost_params.calibration.gate, oracle_params.backend)
    for line in failures:
        print(f"warning: label: calibration gate (calibration.gate={gate}): {line}", file=sys.stderr)
    oracle = open_oracle(oracle_params, args.cache, args.oracle_model, args.oracle_pin)
    rows = read_jsonl(args.chatml)
    attach_budget(oracle, "label", cost_params, parse_spent(args.spent), rows=rows)
    labels, failed = label_rows(rows, oracle, rubric, params.drop_tiers, batch=oracle_params.batch)
    metrics = {**label_metrics(labels, failed, len(rows)), "gate": gate, "calibration_verdict": cal["verdict"],
               "gate_failures": failures, **oracle.metrics()}
    require_records("label", metrics["labelled"] - metrics["dropped"], len(rows), removed_by_label(labels, failed),
                    f"label.drop_tiers={params.drop_tiers} drops every labelled row; see metrics/calibration.json")
    atomic_write_jsonl(args.out, labels_file(rows, labels))
    atomic_write_jsonl(args.failures, oracle.failures)
    metrics, facts = split_run_facts(metrics)
    atomic_write_json(args.metrics, metrics)
    write_run_facts(args.run_facts, {"stage": "label", **facts})
    o = facts["oracle"]
    print(f"label: {metrics['labelled']} rows labelled, {metrics['failed']} failed, {metrics['dropped']} dropped; "
          f"tiers {metrics['tiers']}; oracle calls {o['calls']}, cache hits {o['cache_hits']}, ${o['usd']:.4f}")


if __name__ == "__main__":
    run(main)
