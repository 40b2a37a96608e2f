"""Sharing the repository of tests/e2e/conftest.py through DVC remotes, after its param change ("r8").

First the default remote (a folder beside the repo): push, then pull into a fresh clone whose empty answer store is
refilled from DVC's cache. Then an S3 remote on 127.0.0.1 (moto), made the default: `slmforge push` sends what
`dvc push --run-cache` leaves out, a fresh clone pulls from it, and a teammate's `dvc repro --pull` on the first
commit restores every stage through the run-cache without running one, as does an experiment of the sweep.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import (DOMAIN_STAGES, cache_object, cached_file, experiment_refs, git, outs_of, ran,
                                run_facts, sh)

pytestmark = pytest.mark.slow

ADD_S3 = ("dvc remote add {} -d s3remote s3://slmforge-e2e/dvcstore && "
          "dvc remote modify {} s3remote endpointurl {endpoint}")


# --- the default remote --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clone(repo, retrained) -> Path:
    """`dvc push` to the default remote, then a fresh git clone beside the repo that ran `dvc pull`."""
    sh("dvc push", repo)
    clone = repo.parent / "clone"  # beside repo, so the relative default remote is the same folder
    sh(f"git clone -q {repo} {clone}", repo.parent)
    sh("dvc pull", clone)
    return clone


def test_push_then_pull_into_a_fresh_clone_restores_every_output(repo, clone):
    for rel in ["models/base/model.safetensors", "models/adapters/stats/adapter_model.safetensors",
                "models/adapters/tweets/adapter_model.safetensors", "data/split/train.jsonl", "data/raw/sample.jsonl",
                "data/chatml/all.jsonl"]:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    status = sh("dvc status", clone).stdout
    assert "up to date" in status.lower(), status


def test_a_clone_with_an_empty_answer_store_relabels_from_dvcs_cache(repo, clone):
    # A teammate with an empty answer store re-runs label: the answers come back from DVC's cache, not the oracle.
    sh("dvc repro -f -s label", clone, store=clone.parent / "teammate_store")
    oracle = run_facts(clone, "label")["oracle"]
    assert oracle["calls"] == 0 and oracle["cache_hits"] > 0, oracle
    assert (clone / "data/labels/labels.jsonl").read_bytes() == (repo / "data/labels/labels.jsonl").read_bytes()


# --- a shared remote on S3 -----------------------------------------------------------------------------------------

def objects_named_by_run_records(repo: Path) -> dict[str, str]:
    """md5 -> output path of every object the local run-cache's records name (a folder's listing and its files)."""
    import yaml

    named = {}
    for record in (repo / ".dvc/cache/runs").glob("*/*/*"):
        for out in yaml.safe_load(record.read_text())["outs"]:
            named[out["md5"]] = out["path"]
            if out["md5"].endswith(".dir"):
                for entry in json.loads(cache_object(repo, out["md5"]).read_text()):
                    named[entry["md5"]] = f"{out['path']}/{entry['relpath']}"
    return named


def remote_objects(endpoint: str, env: dict[str, str]) -> set[str]:
    """md5 of every object on the test bucket's DVC remote (files/md5/<2>/<30>)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    found = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="slmforge-e2e", Prefix="dvcstore/files/md5/"):
        for item in page.get("Contents", []):
            first, rest = item["Key"].split("/")[-2:]
            found.add(first + rest)
    return found


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with a bucket, and the fake credentials (environment only, never a file)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "e2e-fake-key-id", "AWS_SECRET_ACCESS_KEY": f"e2e-fake-secret-{os.getpid()}",
           "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(
        Bucket="slmforge-e2e")
    yield endpoint, env
    server.stop()


@pytest.fixture(scope="module")
def pushed(repo, sweep, s3) -> dict:
    """The S3 remote added as the default (committed), `dvc push --run-cache`, then `slmforge push`: what the run
    records name, what dvc's push left out of it, and slmforge push's output."""
    endpoint, env = s3
    sh(ADD_S3.format("", "", endpoint=endpoint), repo)
    sh("git add .dvc/config && git commit -qm 's3 remote'", repo)
    sh("dvc push --run-cache", repo, extra_env=env, timeout=1200)
    named = objects_named_by_run_records(repo)
    missing = set(named) - remote_objects(endpoint, env)
    out = sh("python -m slmforge.cli push", repo, extra_env=env, timeout=1200).stdout
    return {"named": named, "missing": missing, "out": out}


def test_dvc_push_leaves_out_the_outputs_only_other_run_records_name(pushed):
    named, missing = pushed["named"], pushed["missing"]
    # DVC 3.6x sends the run records and this commit's outputs, not the outputs the other records name (the sweep's
    # experiments, the first commit's train) nor any `cache: false` metric: a teammate's restore would need them.
    assert any(named[md5].startswith("metrics/") for md5 in missing), sorted(named[md5] for md5 in missing)


