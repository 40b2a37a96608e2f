"""`slmforge verify`: re-run the pipeline in a temporary clone of the commit and report, stage by stage, which
outputs differ from the commit's dvc.lock.

What it does is what a user would type (docs/lineage.md): `git clone` the repository and check out HEAD, point
the clone at this repository's DVC cache (`dvc cache dir`), `dvc checkout --allow-missing` what the lock names,
then `dvc repro --single-item --force --no-run-cache STAGE` for each stage in the order of the DAG, and compare
the lock entry each re-run writes with the committed one. Chained like this, the first stage that differs with
its inputs the same as locked is the one that is not reproducible; the stages after it are reported with their
inputs changed. Not re-run, and said so: a stage that depends on no code (a live API's pull, whose re-run is a
new snapshot by design), and data tracked by .dvc files.

The oracle's answers: with a local oracle (deterministic) they are asked again from an empty answer store, DVC's
copy of the last locked answers left unused, so the check covers the oracle too (`--answers fresh`); with a paid
API they are reused (`--answers reuse`), as a re-asked answer is a new sample and costs money.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slmforge.errors import UserError


@dataclass
class StageCheck:
    name: str
    result: str  # same | differs | snapshot | data | failed | not run | not locked
    outputs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # path -> (locked, rerun)
    inputs_changed: list[str] = field(default_factory=list)  # deps whose hash is not the locked one
    details: list[str] = field(default_factory=list)  # what differs inside an output, or why it failed

    @property
    def differing(self) -> list[str]:
        return [p for p, (a, b) in self.outputs.items() if a != b]


def sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise UserError(f"verify: `{' '.join(cmd)}` failed in {cwd}: {last}")
    return proc


def lock_entries(text: str) -> dict[str, dict]:
    return (yaml.safe_load(text) or {}).get("stages", {})


def hashes(entries: list[dict]) -> dict[str, str | None]:
    return {e["path"]: e.get("md5") for e in entries or []}


def first_difference(old: bytes, new: bytes, width: int = 160) -> str:
    """The first line that differs between two texts, as `line N: OLD -> NEW` (each cut to `width`)."""
    a, b = old.decode("utf-8", "replace").splitlines(), new.decode("utf-8", "replace").splitlines()
    for i, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return f"line {i}: {x.strip()[:width]!r} -> {y.strip()[:width]!r}"
    return f"{len(a)} lines -> {len(b)} lines"


def is_code(path: Path) -> bool:
    return path.suffix == ".py" or (path.is_dir() and any(path.rglob("*.py")))


def plan(clone: Path, until: str | None, only: list[str]) -> tuple[list[str], set[str], set[str]]:
    """(stages in DAG order up to `until` (all when None), the snapshot ones among them, the data ones)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {getattr(s, "name", None) or str(s): s for s in graph}
        for name in [until, *only]:
            if name and name not in by_name:
                raise UserError(f"verify: no stage {name!r} in dvc.yaml (stages: {', '.join(sorted(by_name))})")
        targets = [by_name[until]] if until else [s for s in graph if graph.in_degree(s) == 0]
        sub = graph.subgraph(set(targets).union(*(nx.descendants(graph, t) for t in targets)))
        order = [getattr(s, "name", None) or str(s) for s in nx.dfs_postorder_nodes(sub)]
        order = list(dict.fromkeys(order))
        data = {n for n in order if not getattr(by_name[n], "cmd", None)}
        snapshots = {n for n in order if n not in data
                     and not any(is_code(clone / d.def_path) for d in by_name[n].deps)}
    return [n for n in order if not only or n in only], snapshots, data


def compare(clone: Path, cache: Path, name: str, locked: dict, rerun: dict, head: str) -> StageCheck:
    old_outs, new_outs = hashes(locked.get("outs")), hashes(rerun.get("outs"))
    check = StageCheck(name, "same", {p: (old_outs.get(p), new_outs.get(p)) for p in sorted({*old_outs, *new_outs})})
    old_deps, new_deps = hashes(locked.get("deps")), hashes(rerun.get("deps"))
    check.inputs_changed = sorted(p for p in {*old_deps, *new_deps} if old_deps.get(p) != new_deps.get(p))
    if locked.get("params") != rerun.get("params"):
        check.inputs_changed.append("params")
    for path in check.differing:
        check.result = "differs"
        old, new = check.outputs[path]
        if old and new and old.endswith(".dir") and new.endswith(".dir"):
            listing = {}
            for md5, side in ((old, 0), (new, 1)):
                obj = cache / md5[:2] / md5[2:]
                for item in json.loads(obj.read_text()) if obj.exists() else []:
                    listing.setdefault(item["relpath"], [None, None])[side] = item["md5"]
            changed = sorted(rel for rel, (a, b) in listing.items() if a != b)
            if changed:
                check.details.append(f"{path}: {len(changed)} file(s) differ: {', '.join(changed[:5])}"
                                     + (" ..." if len(changed) > 5 else ""))
        elif old and new and (clone / path).is_file():
            obj = cache / old[:2] / old[2:]
            before = obj.read_bytes() if obj.exists() else sh(["git", "show", f"{head}:{path}"], clone,
                                                              check=False).stdout.encode()
            if before:
                check.details.append(f"{path}: {first_difference(before, (clone / path).read_bytes())}")
    return check


