"""The `slmforge` commands that ship and check a run: `serve` (OpenAI-compatible), `export` (a merged model or a
GGUF, with its parity check), `publish` (to the Hub), `push` (every run to the DVC remote), `verify` (re-run in a
clone, compare with dvc.lock) and `cost` (the oracle's forecast). cli.py parses them with the others and calls
COMMANDS[name](args).
"""

from __future__ import annotations

import sys


def add_serve_export_publish(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/models) for the base "
                                     "and every adapter on one loaded base; --vllm prints the production command")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--base", default="models/base")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--adapters-dir", default="models/adapters", help="every adapter found here is served by its folder name")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="serve this adapter as NAME (repeatable; replaces the ones found in --adapters-dir)")
    p.add_argument("--max-tokens", type=int, default=512, help="completion length when a request names none")
    p.add_argument("--params", default="params.yaml", help="params file whose `model` section says how to load")
    p.add_argument("--vllm", action="store_true", help="print the `vllm serve` command for production and exit")
    p.add_argument("--merged", default=None, help="with --vllm: serve this merged export instead of base + adapters")
    p.add_argument("--full-precision", action="store_true",
                   help="with --vllm: the base unquantised (the adapters were trained on NF4: see docs/serving.md)")

    p = sub.add_parser("export", help="merge a domain's adapter into the weights it was trained against, write it as a "
                                      "transformers folder or a GGUF, and check its parity with what evaluate measured")
    p.add_argument("--format", choices=["merged", "gguf"], required=True)
    p.add_argument("--domain", default=None, help="whose adapter (models/adapters/DOMAIN); default: the only domain")
    p.add_argument("--adapter", default=None, help="an adapter folder (default: models/adapters/DOMAIN)")
    p.add_argument("--from", dest="source", choices=["trained", "full"], default="trained",
                   help="trained: the weights the adapter learned against (NF4 dequantised, for QLoRA); full: the "
                        "original full-precision weights")
    p.add_argument("--out", default=None, help="default: exports/DOMAIN-FORMAT")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="merged weights")
    p.add_argument("--gguf-type", choices=["f16", "f32", "bf16", "q8_0"], default="f16")
    p.add_argument("--split-dir", default="data/split", help="the probes and test items the parity check answers")
    p.add_argument("--parity-items", type=int, default=16, help="test items answered besides every probe")
    p.add_argument("--metrics", default=None, help="parity metrics (default: metrics/export/DOMAIN-FORMAT.json)")
    p.add_argument("--base", default="models/base")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--params", default="params.yaml")

    p = sub.add_parser("publish", help="upload a domain's adapter (or an export) to the Hugging Face Hub with a model "
                                       "card made from the run; the token comes from HF_TOKEN only")
    p.add_argument("repo_id", help="user/name on the Hub")
    p.add_argument("--domain", default=None, help="whose adapter (default: the only domain)")
    p.add_argument("--export", default=None, help="upload this export folder (slmforge export) instead of the adapter")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card; upload nothing")
    p.add_argument("--adapters-dir", default="models/adapters")
    p.add_argument("--pin", default="models/base.json")
    p.add_argument("--lock", default="dvc.lock")
    p.add_argument("--metrics-dir", default="metrics")
    p.add_argument("--params", default="params.yaml")


