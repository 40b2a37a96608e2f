"""The `slmforge` command: `compose` writes params.yaml from conf/; `chat` talks to base + adapter;
`merge` exports a merged model; `serve` answers OpenAI-compatible requests for the base and every
adapter; `export` writes a merged model or a GGUF with its parity check; `publish` uploads to the Hub; `score` scores records with the student scorer; `doctor` says what this
machine can run; `push` shares every run with the team (`dvc push --run-cache` and the outputs its records name);
`verify` re-runs the pipeline in a temporary clone and says which stages' outputs differ from dvc.lock;
`cost` forecasts what the oracle will cost before anything runs; `annotate` writes human gold scores.

Run: slmforge chat | slmforge serve [--vllm] | slmforge export | slmforge publish | slmforge merge --out models/merged | slmforge score FILE --out OUT | slmforge doctor |
slmforge compose [OVERRIDE ...] | slmforge push [--remote NAME] | slmforge verify [--until STAGE] | slmforge cost |
slmforge annotate

serve, export, publish, push, verify and cost are parsed and run by cli_ship.py.
"""

from __future__ import annotations

import argparse
import sys

from slmforge import cli_ship as ship
from slmforge.runner import run

CHAT_HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt and start over
  /system         show the system prompt
  /help           this list
  /exit, /quit    leave (so does end of input, Ctrl-D)"""


COMPOSE_HELP = """Compose conf/ into params.yaml (what `dvc exp run` does before it runs), check every value, and
write it. Overrides are written on the first line of params.yaml, so every stage knows them and accepts the
file as fresh:

  slmforge compose lora.r=8 && dvc repro          # run the pipeline with lora.r=8 (until the next compose)
  slmforge compose model=llama32_3b train=gpu     # pick other options of the groups in conf/
  slmforge compose 'sources=[sample,files]'       # a list of sources
  slmforge compose                                # back to conf/ as it is

