"""Stage `calibrate`: the oracle labels a stratified sample; its errors give a verdict PASS / REVIEW / FAIL that
gates label.

Run: dvc repro calibrate   (python -m stages.calibrate --chatml data/chatml/all.jsonl --metrics metrics/calibration.json ...)
"""

import argparse
import json

from slmforge.calibration import calibrate
from slmforge.gold import load_gold
from slmforge.calibration_report import plot_rows, report_markdown
from slmforge.cost import attach_budget, load_cost_params, parse_spent
from slmforge.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl, write_run_facts
from slmforge.oracle.client import open_oracle, split_run_facts
from slmforge.params import check_params_fresh
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chatml", required=True, help="data/chatml/all.jsonl")
    ap.add_argument("--oracle-model", required=True, help="models/oracle (the local oracle's own model)")
    ap.add_argument("--oracle-pin", required=True, help="models/oracle.json")
    ap.add_argument("--cache", required=True, help="this stage's oracle cache folder (a DVC output)")
    ap.add_argument("--sample", required=True, help="the calibration sample with its strata and labels")
    ap.add_argument("--failures", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--plot", required=True, help="the calibration scatter's data for `dvc plots`")
    ap.add_argument("--run-facts", default=None, help="(optional) oracle calls, cache hits, time (git-ignored, read by no stage)")
    ap.add_argument("--spent", nargs="*", default=[], help="STAGE=METRICS of the oracle stages before this one")
    args = ap.parse_args(argv)
    check_params_fresh()
    cost_params = load_cost_params()
    params, rubric = cost_params.calibration, cost_params.rubric
    oracle = open_oracle(cost_params.oracle, args.cache, args.oracle_model, args.oracle_pin)
    rows = read_jsonl(args.chatml)
    attach_budget(oracle, "calibrate", cost_params, parse_spent(args.spent), rows=rows)
    result, sample_rows = calibrate(rows, oracle, rubric, params)
    # evaluate_scorer reads these metrics: only figures the answers decide stay in them, never timings
    result, facts = split_run_facts(result)
    atomic_write_jsonl(args.sample, sample_rows)
    atomic_write_jsonl(args.failures, oracle.failures)
    atomic_write_json(args.metrics, result)
    atomic_write_text(args.report, report_markdown(result))
    gold = load_gold(params.gold, rubric) if params.gold else None
    atomic_write_text(args.plot, json.dumps(plot_rows(sample_rows, gold, rubric), indent=1) + "\n")
    write_run_facts(args.run_facts, {"stage": "calibrate", **facts})
    o = facts["oracle"]
    gold = result["gold"]["verdict"] if result["gold"] else "no gold file"
    print(f"calibrate: verdict {result['verdict']} (validation {result['validation']['verdict']}, gold {gold}; gate "
          f"{result['gate']}); oracle calls {o['calls']}, cache hits {o['cache_hits']}, ${o['usd']:.4f} -> {args.report}")


if __name__ == "__main__":
    run(main)
