"""Training on several processes through `accelerate launch`: relaunching the train stage, and who is who.

`train.distributed` names a config in conf/accelerate/ (ddp, fsdp_qlora, ddp_cpu); the train stage's command in
dvc.yaml stays `python -m stages.train ...`, and this module re-executes it under the launcher. Each process then
asks `context()` for its rank; only the main one writes outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError

# Set for every process by torchrun (LOCAL_RANK) and by accelerate's launchers, the one-process one included
# (ACCELERATE_MIXED_PRECISION): a process that sees either was launched already and must not launch again.
LAUNCHED_ENV = ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION")


@dataclass(frozen=True)
class Context:
    world_size: int
    rank: int
    local_rank: int
    local_world_size: int
    fsdp: bool  # accelerate launched this process with an FSDP config

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """This process's place in the run, from the launcher's environment (one process when there is none)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Context(world_size=world, rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
                   fsdp=env.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def launched() -> bool:
    return any(name in os.environ for name in LAUNCHED_ENV)


def accelerate_config(name: str, conf_dir: str | Path = "conf/accelerate") -> Path:
    """The launcher config `name` names, or one line listing the configs there are."""
    folder = Path(conf_dir)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"train.distributed: no accelerate config {path} (known: {', '.join(known) or 'none'}): "
                        "pick one with -S train.distributed=NAME or add conf/accelerate/NAME.yaml")
    return path


def launch_command(config: Path, module: str, argv: list[str]) -> list[str]:
    """`accelerate launch --config_file CONFIG -m MODULE ARGV...`, through this interpreter's accelerate."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", module, *argv]


def relaunch(name: str | None, module: str, argv: list[str], conf_dir: str | Path = "conf/accelerate") -> int | None:
    """Run `module` again under `accelerate launch` when `name` asks for it and this process was not launched;
    returns the launcher's exit code, or None when this process should train itself (on its own GPU, if any)."""
    if launched():
        _use_own_gpu()
        return None
    if not name:
        return None
    config = accelerate_config(name, conf_dir)
    cmd = launch_command(config, module, argv)
    print(f"{module}: relaunching through `accelerate launch --config_file {config}`", flush=True)
    return subprocess.run(cmd, check=False).returncode


def _use_own_gpu() -> None:
    # Before anything touches CUDA: a launched process works on GPU LOCAL_RANK. DDP's device_map names it, but
    # FSDP loads without one, and transformers then puts the 4-bit weights on the *current* device (GPU 0 for every
    # rank unless this is set). The Trainer sets it only later, when its arguments are built.
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(context().local_rank)