`dvc exp run -S lora.r=8` does the same as an experiment. A bad key or value stops here in one line."""


def chat_loop(session) -> None:
    """Read a line, answer it streamed; slash commands steer the session."""
    try:
        import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
    except ImportError:
        pass
    print("slmforge chat: /help lists commands, /exit leaves.", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(flush=True)
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as a shell does
            print(flush=True)
            continue
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command in ("/exit", "/quit"):
            return
        if command == "/help":
            print(CHAT_HELP, flush=True)
        elif command == "/reset":
            session.reset()
            print("(conversation reset; system prompt kept)", flush=True)
        elif command == "/system" and rest.strip():
            session.set_system(rest.strip())
            print("(system prompt set; conversation reset)", flush=True)
        elif command == "/system":
            print(f"(system prompt: {session.system!r})" if session.system else "(no system prompt)", flush=True)
        elif command.startswith("/"):
            print(f"(unknown command {command}: /help lists them)", flush=True)
        else:
            answer(session, line)


def answer(session, line: str) -> None:
    from slmforge.errors import UserError

    dropped = session.dropped_turns
    sys.stdout.write("model> ")
    sys.stdout.flush()
    reply = session.send(line)
    try:
        for piece in reply:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except UserError as exc:  # a message too long for the context: say so and keep chatting
        print(f"\n(error: {exc})", flush=True)
        return
    except KeyboardInterrupt:  # Ctrl-C while answering stops the answer, not the chat
        reply.close()
        sys.stdout.write(" [stopped]")
    print(flush=True)
    if session.dropped_turns > dropped:
        print(f"(context full: dropped the oldest {session.dropped_turns - dropped} turn(s))", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="slmforge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compose", help="compose conf/ into params.yaml as `dvc exp run` does",
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=COMPOSE_HELP)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama32_3b lora.r=8 'sources=[files]'")
    p.add_argument("--conf", default="conf")
    p.add_argument("--out", default="params.yaml")

    p = sub.add_parser("chat", help="chat with the base model and the trained adapter, streamed")
    p.add_argument("--base", default="models/base")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--adapter", default="models/adapters/all")
    p.add_argument("--no-adapter", action="store_true", help="chat with the base model alone")
    p.add_argument("--system", default=None, help="system prompt (/system TEXT changes it in the chat)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--params", default="params.yaml", help="params file whose `model` section says how to load")

    p = sub.add_parser("merge", help="fold the adapter into full-precision base weights and save the model")
    p.add_argument("--base", default="models/base")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--adapter", default="models/adapters/all")
    p.add_argument("--out", default="models/merged")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")

    ship.add_serve_export_publish(sub)

    sub.add_parser("doctor", help="what this machine can run: GPU, bitsandbytes, packages, DVC, keys")

    p = sub.add_parser("score", help="score records with the trained student scorer (the oracle's cheap stand-in)")
    p.add_argument("file", help="JSONL of chat rows ({id, messages}) or raw records ({id, prompt, response} / {id, text})")
    p.add_argument("--out", required=True, help="JSONL written: {id, scores, overall, tier} per record")
    p.add_argument("--scorer", default="models/scorer")
    p.add_argument("--base", default="models/base")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--batch-size", type=int, default=16)
    ship.add_push_verify_cost(sub)
    p = sub.add_parser("annotate", help="score the calibration sample by hand, one key per score, into a gold file")
    p.add_argument("--sample", default="data/calibration/sample.jsonl", help="calibrate's sample, with the oracle's "
                   "labels")
    p.add_argument("--chatml", default="data/chatml/all.jsonl", help="the chat rows (the text shown)")
    p.add_argument("--gold", default="data/gold/annotations.jsonl", help="the gold file written (and resumed)")
    p.add_argument("--which", choices=["main", "validation", "all"], default="all", help="which sample's rows")
    p.add_argument("--by", default=None, help="who is annotating (recorded in each row; default: annotate)")
    p.add_argument("--params", default="params.yaml", help="params file whose `rubric` gives the dimensions")
    args = ap.parse_args(argv)

    def command() -> None:
        if args.command in ship.COMMANDS:
            ship.COMMANDS[args.command](args)
        elif args.command == "compose":
            from slmforge.params import compose_to_file

            compose_to_file(args.conf, args.out, args.overrides)
            print(f"wrote {args.out} from {args.conf}/" + (f" with {' '.join(args.overrides)} (named on its first "
                                                           "line, so `dvc repro` runs with them)" if args.overrides else ""))
        elif args.command == "chat":
            from slmforge.adapter_chat import ChatSession, load_chat_model
            from slmforge.modeling import set_threads
            from slmforge.params import load_params

            params = load_params("model", args.params)
            set_threads()
            model, tokenizer = load_chat_model(params, args.base, args.pin, None if args.no_adapter else args.adapter)
            chat_loop(ChatSession(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                                  template_kwargs=params.chat_template_kwargs))
        elif args.command == "merge":
            from slmforge.adapter_folder import read_adapter_card
            from slmforge.merge import MERGE_HINT, merge_adapter, merge_warning

            warning = merge_warning(read_adapter_card(args.adapter, MERGE_HINT))
            if warning:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            info = merge_adapter(args.base, args.pin, args.adapter, args.out, args.dtype)
            print(f"wrote {args.out}: {args.base} + {args.adapter} merged, {info['dtype']}")
        elif args.command == "score":
            from collections import Counter
            from pathlib import Path

            from slmforge.io import atomic_write_jsonl, read_jsonl
            from slmforge.modeling import set_threads
            from slmforge.student import load_scorer, predict

            from slmforge.errors import UserError

            if not Path(args.file).is_file():
                raise UserError(f"{args.file}: no such file (a JSONL of records to score)")
            rows = read_jsonl(args.file)
            set_threads()
            model, tokenizer, card = load_scorer(Path(args.scorer), Path(args.base), Path(args.pin))
            scores = predict(model, tokenizer, rows, card, args.batch_size)
            atomic_write_jsonl(args.out, scores)
            tiers = Counter(s["tier"] for s in scores)
            print(f"scored {len(scores)} records -> {args.out}; tiers {dict(sorted(tiers.items()))}")
        elif args.command == "annotate":
            from pathlib import Path

            from slmforge.annotate import annotate, terminal_keys
            from slmforge.errors import UserError
            from slmforge.io import read_jsonl
            from slmforge.params import load_params

            if not Path(args.sample).is_file():
                raise UserError(f"{args.sample}: no calibration sample: run `dvc repro calibrate` first")
            chats = {r["id"]: r for r in read_jsonl(args.chatml)} if Path(args.chatml).is_file() else {}

            def write(text: str) -> None:
                sys.stdout.write(text)
                sys.stdout.flush()

            with terminal_keys() as read_key:
                try:
                    annotate(read_jsonl(args.sample), chats, args.gold, load_params("rubric", args.params), read_key,
                             write, args.which, args.by)
                except KeyboardInterrupt:  # Ctrl-C: every finished row is saved already
                    write("\ninterrupted: the rows scored so far are saved\n")
        elif args.command == "doctor":
            from slmforge.doctor import report

            for line in report()[0]:
                print(line)

    run(command)


if __name__ == "__main__":
    main()
