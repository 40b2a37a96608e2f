"""Experiments through DVC's queue, on the repository of tests/e2e/conftest.py after its param change ("r8").

A sweep of four points run by one worker (the `sweep` step), then two of its points forced again and run by two
workers at once: each gives what the one-worker queue gave, and the cache both wrote into is intact.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import (DOMAIN_STAGES, cache_object, cached_file, experiment_refs, git, note_timings, outs_of,
                                ran, run_queue, sh)

pytestmark = pytest.mark.slow

POINTS = {"par-r4": "-S lora.r=4 -S train.lr=1e-4", "par-r16": "-S lora.r=16 -S train.lr=3e-4"}


def sweep_names(repo: Path) -> list[str]:
    exps = json.loads(sh("dvc exp show --json", repo).stdout)
    return [e["name"] for row in exps for e in (row.get("experiments") or []) if e.get("name")]


def uncached(repo: Path, path: str) -> bool:
    """Whether dvc.yaml marks `path` `cache: false` (the metrics, kept in git)."""
    import fnmatch

    import yaml

    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        body = stage.get("do", stage)
        for entry in [*body.get("outs", []), *body.get("metrics", [])]:
            if isinstance(entry, dict):
                (pattern, opts), = entry.items()
                if opts.get("cache") is False and fnmatch.fnmatch(path, pattern.replace("${key}", "*")):
                    return True
    return False


@pytest.fixture(scope="module")
def two_workers(repo, sweep) -> tuple[str, list[tuple[str, datetime, datetime]], float]:
    """Two points of the sweep again, forced to execute (their results are in the run-cache now), queued under the
    names of POINTS and run by two workers at once: `run_queue`'s (status, tasks, seconds)."""
    for name, sets in POINTS.items():
        sh(f"dvc exp run --queue -n {name} -f -s {sets} {' '.join(DOMAIN_STAGES)}", repo)
    status, tasks, seconds = run_queue(repo, 2)
    note_timings(repo, j2_two_experiments_s=seconds)
    return status, tasks, seconds


# --- a sweep, one experiment at a time ----------------------------------------------------------------------------

def test_queued_sweep_runs_its_four_experiments_one_at_a_time(sweep):
    status, tasks, _ = sweep
    assert len(tasks) == 4 and all(b <= a2 for (_, _, b), (_, a2, _) in zip(tasks, tasks[1:])), tasks  # one at a time
    assert status.count("Success") == 4, status


def test_queued_sweep_runs_only_train_and_evaluate(repo, sweep):
    names = sweep_names(repo)
    assert len(names) == 4, names
    for name in names:
        log = sh(f"dvc queue logs {name}", repo).stdout
        assert set(DOMAIN_STAGES) <= set(ran(log)) <= {*DOMAIN_STAGES, "domains", "cost"}, (name, ran(log))


def test_an_experiments_metrics_diff_against_the_baseline(repo, sweep):
    names = sweep_names(repo)
    diff = sh(f"dvc metrics diff HEAD {names[0]}", repo).stdout
    assert "metrics/eval/stats.json" in diff and "metrics/eval/tweets.json" in diff


# --- two workers at once, and the cache they share ---------------------------------------------------------------

def test_two_queue_workers_run_two_experiments_at_the_same_time(two_workers):
    status, tasks, _ = two_workers
    for name in POINTS:
        assert any(name in line and "Success" in line for line in status.splitlines()), status
    # two workers, each running one of them, at the same time
    assert len(tasks) == 2 and tasks[0][0] != tasks[1][0], tasks
    overlap = (min(t[2] for t in tasks) - max(t[1] for t in tasks)).total_seconds()
    assert overlap > 0, f"the two experiments did not run at the same time: {tasks}"


def test_two_queue_workers_give_the_results_of_one_at_a_time(repo, two_workers):
    # each of the two points must give what the one-worker queue gave for the same params (its twin)
    refs = experiment_refs(repo)
    import yaml

    def params_of(rev: str) -> tuple:
        params = yaml.safe_load(git(repo, "show", f"{rev}:params.yaml"))
        return params["lora"]["r"], params["train"]["lr"]

    report = {}
    for name in POINTS:
        log = sh(f"dvc queue logs {name}", repo).stdout
        assert set(DOMAIN_STAGES) <= set(ran(log)) <= {*DOMAIN_STAGES, "domains", "cost"}, (name, ran(log))
        twin = next(n for n, rev in refs.items() if n not in POINTS and params_of(rev) == params_of(refs[name]))
        mine, theirs = outs_of(repo, refs[name]), outs_of(repo, refs[twin])
        train_a, train_b = (json.loads(cached_file(repo, o, "metrics/train/stats/metrics.json")) for o in (mine, theirs))
        for key in ("train_loss", "eval_loss", "best_eval_loss", "best_step", "last_step"):
            assert train_a[key] == pytest.approx(train_b[key], abs=1e-4), (name, twin, key, train_a[key], train_b[key])
        eval_a, eval_b = (json.loads(git(repo, "show", f"{refs[n]}:metrics/eval/stats.json")) for n in (name, twin))
        assert eval_a["verdict"] == eval_b["verdict"]
        for key in ("rouge_l", "perplexity", "token_accuracy"):
            assert eval_a["tuned"][key] == pytest.approx(eval_b["tuned"][key], abs=1e-4), (name, key)
        weights = [cached_file(repo, o, "models/adapters/stats/adapter_model.safetensors") for o in (mine, theirs)]
        report[name] = {"twin": twin, "adapter_identical": weights[0] == weights[1],
                        "eval_loss": [train_a["eval_loss"], train_b["eval_loss"]]}
    note_timings(repo, comparison=report)


def test_the_cache_two_workers_shared_holds_every_output_intact(repo, two_workers):
    # Nothing in the shared cache is corrupt: every output of every experiment is there, and every object's
    # content hashes to its name (a folder's listing included).
    for rev in [*experiment_refs(repo).values(), "HEAD"]:
        for out, md5 in outs_of(repo, rev).items():
            if uncached(repo, out):
                continue
            assert cache_object(repo, md5).exists(), (rev, out)
            if md5.endswith(".dir"):
                for entry in json.loads(cache_object(repo, md5).read_text()):
                    assert cache_object(repo, entry["md5"]).exists(), (rev, out, entry["relpath"])
    objects = [p for p in (repo / ".dvc/cache/files/md5").glob("*/*") if p.is_file()]
    for path in objects:
        name = path.parent.name + path.name.removesuffix(".dir")
        assert hashlib.md5(path.read_bytes()).hexdigest() == name, path
    note_timings(repo, cache_objects_checked=len(objects))
