"""DVC: the wall time of a no-op `dvc repro`, and which stages a change of one param of each stage sets off.

Both in a clone of the committed repo (HEAD) whose outputs are checked out from this repo's DVC cache, so
the working tree's own state never enters the figures. For the second, each stage's first param is changed
in params.yaml (as `dvc exp run -S` does) and `dvc repro --dry` lists the stages that would run first: it
must be exactly the stages that read that param (none upstream, no sibling, no stage that does not read
it). The stages downstream of those then run when, and only when, an output they read changed: DVC
compares content hashes, so that part depends on the data; DVC's graph gives the set it can reach, reported
beside. (Running every case for real would retrain the model once per param; the end-to-end tests run real
param changes and check the stages that executed.)

Run: python -m bench.pipeline [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import ROOT, RUNS, median, summary

BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def clone(top: Path) -> Path:
    repo = top / "repo"
    sh(["git", "clone", "--quiet", str(ROOT), str(repo)], top)
    cache = sh(["dvc", "cache", "dir"], ROOT).strip()
    sh(["dvc", "config", "--local", "cache.dir", cache], repo)
    sh(["dvc", "config", "--local", "cache.type", "hardlink,copy"], repo)  # the user's own choice would do too
    sh(["dvc", "checkout", "--quiet"], repo)
    return repo


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def changed(value):
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1] if value else "x"]
    if value is None:
        return "x"
    raise TypeError(type(value))


def leaf(params: dict, key: str) -> str:
    """The first scalar-or-list key at or under `key` (dotted)."""
    node = params
    for part in key.split("."):
        node = node[part]
    while isinstance(node, dict):
        sub = next(iter(node))
        key, node = f"{key}.{sub}", node[sub]
    return key


def set_key(params: dict, key: str) -> None:
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = changed(node[last])


def stage_params(repo: Path) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """{stage: its params keys} and {stage: the stages downstream of it}, from DVC's own index and graph."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # an edge runs from a stage to a stage it depends on
        keys = {s.name: [k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params] for s in graph.nodes}
        downstream = {s.name: {a.name for a in nx.ancestors(graph, s)} for s in graph.nodes}
    return keys, downstream


def bench(runs: int = RUNS) -> dict:
    with tempfile.TemporaryDirectory(prefix="slmforge-bench-dvc-") as tmp:
        repo = clone(Path(tmp))
        status = sh(["dvc", "status"], repo)  # also fills DVC's state (hashes of the outputs) as a user's repo has it
        if "up to date" not in status:
            raise SystemExit("bench: the committed dvc.lock does not match its outputs: run `make repro` and commit")
        noop = []
        for _ in range(runs):
            t = time.perf_counter()
            out = sh(["dvc", "repro"], repo)
            noop.append(time.perf_counter() - t)
            assert not ran(out), f"a no-op repro ran {ran(out)}"
        keys, downstream = stage_params(repo)
        original = (repo / "params.yaml").read_text()
        cases, exact = {}, True
        def readers_of(key: str) -> set[str]:
            return {s for s, ks in keys.items() if any(key == k or key.startswith(k + ".") for k in ks)}

        for stage, stage_keys in sorted(keys.items()):
            if not stage_keys:
                continue
            params = yaml.safe_load(original)
            # The stage's most private param (read by the fewest stages): train.lr for train, not model.name.
            key = min((leaf(params, k) for k in stage_keys), key=lambda k: len(readers_of(k)))
            set_key(params, key)
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            executed = ran(sh(["dvc", "repro", "--dry"], repo))
            readers = readers_of(key)
            reachable = set().union(*(downstream[s] for s in readers)) - readers
            cases[f"{stage}: {key}"] = {"ran_first": sorted(executed), "readers": sorted(readers),
                                        "then_reachable": sorted(reachable), "exact": executed == readers}
            exact &= executed == readers
            (repo / "params.yaml").write_text(original)
            shutil.rmtree(repo / ".dvc" / "tmp" / "repro.dat", ignore_errors=True)
    print(f"  dvc: no-op repro {median(noop):.2f} s; each param change set off exactly its readers: {exact} "
          f"({len(cases)} stages)", flush=True)
    return {"dvc.noop_repro_s": round(median(noop), 3), "dvc.noop_repro_seconds": summary(noop, 3),
            "dvc.only_downstream_executed": exact, "dvc.param_changes": cases}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args(argv)
    print(json.dumps(bench(args.runs), indent=2))


if __name__ == "__main__":
    main()
