"""`slmforge publish REPO_ID`: upload a domain's adapter (or an export) to the Hugging Face Hub with a model card
generated from the run: the base and its pin, the data lineage (dvc.lock hashes, the test set's fingerprint), the
verdict and its table, the probes, the training parameters and what the run cost. The token comes from HF_TOKEN
only and is handed to huggingface_hub, never written to a file, the card or the output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from slmforge.errors import UserError

LINEAGE_STAGES = ("base", "split")  # the shared artifacts every domain's adapter descends from


def read_json_if_any(path: Path) -> dict | None:
    """The JSON file at `path`, or None when there is none (a metric or export info not made yet)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def lineage(lock_path: Path, domain: str) -> dict[str, dict[str, str]]:
    """stage -> {output path: md5} from dvc.lock, for the base, the split and this domain's train and evaluate."""
    if not lock_path.exists():
        raise UserError(f"{lock_path} not found: publish what a finished run made (`dvc repro`, then publish)")
    stages = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages", {})
    out = {}
    for stage in (*LINEAGE_STAGES, f"train@{domain}", f"evaluate@{domain}"):
        if stage in stages:
            out[stage] = {o["path"]: o["md5"] for o in stages[stage].get("outs", [])}
    return out


def oracle_cost(metrics_dir: Path, eval_metrics: dict | None = None) -> dict:
    """What the oracle cost the run being published: the cost stage's sum over every stage's last run on this
    machine (metrics/runs/cost.json, a run fact); zero calls and dollars when it is absent (answers pulled)."""
    total = ((read_json_if_any(metrics_dir / "runs" / "cost.json") or {}).get("total")) or {}
    return {"oracle_usd": round(float(total.get("usd", 0.0)), 6), "oracle_calls": int(total.get("calls", 0))}


