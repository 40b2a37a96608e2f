"""Stage `split`: train/val/test stratified by source and oracle tier, fact probes held out, leakage gated.

Run: dvc repro split   (python -m stages.split --chatml data/chatml/all.jsonl --labels data/labels/labels.jsonl
                         --train data/split/train.jsonl --val ... --test ... --probes ... --metrics metrics/split.json)
"""

import argparse

import numpy as np

from slmforge.curation.dedup import embed, load_sentence_encoder
from slmforge.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import require_records, run
from slmforge.split import stratified_split

ENCODER_MAX_TOKENS = 256  # MiniLM's own limit: a question's opening says what it asks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chatml", required=True)
    ap.add_argument("--labels", required=True)
    for name in ("train", "val", "test", "probes"):  # the files of the split, as dvc.yaml names them
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("split")
    rows = read_jsonl(args.chatml)
    labels = {label["id"]: label for label in read_jsonl(args.labels)}

    def embed_texts(texts: list[str]):
        if not texts:  # nothing left to compare: no encoder to load before the stage says so
            return np.zeros((0, 1), dtype=np.float32)
        # Loaded when the split asks (once), so a missing label stops the stage before the encoder loads.
        encoder = load_sentence_encoder(params.encoder, ENCODER_MAX_TOKENS, "auto", "split.encoder")
        return embed(texts, encoder, params.encoder_batch_size)

    splits, metrics = stratified_split(rows, labels, params, embed=embed_texts)
    removed = {**{f"tier {t} (label.drop_tiers)": n for t, n in metrics["dropped_by_tier"].items()},
               "duplicate_ids": metrics["duplicate_ids"]}
    require_records("split", len(splits["train"]), metrics["rows_in"], removed,
                    "nothing is left to train on: empty label.drop_tiers, or look at metrics/label.json")
    for name, split_rows in splits.items():
        atomic_write_jsonl(getattr(args, name), split_rows)
    atomic_write_json(args.metrics, metrics)
    leak = metrics["leakage"]
    print("split: " + ", ".join(f"{k}={v}" for k, v in metrics["counts"].items())
          + f"; dropped_by_label={metrics['dropped_by_label']} duplicate_ids={metrics['duplicate_ids']}"
          + f"; leakage moved val={leak['moved_val']} test={leak['moved_test']}")


if __name__ == "__main__":
    run(main)
