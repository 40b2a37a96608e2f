"""Reading and writing pipeline artifacts: tolerant JSONL reads with a quarantine, atomic writes, NaN as null."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slmforge.errors import UserError


LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a cheap pre-check; pairs are fine and pass _encodable


def _encodable(obj) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_jsonl(path: str | Path, quarantine: list[dict] | None = None, max_line_bytes: int | None = None) -> list[dict]:
    """The objects of a JSONL file; see iter_jsonl for what happens to bad lines."""
    return [obj for _, obj in iter_jsonl(path, quarantine, max_line_bytes)]


def iter_jsonl(path: str | Path, quarantine: list[dict] | None = None,
               max_line_bytes: int | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each record of a JSONL file. A line that is not a JSON object, is not UTF-8 (a lone
    surrogate escape included), or is longer than `max_line_bytes` goes to `quarantine` with its file, line number
    and reason instead of stopping the run; with no quarantine list given, a bad line is a UserError. A byte-order mark and CRLF line ends are read as
    plain UTF-8 (editors on Windows write them; the records are fine)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found (did the stage that writes it run? try `dvc repro`)")
    with path.open("rb") as fh:  # bytes, so one undecodable line cannot stop the whole file
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            reason = None
            size = len(raw.rstrip(b"\r\n"))  # the record, not its line end: a record of exactly the limit fits
            if max_line_bytes is not None and size > max_line_bytes:
                reason, text = f"record of {size:,} bytes exceeds the limit of {max_line_bytes:,}", ""
            else:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    reason, text = f"invalid UTF-8 at byte {exc.start}", raw.decode("utf-8", "replace")
            if reason is None:
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                    if not isinstance(obj, dict):
                        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                    if LONE_SURROGATE.search(text) and not _encodable(obj):
                        # valid JSON, but a lone \udXXX escape is no character: writing it out would fail later
                        raise ValueError("a \\u escape is a lone surrogate, not a character")
                    yield lineno, obj
                    continue
                except ValueError as exc:
                    reason = f"invalid JSON: {exc}"
            if quarantine is None:
                raise UserError(f"{path}:{lineno}: {reason}")
            quarantine.append({"file": str(path), "line": lineno, "reason": reason, "raw": text.rstrip("\r\n")[:2000]})


@contextlib.contextmanager
def _atomic_path(path: str | Path) -> Iterator[Path]:
    # Write next to the target and rename: a killed stage never leaves a half-written file that DVC
    # could mistake for a result (rename is atomic within one filesystem).
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_safe(obj):
    """NaN (a statistic undefined on this data) as null: JSON has no NaN, and DVC's metrics readers choke on it."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_text(path: str | Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    n = 0
    with _atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run_facts(path: str | Path | None, facts: dict) -> None:
    """What this run of a stage did, as opposed to what it made: wall-clock times, calls made against answers
    found in a cache, host and thread count. They differ from run to run, so they stay out of every output DVC
    tracks (an output of a deterministic stage is a function of its deps and params: docs/lineage.md); the file
    is git-ignored, declared nowhere in a stage and read by no stage (`dvc metrics show` lists it). No path (a
    stage run by hand without --run-facts): nothing is written."""
    if path is None:
        return
    import platform
    import sys
    from datetime import datetime, timezone

    torch = sys.modules.get("torch")  # the threads a stage computed with, if it used torch at all
    atomic_write_json(path, {**facts, "finished_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                             "host": platform.node(), "torch_threads": torch.get_num_threads() if torch else None})
