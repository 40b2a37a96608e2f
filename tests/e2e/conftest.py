"""The end-to-end tests' one repository and the helpers that drive it: a fresh copy of this repo run as a user runs it.

Building the repository (`dvc repro` of the whole DAG on the tiny profiles, the local oracle labelling ~560 rows)
takes minutes, so it is built once per session and the modules share it. Each fixture below brings it one step
further, the way a user's session goes, and builds the steps before it when a test is run alone:

  first_repro  a fresh copy (conf/config.yaml on the tiny profiles, two domains, two sources), `dvc repro`,
               committed as "run"; `repo` is its folder. test_pipeline.py reads what this run made, then runs
               no-op, forced and code-change repros that leave the repository as they found it.
  retrained    conf/ edited (lora.r=8, train.max_steps=10, the judge off), refused while params.yaml is stale,
               composed, a repro killed mid-train and resumed, committed as "r8" (test_pipeline.py's last tests).
  sweep        four queued experiments run by one worker on top of "r8" (test_queue.py; test_remote.py's
               teammate restores one of them from the run-cache).

A step changes what the steps before it left (after `retrained` the first run's metrics are gone), so the modules
run in file-name order, which is what `pytest tests/e2e` does: test_claude_pipeline.py (a repository of its own),
test_pipeline.py (first_repro, then retrained), test_queue.py (sweep, then two workers), test_remote.py (push and
pull to a local remote, then an S3 remote that becomes the default). Within a module the tests that change the
repository come after those that read it. No step is undone, so pass modules to pytest in that order, never
another. A single test (`pytest tests/e2e/test_queue.py::test_x`) builds only the steps it needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOMAINS = ["stats", "tweets"]  # conf/domains/stats_tweets.yaml: one adapter each, from one split
DOMAIN_STAGES = [f"{stage}@{d}" for stage in ("train", "evaluate") for d in DOMAINS]


# --- running commands in a project ------------------------------------------------------------------------------

def sh(cmd: str, cwd: Path, check: bool = True, timeout: int = 1800, store: Path | None = None,
       extra_env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    # The oracle's answer store lives beside the repo (never in the user's ~/.cache during tests).
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               SLMFORGE_CACHE=str(store or cwd.parent / "store"), **(extra_env or {}))
    if log is None:
        proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    else:  # output to a file: a daemon the command leaves behind (a queue worker) keeps no pipe of ours open
        with open(log, "w") as out:
            proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
        proc.stdout, proc.stderr = log.read_text(), ""
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def run_facts(repo: Path, stage: str) -> dict:
    """What a stage's last run did (calls, cache hits, seconds): metrics/runs/, beside its outputs, not in them."""
    return json.loads((repo / f"metrics/runs/{stage}.json").read_text())


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def set_conf(repo: Path, rel: str, key: str, value: str) -> None:
    path = repo / "conf" / rel
    lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def copy_project(top: Path, config_edits: dict[str, str]) -> Path:
    """The repo's tracked files (no lock, metrics or reports: as a fresh clone before its first run) in
    top/repo, conf/config.yaml edited by plain replacements, committed with params.yaml composed."""
    repo = top / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or rel.startswith(("metrics/", "reports/")):
            continue
        if (ROOT / rel).exists():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    config = repo / "conf" / "config.yaml"
    text = config.read_text()
    for old, new in config_edits.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    sh("git init -q && git config user.email t@t && git config user.name t", repo)
    sh("python -m slmforge.cli compose && git add -A && git commit -qm init", repo)
    return repo


def note_timings(repo: Path, **facts) -> None:
    """Adds to timings.json beside the repo (how long the queues took, what was compared): read by people."""
    path = repo.parent / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.update(facts)
    path.write_text(json.dumps(timings, indent=1))


# --- the experiment queue ----------------------------------------------------------------------------------------

def run_queue(repo: Path, workers: int) -> tuple[str, list[tuple[str, datetime, datetime]], float]:
    """`dvc queue start -j workers`, waiting until the queue is empty: (final status, the (worker, received,
    finished) of each experiment this start ran, seconds)."""
    start, since = time.time(), datetime.now().replace(microsecond=0)
    # The workers run on after `dvc queue start` returns; with pipes, waiting for its output waited for them too.
    sh(f"dvc queue start -j {workers}", repo, timeout=300, log=repo.parent / f"queue_start_j{workers}.log")
    deadline = start + 3600  # two experiments at once on 2 cores took 390-970 s each
    while True:
        proc = sh("dvc queue status", repo, check=False)  # may fail while a worker holds the repo: ask again
        status = proc.stdout
        if proc.returncode == 0 and "Queued" not in status and "Running" not in status:
            return status, worker_tasks(repo, since), time.time() - start
        assert time.time() < deadline, status + proc.stderr
        time.sleep(3)


