"""`slmforge push` on a real DVC repository in a temp dir with a local remote: `dvc push --run-cache` alone leaves
a run record's `cache: false` metric off the remote, so a teammate's `dvc repro --pull` runs the stage again;
after `slmforge push` the teammate's repro restores it without running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.errors import UserError
from slmforge.sharing import push_runs, run_records

BIN = Path(sys.executable).parent

DVC_YAML = """stages:
  make:
    cmd: python make.py
    deps:
      - make.py
      - input.txt
    outs:
      - out.txt
    metrics:
      - metrics.json:
          cache: false
"""

MAKE_PY = """import json, pathlib
text = pathlib.Path("input.txt").read_text()
pathlib.Path("out.txt").write_text(text.upper())
pathlib.Path("metrics.json").write_text(json.dumps({"chars": len(text)}))
"""


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"`{cmd}` failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def remote_md5s(remote: Path) -> set[str]:
    return {p.parent.name + p.name for p in (remote / "files/md5").glob("*/*")}


@pytest.fixture
def project(tmp_path) -> tuple[Path, Path]:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "make.py").write_text(MAKE_PY)
    (repo / "input.txt").write_text("shared by the run-cache\n")
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q", repo)
    sh(f"dvc remote add -d shared {remote} && git add -A && git commit -qm init", repo)  # no dvc.lock committed
    out = sh("dvc repro", repo).stdout
    assert "Running stage 'make'" in out
    return repo, remote


def teammate_repro(repo: Path, name: str) -> str:
    mate = repo.parent / name
    sh(f"git clone -q {repo} {mate}", repo.parent)
    assert not (mate / "dvc.lock").exists() and not (mate / "out.txt").exists()
    return sh("dvc repro --pull", mate).stdout


def test_push_runs_sends_what_the_run_records_name_and_a_teammate_restores_without_running(project):
    repo, remote = project
    metric_md5 = __import__("hashlib").md5((repo / "metrics.json").read_bytes()).hexdigest()

    sh("dvc push --run-cache", repo)
    assert (remote / "runs").is_dir() and metric_md5 not in remote_md5s(remote)  # the record, not its metric
    out = teammate_repro(repo, "mate_dvc_push_only")
    assert "Running stage 'make'" in out, out  # the record's outputs are not all on the remote: it ran again

    report, name = push_runs(repo)
    assert name == "shared" and report.records == len(run_records(repo / ".dvc/cache/runs")) == 1
    assert report.objects == 2 and report.transferred == 1 and report.missing == 0, report  # out.txt was there
    assert metric_md5 in remote_md5s(remote)
    assert "1 run record(s) naming 2 object(s), 1 sent now" in report.line(name)
    again, _ = push_runs(repo)
    assert again.transferred == 0 and again.objects == 2

    out = teammate_repro(repo, "mate")
    assert "Stage 'make' is cached - skipping run" in out and "Running stage" not in out, out
    mate = repo.parent / "mate"
    assert (mate / "out.txt").read_text() == "SHARED BY THE RUN-CACHE\n"
    assert (mate / "metrics.json").read_bytes() == (repo / "metrics.json").read_bytes()


def test_push_runs_without_a_remote_is_one_line_saying_how_to_add_one(project):
    repo, _ = project
    sh("dvc remote remove shared", repo)
    with pytest.raises(UserError) as err:
        push_runs(repo)
    assert "dvc remote add -d NAME URL" in str(err.value) and "\n" not in str(err.value)


def test_push_runs_outside_a_dvc_repository_is_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        push_runs(tmp_path)
    assert "not a DVC repository" in str(err.value)
