"""The base stage's output: a real safetensors model with tokenizer and chat template; hub pins; 4-bit."""

import json

import pytest

from slmforge.errors import UserError
from slmforge.modeling import load_base, pin_hub_model, quantization_config
from slmforge.templates import template_fingerprint
from slmforge.params import ModelParams


def test_embedded_base_is_materialised_as_safetensors(base_model, tokenizer):
    folder, pin = base_model
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a clean model, loadable without the GGUF
    info = json.loads(pin.read_text())
    assert info["source"] == "gguf_package" and len(info["gguf_sha256"]) == 64
    assert "<|im_start|>" in tokenizer.chat_template
    assert len(template_fingerprint(tokenizer)) == 64


def test_base_loads_in_4bit_nf4_and_answers(base_model, model_params):
    import bitsandbytes as bnb
    import torch

    model, tok = load_base(model_params, *base_model)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7  # every linear layer of the 30 blocks is 4-bit
    assert layers[0].weight.quant_state.quant_type == "nf4"
    assert layers[0].weight.quant_state.state2 is not None  # double quantisation
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True,
                                   tokenize=False)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert "4" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_quantization_config_is_nf4_double_quant(model_params):
    q = quantization_config(model_params)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant


def test_hub_model_without_cache_or_network_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    params = ModelParams(name="llama32_3b", source="hub", hub_id="meta-llama/Llama-3.2-3B-Instruct",
                         revision="main", package=None, gguf_file=None, load_in_4bit=True, compute_dtype="auto",
                         chat_template_kwargs={})
    with pytest.raises(UserError) as err:
        pin_hub_model(params, tmp_path / "base", tmp_path / "base.json")
    message = str(err.value)
    assert "\n" not in message and "llama32_3b" in message and "hf download" in message
    assert not (tmp_path / "base.json").exists()


def test_hub_model_in_the_cache_is_pinned_and_loads_offline(tmp_path, monkeypatch, base_model):
    """A hub preset resolves through the Hugging Face cache layout (refs/main -> snapshots/<commit>)."""
    import shutil

    import huggingface_hub.constants as c

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-chat" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in base_model[0].iterdir():
        shutil.copy(f, snapshot / f.name)
    (cache / "models--acme--tiny-chat" / "refs").mkdir()
    (cache / "models--acme--tiny-chat" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    params = ModelParams(name="acme", source="hub", hub_id="acme/tiny-chat", revision="main", package=None,
                         gguf_file=None, load_in_4bit=False, compute_dtype="float32", chat_template_kwargs={})
    info = pin_hub_model(params, tmp_path / "base", tmp_path / "base.json")
    assert info["commit"] == commit
    assert json.loads((tmp_path / "base.json").read_text())["commit"] == commit
    assert (tmp_path / "base" / "tokenizer.json").exists() and not (tmp_path / "base" / "model.safetensors").exists()
    model, tok = load_base(params, tmp_path / "base", tmp_path / "base.json")
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"
