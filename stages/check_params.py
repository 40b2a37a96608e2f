"""Stage `check_params`: stop the pipeline when params.yaml is not the composition of conf/ or holds a bad value.

Run: dvc repro check_params   (python -m stages.check_params --out metrics/params_check.json)
DVC composes conf/ only on `dvc exp run`, so after an edit of conf/ a plain `dvc repro` would see no
changed param and run nothing, or run on the old values. This stage depends on conf/, so any edit of it
runs this check first; its output never changes, so it never makes another stage run. (A -S override of
`dvc exp run` changes params.yaml, not conf/, and DVC composed that file itself; every stage also checks.)
"""

import argparse

from slmforge.io import atomic_write_json
from slmforge.params import check_params_fresh
from slmforge.runner import run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    atomic_write_json(args.out, {"params_yaml_is_composition_of_conf": True})
    print("check_params: params.yaml is the composition of conf/, and every value in it is valid")


if __name__ == "__main__":
    run(main)
