"""Training at the hardware's speed: the attention kernel for packed rows, the loss kernel, and a peak-memory
estimate checked against the GPU before any weight is loaded.

Measured on one H200 (design.md, "Facts measured on a GPU"): with padding-free packing SDPA receives a dense
block-diagonal mask and leaves its fast kernels (9,560 tokens/s on Llama-3.2-1B's shape); flex_attention keeps the
packed examples apart with a block-sparse mask (37,363 tokens/s, 3.9x); flash-attention's varlen kernel reads the
boundaries from position_ids directly. The estimate's coefficients are fitted to the same measurements.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from slmforge.errors import UserError

ATTENTION = ("auto", "sdpa", "flex_attention", "flash_attention_2", "eager")
LOSS_KERNELS = ("auto", "model", "trl", "liger")
GB = 1e9


# --- choices ---------------------------------------------------------------------------------------

def flash_attn_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def softcapped(config) -> bool:
    """Gemma 2 caps attention logits: SDPA cannot (transformers refuses it), eager, flex and flash-attn can."""
    return getattr(config, "attn_logit_softcapping", None) is not None


def resolve_attention(choice: str, on_cuda: bool, config=None, packed: bool = True) -> str:
    """The attn_implementation to load the model with. `auto`: flash-attention's varlen kernel where the
    flash-attn package is installed (CUDA), else flex_attention for packed rows on CUDA, else SDPA (on CPU
    flex_attention compiles its kernel on first use, 15-90 s on 2 cores, for rows that are short there), or eager
    for a soft-capped model (Gemma 2). An explicit choice that cannot run here is a one-line error."""
    if choice not in ATTENTION:
        raise UserError(f"params.yaml: train.attention must be one of {', '.join(ATTENTION)}, got {choice!r}")
    if choice == "flash_attention_2" and not (on_cuda and flash_attn_installed()):
        raise UserError("train.attention=flash_attention_2 needs a CUDA GPU and the flash-attn package "
                        "(`uv pip install flash-attn --no-build-isolation`): use train.attention=auto")
    if choice == "sdpa" and config is not None and softcapped(config):
        raise UserError(f"train.attention=sdpa: {config.model_type} soft-caps its attention logits, which SDPA "
                        "cannot: use train.attention=auto (eager on CPU, flex_attention on a GPU)")
    if choice != "auto":
        return choice
    if on_cuda and flash_attn_installed():
        return "flash_attention_2"
    if on_cuda and packed:
        return "flex_attention"
    # Unpacked batches (evaluation, chat: generation with a KV cache, whose growing shapes would make flex_attention
    # recompile): SDPA, or eager where the model soft-caps its logits.
    return "eager" if config is not None and softcapped(config) else "sdpa"


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def resolve_loss_kernel(choice: str, on_cuda: bool) -> str:
    """How the loss is computed. `model`: the model's own forward (full logits, one cross-entropy: the faster path
    off Triton); `trl`: TRL's fused linear cross-entropy (the LM head in chunks with an online softmax, never the
    full-vocabulary fp32 logits; a Triton kernel on CUDA); `liger`: TRL's fused loss plus Liger's Triton kernels
    for RMSNorm, SwiGLU and RoPE (TRL 1.x refuses Liger's own fused cross-entropy, which would replace its head).
    `auto`: liger on CUDA where liger-kernel is installed, else trl on CUDA, model on CPU."""
    if choice not in LOSS_KERNELS:
        raise UserError(f"params.yaml: train.loss_kernel must be one of {', '.join(LOSS_KERNELS)}, got {choice!r}")
    if choice == "liger" and not (on_cuda and liger_installed()):
        raise UserError("train.loss_kernel=liger needs a CUDA GPU with Triton and the liger-kernel package "
                        f"({'no CUDA GPU here' if not on_cuda else 'liger-kernel is not installed'}): "
                        "use train.loss_kernel=auto")
    if choice != "auto":
        return choice
    if on_cuda:
        return "liger" if liger_installed() else "trl"
    return "model"


# --- peak memory -------------------------------------------------------------------------------------

# Bytes per token per layer of stored activations, a*hidden + b*intermediate (bf16, LoRA dropout copies included),
# and the extras below: fitted to the H200 measurements of Llama-3.2-1B's and -3B's shapes (tests reproduce them).
ACT_HIDDEN, ACT_INTERMEDIATE = 32.4, 7.25
SDPA_PACKED_PER_LAYER = 2.5  # x tokens^2: the dense block-diagonal mask SDPA is given for packed rows, per layer
LOGITS_MODEL_LOSS = 10.85  # x tokens x vocab: bf16 logits, their fp32 upcast and its gradient (loss_kernel=model)
LIGER_SAVED_INTERMEDIATE = 2.8  # x intermediate per token per layer: Liger's fused SwiGLU keeps fewer tensors
CUDA_OVERHEAD = 0.5 * GB  # context, cuBLAS workspace, allocator slack
NF4_BYTES = 0.5 + 1 / 64  # 4 bits a weight plus its block's 8-bit absmax (double quantisation), 64 to a block


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config) -> Shape:
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size,
                   layers=config.num_hidden_layers, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab=config.vocab_size, tied=bool(getattr(config, "tie_word_embeddings", False)))

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of the linear layers of one decoder block: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)


def estimate_peak(shape: Shape, *, lora_r: int, batch_size: int, seq_len: int, load_in_4bit: bool,
                  gradient_checkpointing: bool, attention: str, loss_kernel: str, packed: bool = True) -> dict:
    """Peak GPU memory of one training step, in bytes, by component (and `total`). LoRA on every linear layer
    of the blocks (the embedding and LM head frozen, in bf16), AdamW: fp32 adapter weights, gradients and two
    moments. Padding-free packing makes one row of batch_size x seq_len tokens."""
    tokens = batch_size * seq_len
    weights = shape.linear_params() * (NF4_BYTES if load_in_4bit else 2) + shape.embedding_params() * 2
    lora = shape.layers * sum(lora_r * (a + b) for a, b in shape.linear_shapes()) * 16
    per_layer = ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate
    if loss_kernel == "liger":
        per_layer -= LIGER_SAVED_INTERMEDIATE * shape.intermediate
    if gradient_checkpointing:  # each block's input is kept; one block's activations live during its recompute
        activations = tokens * (shape.layers * shape.hidden * 2 + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    mask_layers = 1 if gradient_checkpointing else shape.layers
    attention_extra = SDPA_PACKED_PER_LAYER * tokens**2 * mask_layers if attention == "sdpa" and packed else 0
    logits = LOGITS_MODEL_LOSS * tokens * shape.vocab if loss_kernel == "model" else 0
    parts = {"weights": weights, "lora_and_optimizer": lora, "activations": activations,
             "attention_mask": attention_extra, "logits": logits, "cuda_overhead": CUDA_OVERHEAD}
    return {**{k: int(v) for k, v in parts.items()}, "total": int(sum(parts.values()))}


def device_memory() -> tuple[str, int] | None:
    """(name, total bytes) of the GPU this process trains on, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return props.name, int(props.total_memory)


def check_fits(estimate: dict, device: tuple[str, int], what: str, headroom: float = 0.95) -> None:
    """One line, before anything is loaded, when the estimated peak is above `headroom` of the GPU's memory."""
    name, capacity = device
    if estimate["total"] > headroom * capacity:
        raise UserError(f"train: {what} needs about {estimate['total'] / GB:.1f} GB of GPU memory at its peak "
                        f"(estimated), more than the {capacity / GB:.1f} GB of the {name} found: pick -S "
                        "train=gpu_24gb (gradient checkpointing), or lower train.batch_size or train.max_seq_len "
                        "(or set train.memory_check=false to try anyway)")


def plan_run(model_params, lora, params, base_dir, fsdp: bool = False) -> dict:
    """The kernels a training run uses and its estimated peak, checked against the GPU found (skipped under FSDP,
    which shards what the estimate counts whole, and with train.memory_check=false). Read from the model's
    config.json only, so a run that cannot fit stops before any weight is loaded."""
    import torch
    from transformers import AutoConfig

    on_cuda = torch.cuda.is_available()
    config = AutoConfig.from_pretrained(str(base_dir))
    attention = resolve_attention(params.attention, on_cuda, config, packed=params.packing)
    loss_kernel = resolve_loss_kernel(params.loss_kernel, on_cuda)
    estimate = estimate_peak(Shape.of(config), lora_r=lora.r, batch_size=params.batch_size, seq_len=params.max_seq_len,
                             load_in_4bit=model_params.load_in_4bit, attention=attention, loss_kernel=loss_kernel,
                             gradient_checkpointing=params.gradient_checkpointing, packed=params.packing)
    device = device_memory()
    if device is not None and params.memory_check and not fsdp:
        check_fits(estimate, device, f"model {model_params.name} with train={params.profile} (batch "
                   f"{params.batch_size} x {params.max_seq_len} tokens, gradient checkpointing "
                   f"{'on' if params.gradient_checkpointing else 'off'}, attention {attention}, loss {loss_kernel})")
    return {"attention": attention, "loss_kernel": loss_kernel, "memory_estimate_gb": round(estimate["total"] / GB, 2)}
