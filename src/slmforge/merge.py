"""The merged-model export: the LoRA update folded into full-precision base weights, saved as a plain
transformers model with slmforge_merge.json. `slmforge merge` (src/slmforge/cli.py) is the terminal side.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.adapter_folder import check_card_template, file_sha256, read_adapter_card
from slmforge.io import atomic_dir, atomic_write_json


MERGE_HINT = "run `dvc repro train` first"


def merge_warning(card: dict) -> str | None:
    """Why the merged model is not quite the model `evaluate` measured, when the adapter was trained on NF4."""
    if not card["model"]["load_in_4bit"]:
        return None
    return ("the adapter was trained against NF4-quantised (4-bit) base weights; the merged model adds it to "
            "the full-precision weights, so its outputs differ from what `evaluate` measured by about the "
            "quantisation error. Merging into 4-bit weights is not offered: re-quantising the merged weights "
            "would round away most of the LoRA update. For the exact evaluated model, load the 4-bit base "
            "with the adapter (`slmforge chat`).")


def merge_adapter(base_dir: str | Path, base_json: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "float32") -> dict:
    """Fold the LoRA update into full-precision base weights and save model, tokenizer and
    slmforge_merge.json into out_dir, atomically. Returns what slmforge_merge.json records."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmforge.modeling import load_tokenizer, resolve_base

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    where, revision = resolve_base(base_dir, base_json)
    card = read_adapter_card(adapter_dir, MERGE_HINT)
    tokenizer = load_tokenizer(base_dir)
    check_card_template(card, tokenizer, adapter_dir, base_dir, MERGE_HINT)
    kwargs = {"revision": revision} if revision else {}
    # Merge in float32 whatever the output dtype, so the sum W + BA is not rounded twice.
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, device_map={"": "cpu"}, **kwargs)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(torch_dtype)
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    info = {
        "base": json.loads(Path(base_json).read_text(encoding="utf-8")), "base_weights": where,
        "revision": revision, "adapter": str(adapter_dir),
        "adapter_sha256": file_sha256(weights) if weights.exists() else None,
        "run_fingerprint": card["run_fingerprint"], "template_sha256": card["template_sha256"],
        "trained_in_4bit": card["model"]["load_in_4bit"], "dtype": dtype,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "slmforge_merge.json", info)
    return info
