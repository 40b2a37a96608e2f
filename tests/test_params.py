"""params.yaml is the composition of conf/, sections load strictly, and a stale file stops a stage."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.params import (SECTIONS, build, check_params_fresh, compose, load_params, load_source_params,
                             LoraParams)


def test_committed_params_equal_composition_of_conf(root):
    committed = yaml.safe_load((root / "params.yaml").read_text())
    assert committed == compose(root / "conf"), "params.yaml is stale: run `slmforge compose` and commit it"


def test_every_section_loads_typed(root):
    for section in SECTIONS:
        load_params(section, root / "params.yaml")
    assert load_source_params("sample", root / "params.yaml").path == "data/sample"


def test_every_group_option_composes(root):
    for group in ["model", "lora", "train", "eval", "split", "chatml"]:
        for option in (root / "conf" / group).glob("*.yaml"):
            cfg = compose(root / "conf", [f"{group}={option.stem}"])
            build(SECTIONS[group], cfg[group], group)
            first = option.read_text().splitlines()[0]
            assert first.startswith("#"), f"{option} must open with a comment saying what it is for"


def test_unknown_missing_and_mistyped_keys_are_errors():
    good = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"}
    assert build(LoraParams, good, "lora").r == 8
    with pytest.raises(UserError, match="unknown key lora.rank"):
        build(LoraParams, {**good, "rank": 4}, "lora")
    with pytest.raises(UserError, match="missing key lora.alpha"):
        build(LoraParams, {k: v for k, v in good.items() if k != "alpha"}, "lora")
    with pytest.raises(UserError, match="lora.r"):
        build(LoraParams, {**good, "r": "eight"}, "lora")


@pytest.fixture
def project_copy(tmp_path, root):
    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copytree(root / "stages", tmp_path / "stages")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_stale_params_are_detected_with_a_one_line_fix(project_copy, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    check_params_fresh(project_copy / "params.yaml", project_copy / "conf")  # fresh: no error
    lora = project_copy / "conf" / "lora" / "r16.yaml"
    lora.write_text(lora.read_text().replace("r: 16", "r: 12"))
    with pytest.raises(UserError) as err:
        check_params_fresh(project_copy / "params.yaml", project_copy / "conf")
    message = str(err.value)
    assert "\n" not in message and "lora.r" in message and "dvc exp run" in message
    # Inside `dvc exp run` DVC has just composed params.yaml itself (with the run's -S overrides).
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    check_params_fresh(project_copy / "params.yaml", project_copy / "conf")


def test_stage_exits_with_one_line_on_stale_params(project_copy):
    lora = project_copy / "conf" / "lora" / "r16.yaml"
    lora.write_text(lora.read_text().replace("r: 16", "r: 12"))
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    proc = subprocess.run([sys.executable, "-m", "stages.split", "--chatml", "x", "--labels", "l",
                           "--train", "y/train.jsonl", "--val", "y/val.jsonl", "--test", "y/test.jsonl", "--probes", "y/probes.jsonl",
                           "--metrics", "z"],
                          cwd=project_copy, env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml is stale"), proc.stderr
