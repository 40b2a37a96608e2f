"""Local files (CSV, JSON, JSONL, Parquet, TXT) to raw records through a column mapping."""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from slmforge.io import UserError, iter_jsonl
from slmforge.params import FilesSourceParams
from slmforge.sources.records import now_iso, record

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".txt": "txt", ".md": "txt"}
REQUIRED = {"pair": ("prompt", "response"), "document": ("text",)}


def map_row(row: dict, *, columns: dict[str, str], meta_columns: list[str], record_kind: str,
            origin: str, namespace: str, fallback_id: str, where: dict, prov: dict) -> tuple[dict | None, str | None]:
    """(record, None) for a row, or (None, reason) when a required field is missing or empty."""
    def value(field: str):
        col = columns.get(field, field)
        v = row.get(col)
        return None if v is None else str(v).strip()

    for field in REQUIRED[record_kind]:
        if not value(field):
            return None, f"missing required field `{field}` (column `{columns.get(field, field)}`)"
    rid = value("id") or fallback_id
    meta = {"origin": origin, **where, **{c: row.get(c) for c in meta_columns if c in row}}
    return record(id=f"{namespace}:{rid}", kind=record_kind, prompt=value("prompt") or "",
                  response=value("response") or "", text=value("text") or "", meta=meta, **prov), None


def _csv_rows(path: Path, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    raw = path.read_bytes()
    # surrogateescape keeps going past an undecodable byte; the row that holds it is quarantined below.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect="excel-tab" if path.suffix == ".tsv" else "excel")
    for row in reader:
        line = reader.line_num
        if any("\udc80" <= ch <= "\udcff" for v in row.values() if isinstance(v, str) for ch in v):
            quarantine.append({"file": str(path), "line": line, "reason": "invalid UTF-8",
                               "raw": json.dumps(row, ensure_ascii=True)[:2000]})
            continue
        yield line, row


def _json_rows(path: Path, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        quarantine.append({"file": str(path), "line": 0, "reason": f"invalid JSON file: {exc}", "raw": ""})
        return
    if isinstance(data, dict):  # {"data": [...]} and similar wrappers: the one list inside
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    for i, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield i, row
        else:
            quarantine.append({"file": str(path), "line": i, "reason": f"item is a {type(row).__name__}, not an object",
                               "raw": json.dumps(row)[:2000]})


def _parquet_rows(path: Path, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):  # streamed: a large file fits memory
        for row in batch.to_pylist():
            i += 1
            yield i, row


def _txt_rows(path: Path, unit: str) -> Iterator[tuple[int, dict]]:
    text = path.read_bytes().decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
    if unit == "file":
        yield 1, {"text": text}
    elif unit == "line":
        for i, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield i, {"text": line}
    else:
        line = 1
        for para in text.split("\n\n"):
            if para.strip():
                yield line, {"text": para}
            line += para.count("\n") + 2


def rows_of(path: Path, fmt: str, params: FilesSourceParams, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    if fmt == "csv":
        return _csv_rows(path, quarantine)
    if fmt == "json":
        return _json_rows(path, quarantine)
    if fmt == "jsonl":
        return iter_jsonl(path, quarantine, max_line_bytes=params.max_record_bytes)
    if fmt == "parquet":
        return _parquet_rows(path, quarantine)
    return _txt_rows(path, params.txt_unit)


def collect(params: FilesSourceParams, *, run_id: str, quarantine: list[dict], stats: dict) -> list[dict]:
    if params.record_kind not in REQUIRED:
        raise UserError(f"sources.*.record_kind: {params.record_kind!r} is not one of {sorted(REQUIRED)}")
    paths = sorted({p for pattern in params.paths for p in glob.glob(pattern, recursive=True) if Path(p).is_file()})
    if not paths:
        raise UserError(f"sources.files.paths: no file matches {params.paths} (relative to {Path.cwd()})")
    fetched_at = now_iso()
    records: list[dict] = []
    seen: dict[str, str] = {}
    stats.update(files=len(paths), empty_files=0, rows=0)
    bar = tqdm(desc="files", unit="rec", disable=None)
    for name in paths:
        path = Path(name)
        fmt = params.format if params.format != "auto" else FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{path}: unknown file type {path.suffix!r}; set sources.files.format to one of "
                            f"{sorted(set(FORMATS.values()))}")
        if fmt == "txt" and params.record_kind != "document":
            raise UserError(f"{path}: a text file gives documents; set record_kind: document for it")
        if path.stat().st_size == 0:
            stats["empty_files"] += 1
            quarantine.append({"file": str(path), "line": 0, "reason": "empty file", "raw": ""})
            continue
        prov = {"source": "files", "query": f"files:{path.as_posix()}", "url": None,
                "fetched_at": fetched_at, "run_id": run_id}
        for line, row in rows_of(path, fmt, params, quarantine):
            stats["rows"] += 1
            where = {"file": path.as_posix(), "line": line}
            size = len(json.dumps(row, ensure_ascii=False, default=str).encode())
            if size > params.max_record_bytes:
                quarantine.append({**where, "reason": f"record of {size:,} bytes exceeds {params.max_record_bytes:,}",
                                   "raw": ""})
                continue
            rec, reason = map_row(row, columns=params.columns, meta_columns=params.meta_columns,
                                  record_kind=params.record_kind, origin=params.origin,
                                  namespace=f"{params.origin}:{path.stem}", fallback_id=str(line),
                                  where=where, prov=prov)
            if rec is not None and rec["id"] in seen:
                reason, rec = f"duplicate id {rec['id']} (first at {seen[rec['id']]})", None
            if rec is None:
                quarantine.append({**where, "reason": reason, "raw": json.dumps(row, ensure_ascii=False, default=str)[:2000]})
                continue
            seen[rec["id"]] = f"{path.as_posix()}:{line}"
            records.append(rec)
            bar.update()
            if params.max_records and len(records) >= params.max_records:
                stats["capped_at"] = params.max_records
                bar.close()
                return records
    bar.close()
    return records
