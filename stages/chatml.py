"""Stage `chatml`: cleaned and synthetic pair records to chat rows. Model-independent: no tokenizer, no chat
template (train and evaluate render the rows with the model's template and check its fingerprint).

Run: dvc repro chatml   (python -m stages.chatml --kept data/clean/kept.jsonl --synthetic data/synth/pairs.jsonl ...)
"""

import argparse

from slmforge.chatml import convert
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import require_records, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kept", required=True, help="data/clean/kept.jsonl")
    ap.add_argument("--synthetic", required=True, help="data/synth/pairs.jsonl (the oracle's pairs from documents)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    rows, metrics = convert(read_jsonl(args.kept) + read_jsonl(args.synthetic), load_params("chatml"))
    require_records("chatml", metrics["rows_out"], metrics["records_in"], metrics["skipped_by_reason"],
                    "see chatml.kinds in conf/chatml/")
    atomic_write_jsonl(args.out, rows)
    atomic_write_json(args.metrics, metrics)
    print(f"chatml: {metrics['rows_out']} rows from {metrics['records_in']} records ({metrics['skipped']} skipped) "
          f"-> {args.out}")


if __name__ == "__main__":
    run(main)
