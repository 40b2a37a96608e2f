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
    metrics = {}
    for stage, path in parse_spent(args.stage).items():
        # A folder (metrics/eval: one file per domain) is one stage run per file: their figures add up. The per-run
        # figures (calls, cache hits, dollars) are in each run's facts (runs-dir/STAGE.json or runs-dir/STAGE/D.json).
        path, runs = Path(path), Path(args.runs_dir)
        pairs = ([(p, runs / stage / p.name) for p in sorted(path.glob("*.json"))] if path.is_dir()
                 else [(path, runs / f"{stage}.json")])
        oracle: dict = {}
        for metrics_file, facts_file in pairs:
            m = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            facts = json.loads(facts_file.read_text()) if facts_file.exists() else {}
            for k, v in {**(m.get("oracle") or {}), **(facts.get("oracle") or {})}.items():
                oracle[k] = oracle.get(k, 0) + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        metrics[stage] = {"oracle": oracle}
    summary = cost_summary(metrics, load_params("oracle"))
    atomic_write_json(args.metrics, summary)
    atomic_write_text(args.report, cost_markdown(summary))
    t = summary["total"]
    print(f"cost: ${t['usd']:.4f} paid, ${t['usd_saved']:.4f} saved by the cache; {t['calls']} calls, "
          f"{t['cache_hits']} cache hits (oracle.max_usd ${summary['ceiling_usd']:.2f}) -> {args.report}")


if __name__ == "__main__":
    run(main)