def add_push_verify_cost(sub) -> None:
    p = sub.add_parser("push", help="dvc push --run-cache, plus the outputs every run record names (experiments, "
                                    "metrics), so a teammate's `dvc repro --pull` restores any run instead of running it")
    p.add_argument("--remote", "-r", default=None, help="DVC remote (default: the repository's default remote)")
    p.add_argument("--jobs", "-j", type=int, default=None)
    p = sub.add_parser("verify", help="re-run the pipeline in a temporary clone of HEAD and report, stage by stage, "
                                      "which outputs differ from the committed dvc.lock (docs/lineage.md)")
    p.add_argument("--until", default=None, help="re-run only up to and including this stage (e.g. split)")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE",
                   help="re-run only these stages, their inputs checked out from the DVC cache")
    p.add_argument("--answers", choices=["auto", "fresh", "reuse"], default="auto",
                   help="the oracle's answers: asked again from an empty store (fresh), or taken from the answer "
                        "store (reuse); auto: fresh for the local oracle, reuse for a paid API")
    p.add_argument("--workdir", default=None, help="the folder to clone in, under a new folder of its own "
                                                     "(default: the system's temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the clone afterwards, to look at what differs")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--repo", default=".", help="the repository to check (its HEAD and dvc.lock)")
    p = sub.add_parser("cost", help="what the oracle would cost the pipeline with the current params, before it runs")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--kept", default="data/clean/kept.jsonl")
    p.add_argument("--raw-dir", default="data/raw")
    p.add_argument("--chatml", default="data/chatml/all.jsonl")
    p.add_argument("--test", default="data/split/test.jsonl")
    p.add_argument("--answers", default="data/oracle_cache", help="the oracle stages' answer folders (pulled)")
    p.add_argument("--runs-dir", default="metrics/runs", help="the oracle stages' run facts: what their last runs "
                   "paid on this machine")
    p.add_argument("--oracle-model", default="models/oracle", help="the local oracle's own model (its pin keys answers)")
    p.add_argument("--oracle-pin", default="models/oracle.json")


def serve_command(args) -> None:
    from slmforge.serving import discover_adapters, parse_adapter_args

    adapters = parse_adapter_args(args.adapter) if args.adapter else discover_adapters(args.adapters_dir)
    if args.vllm:
        from slmforge.serving import vllm_command

        print(vllm_command(args.base, args.pin, adapters, merged=args.merged, nf4=not args.full_precision,
                           port=args.port))
        return
    from slmforge.modeling import set_threads
    from slmforge.params import load_params
    from slmforge.serving import Server, build_app, load_served_model

    set_threads()
    model, tokenizer = load_served_model(load_params("model", args.params), args.base, args.pin, adapters)
    print(f"serving base + {len(adapters)} adapter(s) ({', '.join(adapters) or 'none'}) on "
          f"http://{args.host}:{args.port}/v1", flush=True)
    app = build_app(model, tokenizer, list(adapters), args.max_tokens,
                    load_params("model", args.params).chat_template_kwargs)
    Server(app, args.host, args.port).server.run()


def export_command(args) -> None:
    from pathlib import Path

    from slmforge.domains import pick, select
    from slmforge.export import export
    from slmforge.errors import UserError
    from slmforge.io import atomic_write_json, read_jsonl
    from slmforge.modeling import set_threads
    from slmforge.params import load_domains, load_params

    domains = load_domains(args.params)
    name = pick(domains, args.domain)
    split = Path(args.split_dir)
    if not (split / "probes.jsonl").exists():
        raise UserError(f"{split}/probes.jsonl not found: run `dvc repro` (or `dvc pull`) first")
    set_threads()
    ev = load_params("eval", args.params)
    out = Path(args.out or f"exports/{name}-{args.format}")
    result = export(params=load_params("model", args.params), base_dir=Path(args.base), base_json=Path(args.pin),
                    adapter_dir=Path(args.adapter or f"models/adapters/{name}"), out_dir=out, fmt=args.format,
                    source=args.source, name=f"slmforge-{name}", n_test=args.parity_items,
                    test_rows=select(read_jsonl(split / "test.jsonl"), domains[name]),
                    probes=select(read_jsonl(split / "probes.jsonl"), domains[name]),
                    max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, dtype=args.dtype,
                    tensor_type=args.gguf_type)
    atomic_write_json(args.metrics or f"metrics/export/{name}-{args.format}.json", result)
    ref = result["reference"]["probe_accuracy"]
    for kind in ("merged", "gguf"):
        if kind in result:
            r = result[kind]
            print(f"{kind}: {r['identical_answers']}/{result['probes'] + result['test_items']} greedy answers "
                  f"identical to NF4 + adapter (words in common {r['prefix_agreement'] or 0:.0%}), probe accuracy "
                  f"{r['probe_accuracy']} (NF4 + adapter: {ref}), prompts tokenised identically "
                  f"{r['prompt_ids_identical']:.0%}, EOS {r['eos_token']}")
    print(f"wrote {out} ({args.format}, merged into the {result['merged_into']})")


