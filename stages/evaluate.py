"""Stage `evaluate`: tuned against base on the test split and the held-out fact probes: per-item metrics, the
oracle's pairwise judge, paired statistics and a verdict DEPLOY / REVIEW / FAIL.

Run: dvc repro evaluate@DOMAIN   (python -m stages.evaluate --domain all --test data/split/test.jsonl ...)
One stage per domain (dvc.yaml foreach over `domains`): the domain's test items and probes, its own adapter.
"""

import argparse
import json
from pathlib import Path

from slmforge.cost import load_cost_params, parse_spent, stage_budget
from slmforge.domains import select_split
from slmforge.evaluation.compare import compare, plot_rows
from slmforge.evaluation.numerics import write_latency
from slmforge.evaluation.report import render
from slmforge.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, json_safe, read_jsonl, write_run_facts
from slmforge.oracle.client import open_oracle, split_run_facts
from slmforge.params import check_params_fresh, load_domain_params, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domain", required=True, help="a key of `domains` in params.yaml: which rows, which adapter")
    ap.add_argument("--test", required=True, help="data/split/test.jsonl")
    ap.add_argument("--probes", required=True, help="data/split/probes.jsonl (the held-out fact phrasings)")
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--oracle-model", required=True, help="models/oracle (the judge's own model, oracle=local)")
    ap.add_argument("--oracle-pin", required=True, help="models/oracle.json")
    ap.add_argument("--cache", required=True, help="this stage's oracle cache folder (the judge's answers)")
    ap.add_argument("--failures", required=True, help="judge calls the oracle could not answer")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--items", required=True)
    ap.add_argument("--plots-dir", required=True, help="data for `dvc plots`: per-source bars, judge outcomes")
    ap.add_argument("--run-facts", default=None, help="(optional) judge calls, generations found in the store (git-ignored)")
    ap.add_argument("--spent", nargs="*", default=[], help="STAGE=METRICS of the oracle stages before this one")
    ap.add_argument("--latency", required=True, help="wall-clock latency metrics (no stage depends on them)")
    args = ap.parse_args(argv)
    check_params_fresh()
    cost_params = load_cost_params()
    params = cost_params.eval
    # The judge is the pipeline's last oracle stage: its budget is the ceiling less what the others paid.
    budget = stage_budget("evaluate", cost_params, parse_spent(args.spent), [])
    oracle = open_oracle(cost_params.oracle, args.cache, args.oracle_model, args.oracle_pin, budget) if params.judge.enabled else None
    Path(args.cache).mkdir(parents=True, exist_ok=True)  # an output even with the judge off (then empty)
    rows = select_split({"test": read_jsonl(args.test), "probes": read_jsonl(args.probes)},
                        args.domain, load_domain_params(args.domain))
    result = compare(
        test_rows=rows["test"], probes=rows["probes"],
        model_params=load_params("model"), params=params,
        max_len=load_params("train").max_seq_len, base_dir=Path(args.base), base_json=Path(args.pin),
        adapter_dir=Path(args.adapter),
        oracle=oracle, domain=load_params("rubric").domain,
    )
    latency = result.pop("latency")
    write_latency(args.latency, **latency)
    atomic_write_jsonl(args.items, json_safe(result["items"]))
    atomic_write_jsonl(args.failures, oracle.failures if oracle else [])
    atomic_write_text(args.report, render(result, params.examples))
    bars, judge = plot_rows(result)
    atomic_write_text(Path(args.plots_dir) / "eval_per_source" / f"{args.domain}.json", json.dumps(bars, indent=1) + "\n")
    atomic_write_text(Path(args.plots_dir) / "eval_judge" / f"{args.domain}.json", json.dumps(judge, indent=1) + "\n")
    # How many generations the store already held says what ran, not what the models answer: a run fact.
    cached = {side: result[side].pop("generations_cached") for side in ("base", "tuned")}
    metrics, facts = split_run_facts({k: v for k, v in result.items() if k != "items"})
    atomic_write_json(args.metrics, json_safe(metrics))
    write_run_facts(args.run_facts, {"stage": f"evaluate@{args.domain}", "generations_cached": cached, **facts})
    s = result["stats"]
    lat = f"latency median {latency['tuned']['median_s']:.2f} s (base {latency['base']['median_s']:.2f} s); " \
        if latency["tuned"].get("median_s") else ""
    print(f"evaluate@{args.domain}: {lat}{result['verdict']} on {result['metric']} (Wilcoxon p {s['wilcoxon_p']:.3g}, Cohen's d "
          f"{s['cohens_d']:+.2f}, improvement {s['relative_improvement']:+.1%}); judge win rate "
          f"{s['judge_win_rate']:.2f}, inconsistency {s['judge_inconsistency']:.2f}; perplexity "
          f"{result['base']['perplexity']:.2f} -> {result['tuned']['perplexity']:.2f} -> {args.report}")


if __name__ == "__main__":
    run(main)
