"""Stage `chatml`: cleaned and synthetic pair records to chat rows, with the chat template's fingerprint in the metrics.

Run: dvc repro chatml   (python -m stages.chatml --kept data/clean/kept.jsonl --base models/base ...)
"""

import argparse

from transformers import AutoTokenizer

from slmforge.chatml import convert
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from slmforge.modeling import template_fingerprint
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import require_records, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kept", required=True, help="data/clean/kept.jsonl")
    ap.add_argument("--synthetic", required=True, help="data/synth/pairs.jsonl (the oracle's pairs from documents)")
    ap.add_argument("--base", required=True, help="models/base (for the chat template)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("chatml")
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows, metrics = convert(read_jsonl(args.kept) + read_jsonl(args.synthetic), params, tokenizer)
    require_records("chatml", metrics["rows_out"], metrics["records_in"], metrics["skipped_by_reason"],
                    "see chatml.kinds, chatml.max_tokens and chatml.overflow in conf/chatml/")
    metrics["template_sha256"] = template_fingerprint(tokenizer)
    atomic_write_jsonl(args.out, rows)
    atomic_write_json(args.metrics, metrics)
    print(f"chatml: {metrics['rows_out']} rows from {metrics['records_in']} records "
          f"({metrics['truncated']} truncated, {metrics['skipped']} skipped) -> {args.out}")


if __name__ == "__main__":
    run(main)
