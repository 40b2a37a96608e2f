"""The content-addressed answer cache: one JSON file per answer, keyed by everything that shapes the answer.

Two places hold answers:
- the stage's output folder (`data/oracle_cache/<stage>/`), a DVC output, so `dvc push`/`dvc pull` and DVC's
  run-cache share paid-for answers with a team;
- a store outside the repository (`$SLMFORGE_CACHE/oracle`, default `~/.cache/slmforge/oracle`), because DVC
  deletes a stage's outputs before it runs it: the store is what makes `dvc repro -f label` free and lets a
  killed run resume, redoing only the calls that were in flight.
When the stage output was pulled from a remote but the store is empty (a teammate's machine), the answers
of the last locked run are copied into the store from DVC's own cache first (`seed_from_dvc`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import yaml

from slmforge.io import atomic_write_text
from slmforge.oracle.prompts import SCHEMA_VERSION
from slmforge.oracle.types import Request


def store_dir() -> Path:
    root = os.environ.get("SLMFORGE_CACHE") or Path.home() / ".cache" / "slmforge"
    return Path(root) / "oracle"


def request_key(backend: str, model: str, decoding: dict, req: Request) -> str:
    """sha256(backend, model, prompt template, rendered input, decoding params, schema version); the record id
    is not part of it, so two records with the same text share one answer."""
    material = {"v": SCHEMA_VERSION, "backend": backend, "model": model, "decoding": decoding,
                "system": req.system, "prompt": req.prompt, "schema": req.schema, "max_tokens": req.max_tokens,
                "repeat": req.repeat}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    def __init__(self, out_dir: str | Path, store: str | Path | None = None):
        self.out = Path(out_dir)
        self.store = Path(store) if store else store_dir()
        self.out.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _rel(key: str) -> Path:
        return Path(key[:2]) / f"{key}.json"  # sharded: no folder with tens of thousands of entries

    def get(self, key: str) -> dict | None:
        out, kept = self.out / self._rel(key), self.store / self._rel(key)
        for path in (out, kept):
            if path.exists():
                try:
                    entry = json.loads(path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # a torn file from a killed writer cannot happen (atomic), but never trust it
                if not isinstance(entry, dict):
                    continue
                if path is kept:  # out was missing or unreadable: the stage output lists every answer it used
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(kept, out)
                return entry
        return None

    def has(self, key: str) -> bool:
        """Whether an answer is held, without copying it into this output (a forecast looks up other stages'
        requests, and this stage's output must list only the answers it used)."""
        return (self.out / self._rel(key)).exists() or (self.store / self._rel(key)).exists()

    def put(self, key: str, entry: dict) -> None:
        text = json.dumps(entry, ensure_ascii=False, sort_keys=True, indent=1)
        for root in (self.store, self.out):
            atomic_write_text(root / self._rel(key), text)

    def __len__(self) -> int:
        return sum(1 for _ in self.out.glob("*/*.json"))


def seed_from_dvc(out_dir: str | Path, store: str | Path | None = None, lock: str | Path = "dvc.lock") -> int:
    """Copy the answers of the last locked version of `out_dir` from DVC's cache into the store; returns how
    many were new. Nothing to do (0) outside a DVC repository, before the first run, or with
    SLMFORGE_SEED_ANSWERS=0."""
    lock, out_rel = Path(lock), Path(out_dir).as_posix().rstrip("/")
    # SLMFORGE_SEED_ANSWERS=0: ask again what was locked (`slmforge verify` checks that the answers reproduce)
    if not lock.exists() or os.environ.get("SLMFORGE_SEED_ANSWERS") == "0":
        return 0
    digest = next((o.get("md5") for st in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values()
                   for o in st.get("outs", []) if o.get("path", "").rstrip("/") == out_rel), None)
    if not digest or not digest.endswith(".dir"):
        return 0
    try:
        from dvc.repo import Repo

        with Repo(str(lock.parent)) as repo:
            cache_root = Path(repo.cache.local.path)
    except Exception:  # not a DVC repository, or one DVC cannot open: there is nothing to seed from
        return 0
    manifest = cache_root / digest[:2] / digest[2:]
    if not manifest.exists():
        return 0
    store, new = Path(store) if store else store_dir(), 0
    for item in json.loads(manifest.read_text()):
        src, dst = cache_root / item["md5"][:2] / item["md5"][2:], store / item["relpath"]
        if src.exists() and not dst.exists() and item["relpath"].endswith(".json"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            new += 1
    return new
