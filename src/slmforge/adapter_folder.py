"""The adapter folder's contract: how a trained LoRA folder is saved, its card written and read, its chat template
checked against a base, and its fingerprints.

A folder holds PEFT's adapter_model.safetensors and adapter_config.json (module lists sorted: the same adapter, the
same bytes), the tokenizer, a JSON card (`slmforge_adapter.json` for the chat adapter, `slmforge_scorer.json` for
the student scorer) and, for the chat adapter, a README model card.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from slmforge.errors import UserError
from slmforge.io import atomic_dir, atomic_write_json, atomic_write_text
from slmforge.params import LoraParams, ModelParams, TrainParams

ADAPTER_CARD = "slmforge_adapter.json"
NO_ADAPTER_HINT = "run `dvc repro train` or pass --no-adapter"


# --- fingerprints -------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapter_sha(adapter_dir: Path) -> str:
    """sha256 of the adapter's weights and config (alpha, target modules): the tuned side's generation key."""
    weights = sorted(adapter_dir.glob("adapter_model.*"))
    if not weights:
        raise UserError(f"{adapter_dir} has no adapter_model.* weights: run `dvc repro train`")
    h = hashlib.sha256()
    for path in [*weights, adapter_dir / "adapter_config.json"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def canonical_adapter_config(folder: str | Path) -> None:
    """Sort the module lists of a saved PEFT adapter_config.json. PEFT keeps target_modules (and exclude_modules)
    as a set and writes the set's order, which follows Python's per-process string hash seed: two trainings with
    bit-identical weights wrote two different configs (measured on the tiny profile), and a DVC output must be the
    same bytes for the same adapter."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # PEFT's own layout


# --- save, card -----------------------------------------------------------------------------------

def save_folder(model, tokenizer, out_dir: Path, card_name: str, card: dict, readme: str | None = None,
                state_dict: dict | None = None) -> None:
    """Write an adapter folder atomically: PEFT weights and canonical config, tokenizer, the JSON card and, when
    given, the README."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)  # state_dict: FSDP's gathered weights, else None
        canonical_adapter_config(tmp)  # the same adapter, the same bytes
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / card_name, card)
        if readme is not None:
            atomic_write_text(Path(tmp) / "README.md", readme)


def read_adapter_card(adapter_dir: str | Path, hint: str = NO_ADAPTER_HINT) -> dict:
    """slmforge_adapter.json of a trained adapter (written by training.save_adapter)."""
    card = Path(adapter_dir) / ADAPTER_CARD
    if not card.exists():
        raise UserError(f"{adapter_dir}: no trained adapter (no {card.name}): {hint}")
    return json.loads(card.read_text(encoding="utf-8"))


def check_card_template(card: dict, tokenizer, adapter_dir: str | Path, base_dir: str | Path,
                        hint: str = NO_ADAPTER_HINT, kwargs: dict | None = None) -> None:
    """The base's template, rendered with `kwargs` (by default those the adapter was trained with; evaluate passes
    the ones it renders with), must be the adapter's."""
    from slmforge.templates import template_fingerprint

    if kwargs is None:
        kwargs = card["model"].get("chat_template_kwargs") or {}
    if card["template_sha256"] != template_fingerprint(tokenizer, kwargs):
        raise UserError(f"{adapter_dir} was trained with another chat template than {base_dir} has "
                        f"(template_sha256 differs): {hint}")


def model_card(model_params: ModelParams, lora: LoraParams, params: TrainParams, summary: dict,
               data: dict[str, str]) -> str:
    """The chat adapter's README.md: a Hugging Face model card with its base, data, parameters and metrics."""
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in summary.items() if k not in ("template_sha256", "rows", "tokenisation"))
    counts = "\n".join(f"- {part}: {a['rows_in']} rows in, {a['rows_used']} used, dropped {a['dropped'] or 'none'}, "
                       f"{a['truncated']} cut short by max length" for part, a in summary.get("rows", {}).items())
    files = "\n".join(f"- `{name}`: sha256 `{sha[:16]}…`" for name, sha in data.items())
    return f"""---
base_model: {model_params.hub_id}
library_name: peft
pipeline_tag: text-generation
tags: [slmforge, qlora, lora, sft, trl]
---

# slmforge adapter: {model_params.name}, LoRA r={lora.r}

A QLoRA adapter (NF4 4-bit base, double quantisation) trained by slmforge's `train` stage with TRL's
SFTTrainer: loss on assistant tokens only, packed examples kept apart by position ids.

Load it with plain PEFT:

```python
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("models/adapters/<domain>")
```

## Base model
`{model_params.hub_id}` (slmforge preset `{model_params.name}`, source `{model_params.source}`).

## Data
{files}

## Parameters
- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, target modules {lora.target_modules}
- Training profile `{params.profile}`: epochs={params.epochs}, lr={params.lr}, {params.scheduler} schedule,
  warmup {params.warmup_ratio}, batch {params.batch_size} x accumulation {params.grad_accum},
  max length {params.max_seq_len}, packing={params.packing}, seed={params.seed}

## Rows
{counts}

## Training metrics
| metric | value |
|---|---|
{rows}

Template fingerprint: `{summary['template_sha256']}`. Evaluation against the base model is in `reports/`
and `metrics/eval/<domain>.json` of the run that produced this adapter.
"""
