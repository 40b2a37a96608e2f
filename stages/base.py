"""Stage `base`: materialise the base model (embedded GGUF to safetensors, or a pinned hub commit).

Run: dvc repro base   (python -m stages.base --out-dir models/base --pin models/base.json)
"""

import argparse

from slmforge.modeling import materialise
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--pin", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    params = load_params("model")
    info = materialise(params, args.out_dir, args.pin)
    print(f"base: {info['name']} ({info['source']}) -> {args.out_dir}")


if __name__ == "__main__":
    run(main)