def _num(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def model_card(*, repo_id: str, domain: str, kind: str, adapter_card: dict, pin: dict, lock: dict, split: dict | None,
               evaluation: dict | None, cost: dict, parity: dict | None) -> str:
    base_id = pin.get("hub_id") or adapter_card["base_model"]
    revision = pin.get("commit") or (f"{pin.get('package')}=={pin.get('package_version')} ({pin.get('gguf_file')}, "
                                     f"sha256 {pin.get('gguf_sha256', '')[:16]}…)")
    library = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind]
    lines = ["---", f"base_model: {base_id}", f"library_name: {library}", "pipeline_tag: text-generation",
             f"tags: [slmforge, qlora, lora, {domain}]", "---", "",
             f"# {repo_id}", "",
             f"Domain `{domain}` of an slmforge run: a QLoRA adapter trained on the NF4-quantised base"
             + (f", {'merged into the weights it was trained against' if kind == 'merged' else 'merged and written as GGUF'}"
                if kind != "adapter" else "") + ".", "",
             "## Base model", "", f"`{base_id}`, pinned at {revision}.", ""]
    if evaluation:
        s = evaluation["stats"]
        lines += ["## Evaluation", "", f"Verdict: **{evaluation['verdict']}** on `{evaluation['metric']}` over {s['n']} "
                  f"paired items: " + "; ".join(evaluation["reasons"]) + ".", "",
                  "| metric | n | base | tuned | delta [95% CI] | Wilcoxon p |", "|---|---:|---:|---:|---|---:|"]
        for name, m in evaluation["per_metric"].items():
            lines.append(f"| {name} | {m['n']} | {_num(m['mean_base'])} | {_num(m['mean_tuned'])} | "
                         f"{_num(m['mean_delta'], '+.4f')} [{_num(m['delta_ci_low'], '+.4f')}, "
                         f"{_num(m['delta_ci_high'], '+.4f')}] | {_num(m['wilcoxon_p'], '.3g')} |")
        b, t = evaluation["base"], evaluation["tuned"]
        lines += ["", f"Fact probes (held-out phrasings): base {_num(b.get('probe_accuracy'), '.3f')}, tuned "
                  f"{_num(t.get('probe_accuracy'), '.3f')} over {t.get('probes', 'n/a')} probes; perplexity "
                  f"{_num(b.get('perplexity'), '.2f')} -> {_num(t.get('perplexity'), '.2f')}.", ""]
        numerics = evaluation.get("numerics")
        if numerics:
            lines += ["Probe accuracy by numerics (the adapter was trained on NF4): " + "; ".join(
                f"{k} {_num(v.get('probe_accuracy'), '.3f')}" for k, v in numerics["sides"].items()) + ".", ""]
    if parity:
        lines += ["## Parity of this export", "", "Greedy answers to the probes and test items, against NF4 base + "
                  f"adapter (probe accuracy {_num(parity['reference']['probe_accuracy'], '.3f')}):", "",
                  "| artifact | identical answers | words in common | probe accuracy | prompts tokenised alike | EOS |",
                  "|---|---:|---:|---:|---:|---|"]
        for k in ("merged", "gguf"):
            if k in parity:
                p = parity[k]
                lines.append(f"| {k} | {_num(p['agreement'], '.0%')} | {_num(p['prefix_agreement'], '.0%')} | "
                             f"{_num(p['probe_accuracy'], '.3f')} | {_num(p['prompt_ids_identical'], '.0%')} | "
                             f"`{p['eos_token']}` |")
        lines.append("")
    lines += ["## Data lineage", ""]
    if split:
        lines += [f"Test set fingerprint (sha256 of its ids and messages): `{split.get('test_fingerprint')}`; split "
                  f"counts {split.get('counts')}.", ""]
    lines += ["Outputs of the run (`dvc.lock`, md5):", ""]
    for stage, outs in lock.items():
        for path, md5 in outs.items():
            lines.append(f"- `{stage}`: `{path}` {md5}")
    lines += ["", "Training data files (sha256): " + ", ".join(f"`{Path(k).name}` {v[:16]}…"
                                                              for k, v in adapter_card.get("data_sha256", {}).items()), ""]
    lora, train, m = adapter_card["lora"], adapter_card["train"], adapter_card.get("metrics", {})
    lines += ["## Training", "",
              f"LoRA r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, target modules "
              f"{lora['target_modules']}; profile `{train['profile']}`: epochs {train['epochs']}, lr {train['lr']}, "
              f"{train['scheduler']}, batch {train['batch_size']} x {train['grad_accum']}, max length "
              f"{train['max_seq_len']}, seed {train['seed']}. Eval loss {_num(m.get('eval_loss'))} (best "
              f"{_num(m.get('best_eval_loss'))} at step {m.get('best_step')}).", "",
              "## Cost", "", f"Training {_num(m.get('train_seconds'), '.0f')} s on {m.get('world_size', 1)} process(es); "
              f"oracle {cost['oracle_calls']} calls, ${cost['oracle_usd']:.4f}.", "",
              f"Template fingerprint `{adapter_card['template_sha256']}`.", ""]
    return "\n".join(lines)


def stage(folder: Path, card: str, into: Path) -> list[str]:
    """The files to upload, in `into`: the folder's files (hard links where the filesystem allows) and README.md."""
    names = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"):
        target = into / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        names.append(str(path.relative_to(folder)))
    (into / "README.md").write_text(card, encoding="utf-8")
    return sorted([*names, "README.md"])


def upload(repo_id: str, folder: Path, card: str, private: bool, token: str) -> tuple[str, list[str]]:
    """Create the repo (or reuse it) and upload the folder with the card in one commit; the Hub's endpoint comes
    from HF_ENDPOINT as huggingface_hub reads it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(folder, card, Path(tmp))
        api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                          commit_message=f"slmforge publish: {folder.name}")
    return str(url), files


def token_from_env() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("HF_TOKEN is not set: export a Hugging Face token with write access (never put it in a "
                        "file), or use --dry-run to see what would be uploaded")
    return token
