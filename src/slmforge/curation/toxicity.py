"""Toxicity scores in [0, 1]: detoxify where its checkpoint is available, else the embedded profanity model.

The backend is picked by name in params (`clean.toxicity.backend`); detoxify configured without a
checkpoint it can load offline is an error, never a silent fallback to the other backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slmforge.errors import UserError
from slmforge.params import ToxicityParams


def _profanity(params: ToxicityParams) -> Callable[[list[str]], np.ndarray]:
    from profanity_check import predict_prob  # alt-profanity-check: a linear model shipped in the wheel

    return lambda texts: np.asarray(predict_prob(texts), dtype=float) if texts else np.zeros(0)


def detoxify_checkpoint(params: ToxicityParams) -> Path:
    """The checkpoint detoxify will load: the configured file, or the one torch hub caches for the model."""
    if params.detoxify_checkpoint:
        path = Path(params.detoxify_checkpoint)
        if not path.is_file():
            raise UserError(f"clean.toxicity.detoxify_checkpoint: {path} not found; download detoxify's "
                            f"checkpoint there, or set clean.toxicity.backend=profanity")
        return path
    from detoxify.detoxify import MODEL_URLS
    import torch

    if params.detoxify_model not in MODEL_URLS:
        raise UserError(f"clean.toxicity.detoxify_model: {params.detoxify_model!r} is not one of {sorted(MODEL_URLS)}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / MODEL_URLS[params.detoxify_model].rsplit("/", 1)[-1]
    if not cached.is_file():
        raise UserError(f"detoxify's `{params.detoxify_model}` checkpoint is not in torch hub's cache ({cached}): "
                        "run `python -c \"from detoxify import Detoxify; Detoxify('"
                        f"{params.detoxify_model}')\"` with network, set clean.toxicity.detoxify_checkpoint, "
                        "or set clean.toxicity.backend=profanity")
    return cached


def _detoxify(params: ToxicityParams) -> Callable[[list[str]], np.ndarray]:
    from detoxify import Detoxify
    import torch

    checkpoint = detoxify_checkpoint(params)
    if params.detoxify_hf_config and not Path(params.detoxify_hf_config).is_dir():
        raise UserError(f"clean.toxicity.detoxify_hf_config: {params.detoxify_hf_config} is not a folder; save the "
                        "checkpoint's HF config and tokenizer there, or set it to null to use the hub's cache")
    try:
        model = Detoxify(checkpoint=str(checkpoint), device="cpu", huggingface_config_path=params.detoxify_hf_config)
    except OSError as exc:  # the checkpoint names a hub model (bert-base-uncased, ...) whose config is not cached
        raise UserError(f"detoxify cannot load the HF config and tokenizer for {checkpoint}: "
                        f"{str(exc).splitlines()[0]}; set clean.toxicity.detoxify_hf_config to a local folder "
                        "holding them, or set clean.toxicity.backend=profanity") from None
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    def score(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), params.batch_size):
            pred = model.predict(texts[i:i + params.batch_size])
            out.extend(np.atleast_1d(pred["toxicity"]).tolist())  # detoxify's overall toxicity head
        return np.asarray(out, dtype=float)

    return score


BACKENDS: dict[str, Callable[[ToxicityParams], Callable[[list[str]], np.ndarray]]] = {
    "profanity": _profanity,
    "detoxify": _detoxify,
}


def load_scorer(params: ToxicityParams) -> Callable[[list[str]], np.ndarray]:
    if params.backend not in BACKENDS:
        raise UserError(f"clean.toxicity.backend: {params.backend!r} is not one of {sorted(BACKENDS)}")
    return BACKENDS[params.backend](params)
