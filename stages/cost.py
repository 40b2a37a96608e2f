"""Stage `cost`: what the oracle cost the pipeline, per stage and in total (paid, and saved by the cache), against
the ceilings.

Run: dvc repro cost   (python -m stages.cost --stage synthesize=metrics/synthesize.json ... --metrics metrics/runs/cost.json)
"""

import argparse
import json
from pathlib import Path

from slmforge.cost import cost_markdown, cost_summary, parse_spent
from slmforge.io import atomic_write_json, atomic_write_text
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stage", nargs="+", required=True, help="STAGE=METRICS of every oracle stage")
    ap.add_argument("--runs-dir", required=True, help="the stages' run facts (metrics/runs): calls, hits, dollars")
    ap.add_argument("--metrics", required=True, help="metrics/runs/cost.json")
    ap.add_argument("--report", required=True, help="reports/cost.md")
    args = ap.parse_args(argv)
    check_params_fresh()
    metrics = {stage: json.loads(Path(path).read_text()) for stage, path in parse_spent(args.stage).items()}
    for stage, m in metrics.items():  # the per-run figures (calls, cache hits, dollars) are in the run facts
        facts = Path(args.runs_dir) / f"{stage}.json"
        run_oracle = json.loads(facts.read_text()).get("oracle", {}) if facts.exists() else {}
        m["oracle"] = {**(m.get("oracle") or {}), **run_oracle}
    summary = cost_summary(metrics, load_params("oracle"))
    atomic_write_json(args.metrics, summary)
    atomic_write_text(args.report, cost_markdown(summary))
    t = summary["total"]
    print(f"cost: ${t['usd']:.4f} paid, ${t['usd_saved']:.4f} saved by the cache; {t['calls']} calls, "
          f"{t['cache_hits']} cache hits (oracle.max_usd ${summary['ceiling_usd']:.2f}) -> {args.report}")


if __name__ == "__main__":
    run(main)
