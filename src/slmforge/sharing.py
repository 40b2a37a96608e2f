"""Sharing runs with a team: `dvc push --run-cache`, and the outputs its run records name.

DVC's run-cache keeps one record per stage run (its deps, params and the hashes of what it made), so a
teammate's `dvc repro --pull` can restore a stage someone else already ran instead of running it. In DVC 3.6x,
`dvc push --run-cache` sends the records (.dvc/cache/runs) and the outputs of the checked-out commit, but not
the outputs the other records name (dvc/repo/push.py computes them and only counts them). A teammate then
gets a record whose outputs are not on the remote, and the stage runs after all. Two kinds of output are never
on the remote that way:
- the outputs of runs that are not the checked-out commit: experiments, sweeps, older commits;
- the `cache: false` metrics of every stage: DVC keeps them in git, never pushes them, yet copies them into the
  local cache for the run record (dvc/stage/cache.py, `_uncached_outs`), and restoring a record needs them.

`push_runs` does what `dvc push --run-cache` does, then pushes every object the local run records name, with
DVC's own collection (`StageCache.get_used_objs`) and transfer (`DataCloud.push`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError


@dataclass(frozen=True)
class PushReport:
    pushed_by_dvc: int  # files `dvc push --run-cache` sent (records and the checked-out outputs)
    records: int  # run records in the local run-cache
    objects: int  # objects those records name (files and folder listings), found in the local cache
    transferred: int  # of those, sent now (the rest were on the remote already)
    missing: int  # named by a record but neither in the local cache nor sent (a `dvc gc` since): not restorable

    def line(self, remote: str) -> str:
        text = (f"pushed to {remote}: {self.pushed_by_dvc} file(s) by `dvc push --run-cache`; {self.records} run "
                f"record(s) naming {self.objects} object(s), {self.transferred} sent now")
        if self.missing:
            text += f"; {self.missing} named object(s) are in no cache (their runs cannot be restored)"
        return text


def run_records(runs_dir: Path) -> list[tuple[str, str]]:
    """(key, value) of every record in a run-cache folder (runs/<key[:2]>/<key>/<value>)."""
    if not runs_dir.is_dir():
        return []
    return sorted((record.parent.name, record.name) for record in runs_dir.glob("*/*/*") if record.is_file())


def push_runs(repo_dir: str | Path = ".", remote: str | None = None, jobs: int | None = None) -> tuple[PushReport, str]:
    """`dvc push --run-cache`, then every object the run records name; (report, remote name)."""
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(repo_dir))
    except DvcException as exc:
        raise UserError(f"{repo_dir}: not a DVC repository ({exc})") from exc
    # DVC resolves a run record's paths against the working directory, as its command line does from the repo root
    with repo, contextlib.chdir(repo.root_dir):
        name = remote or repo.config["core"].get("remote")
        if not name:
            raise UserError("no DVC remote to push to: add one with `dvc remote add -d NAME URL` or pass --remote NAME")
        try:
            pushed = repo.push(remote=remote, run_cache=True, jobs=jobs)
        except NoRemoteError as exc:
            raise UserError(str(exc).splitlines()[0]) from exc
        with repo.lock:
            records = run_records(Path(repo.stage_cache.cache_dir))
            used = repo.stage_cache.get_used_objs(records, remote=remote, jobs=jobs)
            objects = set().union(*used.values()) if used else set()
            result = repo.cloud.push(objects, jobs=jobs, remote=remote)
    return PushReport(pushed_by_dvc=pushed, records=len(records), objects=len(objects),
                      transferred=len(result.transferred), missing=len(result.failed)), name
