"""Tiny randomly initialised models of real architectures, each with its family's real chat template, special
tokens and generation config, in a Hugging Face hub cache layout (models--org--name/snapshots/<commit>), so the
base stage's hub path resolves and pins them offline exactly as it would the real models.

A few hundred KB each: a byte-level BPE of a few hundred tokens trained on the spot, 2 layers of width 64.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
CORPUS = ["What is a p-value and why does the sample size matter in an A/B test?",
          "The chance of data this extreme under the null hypothesis; more users give more power.",
          "You are an expert in A/B testing and statistics. Be brief. Hello, how are you? Lumen uses 0.025."]


@dataclass(frozen=True)
class Family:
    hub_id: str  # the real model this one has the shape of
    architecture: str  # transformers model_type
    template: str
    bos: str | None
    eos: str
    pad: str | None
    end_of_turn: str  # the token that closes an assistant turn (what training must teach)
    stops: tuple[str, ...]  # generation_config.eos_token_id, as the real model's
    specials: tuple[str, ...]
    added: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>, </think>)
    kwargs: dict = field(default_factory=dict)  # the preset's chat_template_kwargs


FAMILIES = {
    "llama3": Family("meta-llama/Llama-3.2-3B-Instruct", "llama", "llama3_2.jinja", "<|begin_of_text|>", "<|eot_id|>",
                     None, "<|eot_id|>", ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
                     ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eom_id|>", "<|eot_id|>"), kwargs={"date_string": "26 Jul 2024", "enable_thinking": False}),
    "qwen2_5": Family("Qwen/Qwen2.5-1.5B-Instruct", "qwen2", "qwen2_5.jinja", None, "<|im_end|>", "<|endoftext|>",
                      "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                      kwargs={"enable_thinking": False}),
    "qwen3": Family("Qwen/Qwen3-8B", "qwen3", "qwen3.jinja", None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
                    ("<|im_end|>", "<|endoftext|>"), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    added=("<think>", "</think>"), kwargs={"enable_thinking": False}),
    "mistral": Family("mistralai/Mistral-Nemo-Instruct-2407", "mistral", "mistral_nemo.jinja", "<s>", "</s>", None,
                      "</s>", ("</s>",), ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
                      kwargs={"enable_thinking": False}),
    "gemma2": Family("google/gemma-2-2b-it", "gemma2", "gemma2.jinja", "<bos>", "<eos>", "<pad>", "<end_of_turn>",
                     ("<eos>", "<end_of_turn>"), ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
                     kwargs={"enable_thinking": False}),
}


def make_tokenizer(family: Family):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(family.specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.added])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   pad_token=family.pad, chat_template=(TEMPLATES / family.template).read_text())


def make_config(family: Family, vocab: int, bos_id: int | None, stop_ids: list[int], pad_id: int | None):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=bos_id,
                  eos_token_id=stop_ids, pad_token_id=pad_id, tie_word_embeddings=True)
    extra = {"gemma2": dict(query_pre_attn_scalar=16, sliding_window=64, attn_logit_softcapping=50.0,
                            final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh"),
             "mistral": dict(sliding_window=None, tie_word_embeddings=False)}.get(family.architecture, {})
    return AutoConfig.for_model(family.architecture, **{**common, **extra})


def build_hub_cache(cache: Path, names: list[str] | None = None) -> dict[str, str]:
    """Write every family (or `names`) into `cache` as the hub would; returns {family: commit}."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    commits = {}
    for name in names or list(FAMILIES):
        family = FAMILIES[name]
        tokenizer = make_tokenizer(family)
        ids = lambda t: tokenizer.convert_tokens_to_ids(t) if t else None  # noqa: E731
        stop_ids = [ids(t) for t in family.stops]
        config = make_config(family, len(tokenizer), ids(family.bos), stop_ids, ids(family.pad))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config = GenerationConfig(bos_token_id=ids(family.bos), eos_token_id=stop_ids,
                                                   pad_token_id=ids(family.pad))
        commit = hashlib.sha1(f"{family.hub_id}:tiny".encode()).hexdigest()
        repo = cache / f"models--{family.hub_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        model.save_pretrained(snapshot, safe_serialization=True)
        tokenizer.save_pretrained(snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        commits[name] = commit
    return commits


def model_params(name: str, load_in_4bit: bool = True):
    from slmforge.params import ModelParams

    family = FAMILIES[name]
    return ModelParams(name=f"tiny_{name}", source="hub", hub_id=family.hub_id, revision="main", package=None,
                       gguf_file=None, load_in_4bit=load_in_4bit, compute_dtype="float32",
                       chat_template_kwargs=dict(family.kwargs))


def use_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub (and so transformers) at `cache`, offline."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))


def sizes(cache: Path) -> dict[str, int]:
    return {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in cache.iterdir()}


if __name__ == "__main__":  # python -m tests.tiny_models DIR: build the cache and print each model's size
    import sys

    target = Path(sys.argv[1])
    print(json.dumps(build_hub_cache(target), indent=1), json.dumps(sizes(target), indent=1))