def test_slmforge_push_sends_every_object_the_run_records_name(pushed, s3):
    endpoint, env = s3
    named, missing, out = pushed["named"], pushed["missing"], pushed["out"]
    # slmforge push: the same as dvc push --run-cache, then every object the records name
    sent = int(re.search(r"(\d+) sent now", out)[1])
    assert sent >= len(missing), (out, len(missing))
    assert not set(named) - remote_objects(endpoint, env)  # every object every run record names is on the remote


def test_the_s3_credentials_stay_out_of_the_repository(repo, pushed, s3):
    _, env = s3
    assert env["AWS_SECRET_ACCESS_KEY"] not in (repo / ".dvc/config").read_text() + (repo / "dvc.lock").read_text()


def test_a_fresh_clone_pulls_every_output_of_the_last_commit_from_s3(repo, pushed, s3):
    _, env = s3
    clone = repo.parent / "s3clone"
    sh(f"git clone -q {repo} {clone}", repo.parent)
    sh("dvc pull", clone, store=repo.parent / "s3clone_store", extra_env=env)
    for rel in ["models/base/model.safetensors", "models/adapters/stats/adapter_model.safetensors",
                "data/split/train.jsonl", "reports/eval/stats/eval.md", "metrics/train/tweets/metrics.json",
                "reports/domains.md"]:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert "up to date" in sh("dvc status", clone, extra_env=env).stdout.lower()


@pytest.fixture(scope="module")
def teammate(repo, pushed, s3) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A teammate's clone on the first commit, which has no dvc.lock (no output and no lock entry, so only the
    run-cache pushed above can say what each stage made), that ran `dvc repro --pull` with an empty answer store:
    (clone, store, repro's output)."""
    endpoint, env = s3
    mate = repo.parent / "teammate"
    store = repo.parent / "teammate_empty_store"
    sh(f"git clone -q {repo} {mate}", repo.parent)
    first = git(mate, "rev-list", "--max-parents=0", "HEAD").strip()
    sh(f"git checkout -q {first}", mate)
    assert not (mate / "dvc.lock").exists() and not (mate / "models").exists()
    sh(ADD_S3.format("--local", "--local", endpoint=endpoint), mate)  # that commit predates the shared remote
    out = sh("dvc repro --pull", mate, store=store, extra_env=env, timeout=1200)
    return mate, store, out


def test_a_teammate_on_the_first_commit_restores_every_stage_from_the_run_cache(teammate, s3):
    mate, _, out = teammate
    _, env = s3
    # only cost runs: it declares no output (its figures are run facts), so the run-cache has nothing to restore
    assert set(ran(out.stdout)) <= {"cost"}, out.stdout[-3000:]
    restored = [line.split("'")[1] for line in out.stdout.splitlines() if "is cached - skipping run" in line]
    # cost declares no output (it writes run facts only): nothing to restore, it runs again in a second
    assert sorted(set(restored) - {"cost"}) == sorted(["check_params", "collect@files", "collect@sample", "base",
                                                       "oracle_model", "clean", "synthesize", "chatml", "calibrate",
                                                       "label", "split", *DOMAIN_STAGES, "domains", "train_scorer",
                                                       "evaluate_scorer"]), out.stdout[-3000:]
    assert "up to date" in sh("dvc status", mate, extra_env=env).stdout.lower()


def test_the_teammate_gets_the_paid_answers_without_asking_the_oracle(teammate):
    mate, store, _ = teammate
    for stage in ("synthesize", "calibrate", "label", "evaluate/stats"):  # the answers somebody paid for
        assert list((mate / "data/oracle_cache" / stage).rglob("*.json*")), stage
    assert not store.exists() or not list(store.rglob("*.json*"))  # nothing was asked of the oracle


def test_the_teammate_restores_an_experiment_of_the_sweep_from_the_run_cache(repo, teammate, s3):
    # Last in this module: it moves the teammate's clone to the last commit.
    mate, store, _ = teammate
    _, env = s3
    # Back on the last commit, an experiment someone already ran in the sweep (r=4, lr=1e-4): the unchanged stages
    # are pulled, train and evaluate come from the run-cache.
    sh("git checkout -q -f - && git config user.email t@t && git config user.name t", mate)
    out = sh("dvc exp run --pull -S lora.r=4 -S train.lr=1e-4", mate, store=store, extra_env=env, timeout=1200)
    assert set(ran(out.stdout)) <= {"cost"}, out.stdout[-3000:]
    assert set(DOMAIN_STAGES) <= {line.split("'")[1] for line in out.stdout.splitlines()
                                    if "is cached - skipping run" in line}, out.stdout[-3000:]
    assert json.loads((mate / "models/adapters/stats/adapter_config.json").read_text())["r"] == 4
    sweep_weights = {cached_file(repo, outs_of(repo, rev), "models/adapters/stats/adapter_model.safetensors")
                     for rev in experiment_refs(repo).values()}
    assert (mate / "models/adapters/stats/adapter_model.safetensors").read_bytes() in sweep_weights
