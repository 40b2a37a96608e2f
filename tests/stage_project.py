"""A throwaway project for running real stages as subprocesses: conf/ and stages/ copied, params.yaml composed
with overrides by `slmforge compose` (which names them on its first line, so every stage accepts the file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_project(folder: Path, *overrides: str) -> Path:
    shutil.copytree(ROOT / "conf", folder / "conf")
    shutil.copytree(ROOT / "stages", folder / "stages")
    compose(folder, *overrides)
    return folder


def compose(project: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmforge.cli", "compose", *overrides], cwd=project, check=True,
                          capture_output=True, text=True, env=stage_env(project))


def stage_env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(SLMFORGE_CACHE=str(project / "store"), PYTHONUNBUFFERED="1", **extra)
    return env


def run_stage(project: Path, module: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=project, env=stage_env(project, **env),
                          capture_output=True, text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines a user reads on stderr, progress bars left out."""
    return [line for line in proc.stderr.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]
