"""Message Batches a run submitted and has not yet settled, kept in the answer store the moment each is created.

A batch is answered within 24 hours and paid once; a run killed while it polls (Ctrl-C, a closed laptop, a CI
timeout) must find it again instead of paying for the same requests twice. One small JSON file per batch under
`<store>/batches/` names its id and the request keys it carries; the next run resumes polling every batch that
carries a request it still needs, submits only the rest, and forgets a batch once its results are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.io import atomic_write_text


class BatchJournal:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.fetched: set[str] = set()  # batches whose results this run has read (the backend adds them)

    def _path(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.json"

    def add(self, batch_id: str, keys: list[str], backend: str, model: str) -> None:
        atomic_write_text(self._path(batch_id), json.dumps({"batch_id": batch_id, "backend": backend, "model": model,
                                                            "keys": keys}, indent=1))

    def pending(self, keys) -> dict[str, list[str]]:
        """batch id -> the keys among `keys` that it carries, for every kept batch carrying any of them."""
        wanted, out = set(keys), {}
        for path in sorted(self.root.glob("*.json")):
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            mine = [k for k in entry.get("keys", []) if k in wanted]
            if mine:
                out[entry["batch_id"]] = mine
        return out

    def forget(self, batch_id: str) -> None:
        self._path(batch_id).unlink(missing_ok=True)

    def settle(self, handled) -> list[str]:
        """Forget every batch whose results this run read and recorded, when it carried only requests this run
        handled (answered, or failed and recorded); returns their ids. A batch still running, or one that also
        carries requests this run did not ask about, stays for a later run."""
        handled, done = set(handled), []
        for path in sorted(self.root.glob("*.json")):
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if entry.get("batch_id") in self.fetched and set(entry.get("keys", [])) <= handled:
                path.unlink(missing_ok=True)
                done.append(entry["batch_id"])
        return done