def verify(repo_dir: Path, until: str | None = None, only: list[str] = (), answers: str = "auto",
           workdir: Path | None = None, keep: bool = False, say=print) -> list[StageCheck]:
    """Re-run the stages in a clone of HEAD and compare each with the committed dvc.lock (see the module doc)."""
    from dvc.repo import Repo

    root = Path(sh(["git", "rev-parse", "--show-toplevel"], repo_dir).stdout.strip())
    head = sh(["git", "rev-parse", "HEAD"], root).stdout.strip()
    lock_text = sh(["git", "show", f"{head}:dvc.lock"], root, check=False).stdout
    if not lock_text:
        raise UserError("verify: HEAD has no dvc.lock to check: run the pipeline and commit dvc.lock first")
    with Repo(str(root)) as repo:
        cache = Path(repo.cache.local.path)  # .../files/md5
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="slmforge-verify-", dir=workdir))  # ours alone: removed at the end
    clone = top / "repo"
    try:
        sh(["git", "clone", "-q", str(root), str(clone)], top)
        sh(["git", "checkout", "-q", head], clone)
        # What `dvc cache dir --local DIR` and `dvc config --local ...` write, in one file instead of three calls:
        # this repository's cache (outputs linked, not copied), and no `git add` of the clone's lock.
        (clone / ".dvc/config.local").write_text(f"[cache]\n    dir = {cache.parents[1]}\n"
                                                  "    type = reflink,hardlink,copy\n[core]\n    autostage = false\n")
        params = yaml.safe_load((clone / "params.yaml").read_text()) if (clone / "params.yaml").exists() else None
        backend = ((params or {}).get("oracle") or {}).get("backend")
        fresh = answers == "fresh" or (answers == "auto" and backend == "local")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
        env["PYTHONPATH"] = os.pathsep.join([str(clone / "src"), str(clone)])  # the commit's code, not the worktree's
        if fresh:
            env.update(SLMFORGE_CACHE=str(top / "store"), SLMFORGE_SEED_ANSWERS="0")
        say(f"verify: {head[:12]} cloned into {clone}; DVC cache {cache.parents[1]}; oracle answers "
            f"{'asked again (empty store)' if fresh else 'reused from the answer store'}")
        sh(["dvc", "checkout", "--allow-missing", "-q"], clone, env, check=False)
        order, snapshots, data = plan(clone, until, list(only))
        locked = lock_entries(lock_text)
        checks: list[StageCheck] = []
        failed = False
        for name in order:
            if name in data or name in snapshots:
                checks.append(StageCheck(name, "data" if name in data else "snapshot"))
                continue
            if failed:
                checks.append(StageCheck(name, "not run"))
                continue
            say(f"verify: dvc repro --single-item --force --no-run-cache {name}")
            proc = sh(["dvc", "repro", "--single-item", "--force", "--no-run-cache", name], clone, env, check=False)
            if proc.returncode != 0:
                failed = True
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                checks.append(StageCheck(name, "failed", details=tail))
                continue
            rerun = lock_entries((clone / "dvc.lock").read_text()).get(name, {})
            if name not in locked:
                checks.append(StageCheck(name, "not locked"))
                continue
            checks.append(compare(clone, cache, name, locked[name], rerun, head))
            say(report_line(checks[-1]))
        return checks
    finally:
        if keep:
            say(f"verify: kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


RESULTS = {"same": "same as dvc.lock", "snapshot": "not re-run: depends on no code (a live pull is a snapshot)",
           "data": "not re-run: data tracked by DVC", "not run": "not run: an earlier stage failed",
           "not locked": "re-ran, but dvc.lock has no entry for it"}


def report_line(check: StageCheck) -> str:
    if check.result == "differs":
        cause = (f" (its inputs differ from the lock: {', '.join(check.inputs_changed[:3])})" if check.inputs_changed
                 else " (its inputs are as locked: this stage is not reproducible)")
        return f"  {check.name}: DIFFERS{cause}: {', '.join(check.differing)}" + "".join(
            f"\n      {d}" for d in check.details)
    if check.result == "failed":
        return f"  {check.name}: FAILED: " + " | ".join(check.details)
    return f"  {check.name}: {RESULTS[check.result]}" + (f" ({len(check.outputs)} outputs)" if check.outputs else "")


def main(args) -> int:
    checks = verify(Path(args.repo), args.until, args.only or [], args.answers, Path(args.workdir) if args.workdir
                    else None, args.keep, say=lambda line: print(line, file=sys.stderr, flush=True))
    print("verify: each stage re-run against dvc.lock")
    for check in checks:
        print(report_line(check))
    bad = [c.name for c in checks if c.result in ("differs", "failed", "not locked")]
    print(f"verify: {len(checks) - len(bad)} of {len(checks)} stages as locked" + (f"; not: {', '.join(bad)}" if bad
                                                                                    else ""))
    if args.json:
        Path(args.json).write_text(json.dumps([c.__dict__ | {"differing": c.differing} for c in checks], indent=1))
    return 1 if bad else 0