def publish_command(args) -> None:
    import json
    from pathlib import Path

    from slmforge.adapter_folder import read_adapter_card
    from slmforge.domains import pick
    from slmforge.errors import UserError
    from slmforge.params import load_domains
    from slmforge.publish import lineage, model_card, oracle_cost, read_json_if_any, token_from_env, upload

    name = pick(load_domains(args.params), args.domain)
    folder = Path(args.export or Path(args.adapters_dir) / name)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder: " + ("run `slmforge export` first" if args.export else
                                                          f"run `dvc repro train@{name}` first"))
    info = read_json_if_any(folder / "slmforge_export.json")
    metrics = Path(args.metrics_dir)
    evaluation = read_json_if_any(metrics / "eval" / f"{name}.json")
    card = model_card(repo_id=args.repo_id, domain=name, kind=info["format"] if info else "adapter",
                      adapter_card=read_adapter_card(info["adapter"] if info else folder),
                      pin=json.loads(Path(args.pin).read_text()), lock=lineage(Path(args.lock), name),
                      split=read_json_if_any(metrics / "split.json"), evaluation=evaluation,
                      cost=oracle_cost(metrics, evaluation), parity=read_json_if_any(folder / "parity.json"))
    if args.dry_run:
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "README.md")
        print(f"dry run: would upload to {args.repo_id} ({'private' if args.private else 'public'}): "
              f"{', '.join([*files, 'README.md'])}\n")
        print(card)
        return
    url, files = upload(args.repo_id, folder, card, args.private, token_from_env())
    print(f"published {len(files)} file(s) to {url}: {', '.join(files)}")


def push_command(args) -> None:
    from slmforge.sharing import push_runs

    report, remote = push_runs(".", args.remote, args.jobs)
    print(report.line(remote))
    if report.missing:
        sys.exit(1)


def verify_command(args) -> None:
    from slmforge.verify import main as verify_main

    sys.exit(verify_main(args))


def cost_command(args) -> None:
    from pathlib import Path

    from slmforge import cost, cost_lookup
    from slmforge.io import read_jsonl
    from slmforge.params import load_source_params, read_params_file

    p = cost.load_cost_params(args.params)
    sources = {name: load_source_params(name, args.params) for name in read_params_file(args.params)["sources"]}
    records, missing, basis = cost_lookup.records_at_hand(Path(args.kept), Path(args.raw_dir), sources)
    chatml, test = Path(args.chatml), Path(args.test)
    has = cost_lookup.cache_lookup(p.oracle, args.oracle_model, args.oracle_pin, sorted(Path(args.answers).glob("*")))
    forecasts = cost.forecast_pipeline(p, records=records, rows=read_jsonl(chatml) if chatml.exists() else None,
                                       test_rows=read_jsonl(test) if test.exists() else None, has=has)
    spent = cost.read_spent({s: Path(args.runs_dir) / f"{s}.json" for s in cost.PIPELINE})
    print(f"records: {basis}" + (f"; not counted (not collected yet; collecting asks no oracle): "
                                 f"{', '.join(missing)}" if missing else ""))
    for line in cost.forecast_table(forecasts, p.oracle, spent):
        print(line)


COMMANDS = {"serve": serve_command, "export": export_command, "publish": publish_command, "push": push_command,
            "verify": verify_command, "cost": cost_command}