def worker_tasks(repo: Path, since: datetime) -> list[tuple[str, datetime, datetime]]:
    """(worker, started, finished) of every experiment a queue worker finished after `since`, from the workers'
    own logs (.dvc/tmp/exps/celery/dvc-exp-worker-N.out: "Task ...[id] succeeded in S s", celery's local time);
    started is finished minus S (a worker may log "received" for a task it prefetched before it starts it)."""
    pattern = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+): INFO/MainProcess\] Task \S+\[[0-9a-f-]+\] "
                         r"succeeded in ([\d.]+)s")
    tasks = []
    for log in sorted((repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out")):
        for line in log.read_text().splitlines():
            match = pattern.match(line)
            if match:
                finished = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
                if finished >= since:
                    tasks.append((log.stem, finished - timedelta(seconds=float(match[2])), finished))
    return sorted(tasks, key=lambda t: t[1])


def experiment_refs(repo: Path) -> dict[str, str]:
    """name -> commit of every experiment (refs/exps/<2 hex>/<baseline sha>/<name>)."""
    refs = {}
    for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines():
        ref, sha = line.split()
        if len(ref.split("/")) == 5:
            refs[ref.rsplit("/", 1)[1]] = sha
    return refs


# --- DVC's cache -------------------------------------------------------------------------------------------------

def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def outs_of(repo: Path, rev: str) -> dict[str, str]:
    """Every stage output of a revision's dvc.lock: path -> md5."""
    import yaml

    lock = yaml.safe_load(git(repo, "show", f"{rev}:dvc.lock"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def cached_file(repo: Path, outs: dict[str, str], path: str) -> bytes:
    """A file of a revision as DVC has it: the output itself, or a file inside an output folder."""
    for out, md5 in outs.items():
        if path == out:
            return cache_object(repo, md5).read_bytes()
        if path.startswith(out + "/"):
            listing = json.loads(cache_object(repo, md5).read_text())
            entry = next(e for e in listing if e["relpath"] == path[len(out) + 1:])
            return cache_object(repo, entry["md5"]).read_bytes()
    raise KeyError(path)


# --- the repository, one step of a user's session after another --------------------------------------------------

@pytest.fixture(scope="session")
def first_repro(tmp_path_factory) -> tuple[Path, str]:
    """A fresh copy on the tiny profiles after its first `dvc repro`, committed as "run": (repo, repro's output)."""
    repo = copy_project(tmp_path_factory.mktemp("e2e"), {"train: cpu": "train: tiny", "eval: default": "eval: tiny",
                                                         "scorer: default": "scorer: tiny",
                                                         "sources: [sample]": "sources: [sample, files]",
                                                         "domains: all": "domains: stats_tweets"})
    out = sh("dvc repro", repo, timeout=3600).stdout  # every stage, the local oracle labelling ~560 rows: minutes
    sh("git add -A && git commit -qm run", repo)
    return repo, out


@pytest.fixture(scope="session")
def repo(first_repro) -> Path:
    """The repository's folder (top/repo; the answer store, clones and remotes go beside it in top/)."""
    return first_repro[0]


@pytest.fixture(scope="session")
def retrained(repo) -> tuple[subprocess.CompletedProcess, str]:
    """conf/ edited (lora.r=8, train.max_steps=10, the judge off), `dvc repro` refused while params.yaml is stale,
    composed, a repro killed mid-train (the machine dies) and run again, committed as "r8":
    (the refused repro, the output of the repro after the kill)."""
    set_conf(repo, "lora/r16.yaml", "r", "8")
    set_conf(repo, "train/tiny.yaml", "max_steps", "10")
    tiny_eval = repo / "conf/eval/tiny.yaml"  # and the judge off: evaluate decides on the paired metric alone
    tiny_eval.write_text(tiny_eval.read_text().replace("  enabled: true", "  enabled: false"))
    # conf/ edited without `dvc exp run`: the first stage to run refuses (test_pipeline.py checks how)
    stale = sh("dvc repro", repo, check=False)
    sh("python -m slmforge.cli compose", repo)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", SLMFORGE_CACHE=str(repo.parent / "store"))
    first = subprocess.Popen("dvc repro", shell=True, cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 600
    while not list((repo / "checkpoints/train").rglob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint finish writing
    os.killpg(first.pid, signal.SIGKILL)  # the machine dies mid-train
    first.wait()
    lock = repo / ".dvc/tmp/rwlock"
    if lock.exists():
        lock.unlink()  # a killed dvc leaves its lock; dvc itself says to remove it

    out = sh("dvc repro", repo).stdout
    sh("git add -A && git commit -qm r8", repo)
    return stale, out


@pytest.fixture(scope="session")
def sweep(repo, retrained) -> tuple[str, list[tuple[str, datetime, datetime]], float]:
    """Four experiments around "r8" queued and run by one worker: `run_queue`'s (status, tasks, seconds)."""
    # every point differs from the baseline (r=8, lr=2e-4): a point equal to it would rightly run nothing
    sh("dvc exp run --queue -S 'lora.r=4,16' -S 'train.lr=1e-4,3e-4'", repo)
    status, tasks, seconds = run_queue(repo, 1)
    note_timings(repo, j1_four_experiments_s=seconds)
    return status, tasks, seconds
