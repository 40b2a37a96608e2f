"""Stage `synthesize`: question/answer pairs made by the oracle from each document, with citations.

Run: dvc repro synthesize   (python -m stages.synthesize --kept data/clean/kept.jsonl --out data/synth/pairs.jsonl ...)
"""

import argparse

from slmforge.cost import attach_budget, load_cost_params, parse_spent
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl, write_run_facts
from slmforge.oracle.client import open_oracle, split_run_facts
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.synthesis import has_documents, no_document_metrics, synthesize


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kept", required=True, help="data/clean/kept.jsonl")
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
    params, cost_params = load_params("synthesize"), load_cost_params()
    oracle_params = cost_params.oracle
    records = read_jsonl(args.kept)
    if not has_documents(records):  # nothing to ask: no model is loaded
        pairs, metrics, oracle = [], no_document_metrics(), None
    else:
        oracle = open_oracle(oracle_params, args.cache, args.oracle_model, args.oracle_pin)
        attach_budget(oracle, "synthesize", cost_params, parse_spent(args.spent), records=records)
        pairs, metrics = synthesize(records, oracle, params)
    atomic_write_jsonl(args.out, pairs)
    atomic_write_jsonl(args.failures, oracle.failures if oracle else [])
    metrics, facts = split_run_facts(metrics)
    atomic_write_json(args.metrics, metrics)
    write_run_facts(args.run_facts, {"stage": "synthesize", **facts})
    o = facts["oracle"]
    print(f"synthesize: {metrics['pairs']} pairs from {metrics['documents']} documents; oracle calls "
          f"{o['calls']}, cache hits {o['cache_hits']}, ${o['usd']:.4f}")


if __name__ == "__main__":
    run(main)
