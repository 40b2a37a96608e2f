"""Stage `domains`: reports/domains.md, every domain's verdict side by side (from metrics/eval/<domain>.json).

Run: dvc repro domains   (python -m stages.domains --eval-dir metrics/eval --out reports/domains.md)
"""

import argparse
import json
from pathlib import Path

from slmforge.domains import render
from slmforge.io import atomic_write_text
from slmforge.params import check_params_fresh, load_domains
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--eval-dir", required=True, help="metrics/eval: one <domain>.json per evaluate@<domain>")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    domains = load_domains()
    results = {name: json.loads((Path(args.eval_dir) / f"{name}.json").read_text())
               for name in domains if (Path(args.eval_dir) / f"{name}.json").exists()}
    atomic_write_text(args.out, render(results, domains))
    print(f"domains: " + ", ".join(f"{n} {r['verdict']}" for n, r in results.items()) + f" -> {args.out}")


if __name__ == "__main__":
    run(main)
