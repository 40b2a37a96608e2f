"""Stage `oracle_model`: materialise the local oracle's own model (oracle.model: the embedded GGUF, a hub id pinned
to a commit, or a folder), by the same code as `base` but never the model under training.

Run: dvc repro oracle_model   (python -m stages.oracle_model --out-dir models/oracle --pin models/oracle.json)
With oracle=claude there are no local weights: the pin names the API model and the folder holds a note.
"""

import argparse
from pathlib import Path

from slmforge.io import atomic_dir, atomic_write_json
from slmforge.modeling import materialise, oracle_model_params
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--pin", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    oracle = load_params("oracle")
    if oracle.backend != "local":
        with atomic_dir(args.out_dir) as tmp:
            (Path(tmp) / "README.md").write_text(f"The oracle is {oracle.backend}:{oracle.model}: no local weights.\n")
        atomic_write_json(args.pin, {"name": "oracle", "source": oracle.backend, "model": oracle.model})
        print(f"oracle_model: {oracle.backend}:{oracle.model} (no local weights) -> {args.pin}")
        return
    info = materialise(oracle_model_params(oracle), args.out_dir, args.pin)
    print(f"oracle_model: {oracle.model} ({info['source']}) -> {args.out_dir}")


if __name__ == "__main__":
    run(main)
