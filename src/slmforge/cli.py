"""The `slmforge` command: `slmforge compose [OVERRIDE ...]` writes params.yaml from conf/."""

from __future__ import annotations

import argparse

from slmforge.runner import run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="slmforge", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compose", help="compose conf/ into params.yaml as `dvc exp run` does")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama32_3b lora.r=8")
    p.add_argument("--conf", default="conf")
    p.add_argument("--out", default="params.yaml")
    args = ap.parse_args(argv)

    def command() -> None:
        if args.command == "compose":
            from slmforge.params import compose_to_file

            compose_to_file(args.conf, args.out, args.overrides)
            print(f"wrote {args.out} from {args.conf}/" + (f" with {' '.join(args.overrides)}" if args.overrides else ""))

    run(command)


if __name__ == "__main__":
    main()
