"""`slmforge export`: the merge into the weights the adapter was trained against, the GGUF written with the `gguf`
package and read back by transformers, and the parity metrics; on the real embedded base with a tiny adapter."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from tests.test_cli import make_adapter

MESSAGES = [{"role": "system", "content": "You are an expert."}, {"role": "user", "content": "What is Lumen's alpha?"}]


@pytest.fixture(scope="module")
def adapter(base_model, model_params, tmp_path_factory):
    return make_adapter(base_model[0], tmp_path_factory.mktemp("export") / "stats", model_params, random_b=True, seed=5)


def logits(model, tokenizer):
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        return model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits[0].float()


def test_merge_into_the_trained_weights_reproduces_nf4_plus_adapter(base_model, model_params, adapter):
    """In float32 compute, the merged model's logits are NF4 base + adapter's (what train and evaluate ran); the
    merge into the original full-precision weights is measurably another model."""
    from peft import PeftModel

    from slmforge.export import merged_model
    from slmforge.modeling import disable_cpu_repack, load_base

    params = dataclasses.replace(model_params, compute_dtype="float32")
    nf4, tokenizer = load_base(params, *base_model)
    disable_cpu_repack(nf4)  # training's layout (the CPU inference repack rounds otherwise: see parity.py)
    reference = logits(PeftModel.from_pretrained(nf4, str(adapter)).eval(), tokenizer)
    trained, _, info = merged_model(params, *base_model, adapter, source="trained")
    full, _, _ = merged_model(params, *base_model, adapter, source="full")
    on_trained = (logits(trained, tokenizer) - reference).abs().max().item()
    on_full = (logits(full, tokenizer) - reference).abs().max().item()
    assert on_trained < 1e-3, on_trained
    assert on_full > 100 * on_trained and on_full > 0.1, (on_full, on_trained)
    assert info["merged_into"].startswith("NF4-dequantised base") and info["trained_in_4bit"]


def test_gguf_export_round_trips_through_transformers_with_template_and_eos(base_model, model_params, adapter,
                                                                           tmp_path):
    from transformers import AutoTokenizer

    from slmforge.export import export, load_gguf

    facts = [json.loads(line) for line in open("data/sample/facts.jsonl")][:2]
    probes = [{"id": f["fact_id"], "source": "sample", "meta": {"origin": "facts", "answer": f["answer"],
                                                                  "aliases": f["aliases"]},
               "messages": [*MESSAGES[:1], {"role": "user", "content": f["phrasings"][0]},
                            {"role": "assistant", "content": f["response"]}]} for f in facts]
    out = tmp_path / "stats-gguf"
    result = export(params=model_params, base_dir=base_model[0], base_json=base_model[1], adapter_dir=adapter,
                    out_dir=out, fmt="gguf", source="trained", name="slmforge-stats", test_rows=[], probes=probes,
                    n_test=0, max_new_tokens=8, batch_size=2, tensor_type="f32")
    gguf = result["gguf"]
    # float32 GGUF of the float32 merged weights: the file answers exactly as the merged model did
    items = [json.loads(line) for line in (out / "parity_items.jsonl").read_text().splitlines()]
    assert [i["gguf"] for i in items] == [i["merged"] for i in items] and len(items) == 2
    assert gguf["prompt_ids_identical"] == 1.0 and gguf["eos_token"] == "<|im_end|>" and gguf["eos_token_matches"]
    assert json.loads((out / "parity.json").read_text()) == json.loads(json.dumps(result))
    for key in ("agreement", "prefix_agreement", "probe_accuracy"):
        assert 0.0 <= gguf[key] <= 1.0 and 0.0 <= result["merged"][key] <= 1.0
    _, tokenizer = load_gguf(out / "slmforge-stats.f32.gguf")
    base_tokenizer = AutoTokenizer.from_pretrained(str(base_model[0]))
    assert tokenizer.chat_template == base_tokenizer.chat_template
    assert json.loads((out / "slmforge_export.json").read_text())["format"] == "gguf"


def test_export_without_a_run_is_one_line(tmp_path, root):
    proc = subprocess.run([sys.executable, "-m", "slmforge.cli", "export", "--format", "gguf", "--params",
                           str(root / "params.yaml"), "--split-dir", str(tmp_path / "split")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'split'}/probes.jsonl not found: run `dvc repro` "
                                                "(or `dvc pull`) first"]
