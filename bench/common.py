"""What every benchmark shares: medians of repeated runs, the machine, workers in fresh processes."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 3  # every figure is the median of at least this many runs


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summary(values: list[float], digits: int = 4) -> dict:
    """The median with every run beside it, so the noise is on the record."""
    return {"median": round(median(values), digits), "runs": [round(v, digits) for v in values]}


def exponent(t_small: float, t_large: float, factor: float = 4.0) -> float:
    """k in t ~ n^k from times at n and factor*n."""
    return math.log(t_large / t_small) / math.log(factor)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {cores} cores{f' ({isa})' if isa else ''}, {mem_gib:.0f} GiB, {gpu}; "
            f"python {platform.python_version()}, torch {torch.__version__}")


def worker(module: str, *args: str, timeout: int = 1800) -> dict:
    """Run `python -m module ... --out F` in a fresh process (its own peak memory, nothing warm from the
    last run) and return what it wrote to F."""
    with tempfile.TemporaryDirectory(prefix="slmforge-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "SLMFORGE_CACHE": str(Path(tmp) / "store")}
        proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench worker `{module} {' '.join(args)}` failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def need(*paths: str) -> None:
    missing = [p for p in paths if not (ROOT / p).exists()]
    if missing:
        raise SystemExit(f"bench: {', '.join(missing)} missing: run `make repro` (or `dvc pull`) first")
