"""The DAG's dependencies, asked of DVC itself in a temporary copy of the repository: the data and the test items
(every stage up to and including split) do not depend on the model under training, so `dvc exp run -S model=X`
re-runs only what uses the model, and two models are trained and compared on the same items.

Every output starts as a placeholder recorded in dvc.lock by `dvc commit`; params.yaml is composed with the
experiment's override as `dvc exp run -S` composes it (`slmforge compose OVERRIDE`); the stage that materialises the
new model (base, or oracle_model) really runs, on a tiny model of the preset's architecture in a local hub cache;
then DVC is asked what changed (`dvc status`) and what it would run (`dvc repro --dry`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA_STAGES = {"check_params", "collect@sample", "clean", "oracle_model", "synthesize", "chatml", "calibrate", "label",
               "split"}


def sh(cmd: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cwd.parent / "hub"))
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{cmd}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def placeholder(path: Path) -> None:
    """A file where the output is a file (it has a suffix), else a folder holding one."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
    else:
        path.mkdir(parents=True)
        (path / "placeholder.txt").write_text("placeholder\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_hub) -> Path:
    """The tracked files in a fresh git repo, every stage's outputs as placeholders, all recorded in dvc.lock."""
    repo = tmp_path_factory.mktemp("dag") / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or rel.startswith(("metrics/", "reports/")) or not (ROOT / rel).exists():
            continue
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        params = yaml.safe_load((repo / "params.yaml").read_text())
        # foreach over ${sources} (collect) or ${domains} (train, evaluate)
        keys = list(params[stage["foreach"].strip("${}")]) if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for key in keys:
            for entry in [*body.get("outs", []), *body.get("metrics", []), *body.get("deps", [])]:
                path = entry if isinstance(entry, str) else next(iter(entry))
                if "${item" not in path:  # a source's watch path exists already (data/sample)
                    placeholder(repo / path.replace("${key}", key or ""))
    sh("git init -q && git config user.email t@t && git config user.name t", repo)  # .dvc/config came with the files (Hydra on)
    sh("dvc commit -f -q && git add -A && git commit -qm init", repo)
    assert "up to date" in sh("dvc status", repo)
    (repo.parent / "hub").symlink_to(tiny_hub[0])  # holds the hub ids of presets llama32_3b and qwen25_1_5b
    return repo


def planned(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def after(repo: Path, override: str, stage: str) -> tuple[set[str], set[str]]:
    """(stages `dvc status` reports changed, stages `dvc repro --dry` would run) once params.yaml has the override
    and `stage` has run on it; the repo is restored afterwards."""
    sh(f"python -m slmforge.cli compose {override}", repo)
    try:
        # as inside `dvc exp run`, which sets DVC_EXP_NAME: params.yaml holds the run's override, not conf/ alone
        sh(f"DVC_EXP_NAME=dag dvc repro -q --single-item {stage}", repo)
        pin = json.loads((repo / f"models/{stage.replace('_model', '')}.json").read_text())
        assert pin["source"] == "hub", pin
        changed = set(yaml.safe_load(sh("dvc status --json", repo)))
        return changed, planned(sh("dvc repro --dry", repo))
    finally:
        sh("git checkout -q HEAD -- params.yaml dvc.lock && dvc checkout -q -f", repo)  # HEAD: DVC autostages


@pytest.mark.parametrize("model", ["llama32_3b", "qwen25_1_5b"])
def test_another_model_reruns_no_stage_up_to_split(repo, model):
    """`dvc exp run -S model=X`: the base stage pins the new model, and only what uses it (train, evaluate, the
    scorer) is out of date; no data stage, so the split's test items (and test_fingerprint) are the ones the first
    model was evaluated on."""
    changed, would_run = after(repo, f"model={model}", "base")
    assert {"train@all", "evaluate@all", "train_scorer", "evaluate_scorer"} <= changed, changed
    assert not changed & DATA_STAGES and not would_run & DATA_STAGES, (changed, would_run)
    assert "base" not in changed


def test_another_oracle_model_reruns_the_data_stages_and_not_the_model(repo):
    """The oracle has its own pin: another local oracle relabels the data, and leaves the base model alone."""
    changed, _ = after(repo, "oracle.model=Qwen/Qwen2.5-1.5B-Instruct", "oracle_model")
    assert {"synthesize", "calibrate", "label"} <= changed and not changed & {"base", "train_scorer"}, changed
