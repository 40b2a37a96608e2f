"""Local files (CSV, JSON, JSONL, Parquet, TXT) to raw records through a column mapping."""

from __future__ import annotations

import csv
import glob
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.io import iter_jsonl
from slmforge.params import FilesSourceParams
from slmforge.sources.records import record

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".parquet": "parquet", ".txt": "txt", ".md": "txt"}
REQUIRED = {"pair": ("prompt", "response"), "document": ("text",)}
TXT_UNITS = ("file", "paragraph", "line")


def json_safe(value):
    """A meta value as plain JSON: Parquet and datasets give datetimes, decimals, bytes, which the writer rejects."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


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
    meta = {"origin": origin, **where, **{c: json_safe(row[c]) for c in meta_columns if c in row}}
    return record(id=f"{namespace}:{rid}", kind=record_kind, prompt=value("prompt") or "",
                  response=value("response") or "", text=value("text") or "", meta=meta, **prov), None


def _undecodable(text: str) -> bool:
    """Whether text read with errors="surrogateescape" holds a byte that was not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _csv_rows(path: Path, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    raw = path.read_bytes()
    # surrogateescape keeps going past an undecodable byte; the row that holds it is quarantined below.
    # CRLF to LF first, so a quoted multi-line field of a Windows file reads as the same text as on Linux.
    text = raw.decode("utf-8-sig", errors="surrogateescape").replace("\r\n", "\n")
    # The csv module's default 128 KiB field limit would raise mid-file and resynchronise inside the field;
    # an oversized row is instead read whole and quarantined by size in collect().
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.reader(io.StringIO(text, newline=""), dialect=dialect)
    header = next(reader, None)
    if header is None:
        return
    start = reader.line_num + 1
    for fields in reader:
        line, start = start, reader.line_num + 1  # the row's first line (a quoted field may span several)
        if not fields:  # a blank line
            continue
        row = dict(zip(header, fields))
        if any(_undecodable(v) for v in fields):
            quarantine.append({"file": str(path), "line": line, "reason": "invalid UTF-8",
                               "raw": json.dumps(row, ensure_ascii=True)[:2000]})
        elif len(fields) > len(header):  # an unquoted delimiter in a field: its columns are shifted
            quarantine.append({"file": str(path), "line": line,
                               "reason": f"row has {len(fields)} fields, the header {len(header)} "
                                         "(an unquoted delimiter?)",
                               "raw": json.dumps(fields, ensure_ascii=False)[:2000]})
        else:
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
    if not isinstance(data, list):
        quarantine.append({"file": str(path), "line": 0, "reason": f"JSON file holds a {type(data).__name__}, "
                           "not a list of objects", "raw": json.dumps(data, ensure_ascii=False)[:2000]})
        return
    for i, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield i, row
        else:
            quarantine.append({"file": str(path), "line": i, "reason": f"item is a {type(row).__name__}, not an object",
                               "raw": json.dumps(row)[:2000]})


def _parquet_rows(path: Path, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as exc:
        quarantine.append({"file": str(path), "line": 0, "reason": f"not a readable Parquet file: {exc}", "raw": ""})
        return
    i = 0
    for batch in pfile.iter_batches(batch_size=4096):  # streamed: a large file fits memory
        for row in batch.to_pylist():
            i += 1
            yield i, row


def _txt_units(text: str, unit: str) -> Iterator[tuple[int, str]]:
    if unit == "file":
        yield 1, text
    elif unit == "line":
        for i, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                yield i, line
    else:  # paragraphs: blocks of non-blank lines, each numbered by its first line
        line, pos = 1, 0
        for m in re.finditer(r"(?:^[^\S\n]*\S.*(?:\n|$))+", text, flags=re.M):
            line, pos = line + text.count("\n", pos, m.start()), m.start()
            yield line, m.group().rstrip("\n")


def _txt_rows(path: Path, unit: str, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    # surrogateescape as for CSV: a unit holding an undecodable byte is quarantined, the rest read.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape").replace("\r\n", "\n")
    for line, chunk in _txt_units(text, unit):
        if _undecodable(chunk):
            quarantine.append({"file": str(path), "line": line, "reason": "invalid UTF-8",
                               "raw": chunk.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:2000]})
        else:
            yield line, {"text": chunk}


def rows_of(path: Path, fmt: str, params: FilesSourceParams, quarantine: list[dict]) -> Iterator[tuple[int, dict]]:
    if fmt == "csv":
        return _csv_rows(path, quarantine)
    if fmt == "json":
        return _json_rows(path, quarantine)
    if fmt == "jsonl":
        return iter_jsonl(path, quarantine, max_line_bytes=params.max_record_bytes)
    if fmt == "parquet":
        return _parquet_rows(path, quarantine)
    return _txt_rows(path, params.txt_unit, quarantine)


def id_namespace(path: Path, watch: str) -> str:
    """The file's part of a record id: its path under the watched folder without the suffix ("faq" for
    data/files/faq.csv, "a/train" and "b/train" for two train.jsonl), stable across machines."""
    try:
        rel = path.resolve().relative_to(Path(watch).resolve())
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def collect(params: FilesSourceParams, *, run_id: str, quarantine: list[dict], stats: dict) -> list[dict]:
    if params.record_kind not in REQUIRED:
        raise UserError(f"sources.*.record_kind: {params.record_kind!r} is not one of {sorted(REQUIRED)}")
    if params.format != "auto" and params.format not in FORMATS.values():
        raise UserError(f"sources.files.format: {params.format!r} is not auto or one of "
                        f"{sorted(set(FORMATS.values()))}")
    if params.txt_unit not in TXT_UNITS:
        raise UserError(f"sources.files.txt_unit: {params.txt_unit!r} is not one of {list(TXT_UNITS)}")
    paths: set[str] = set()
    for pattern in params.paths:
        found = [p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        if not found:  # a typo in one pattern would otherwise drop a whole file set without a word
            raise UserError(f"sources.files.paths: no file matches {pattern!r} (relative to {Path.cwd()})")
        paths.update(found)
    records: list[dict] = []
    seen: dict[str, str] = {}
    stats.update(files=len(paths), empty_files=0, unreadable_files=0, rows=0)
    bar = tqdm(desc="files", unit="rec", disable=None)
    for name in sorted(paths):
        path = Path(name)
        fmt = params.format if params.format != "auto" else FORMATS.get(path.suffix.lower())
        # A file this source cannot read as configured (a README.md under a glob, a file without read permission)
        # is quarantined with its reason, like a bad row: one stray file must not stop the whole collection.
        why = unreadable(path, fmt, params)
        if why:
            stats["unreadable_files"] += 1
            quarantine.append({"file": str(path), "line": 0, "reason": why, "raw": ""})
            continue
        # Local files, not a snapshot: no pull time or run id (null), so the same files give the same records.
        prov = {"source": "files", "query": f"files:{path.as_posix()}", "url": None,
                "fetched_at": None, "run_id": None}
        rows_before, quarantined_before = stats["rows"], len(quarantine)
        for line, row in rows_of(path, fmt, params, quarantine) if path.stat().st_size else ():
            stats["rows"] += 1
            where = {"file": path.as_posix(), "line": line}
            try:
                size = len(json.dumps(row, ensure_ascii=False, default=str).encode())
            except UnicodeEncodeError:  # a lone \udXXX escape in a JSON file: no character, and unwritable
                quarantine.append({**where, "reason": "invalid Unicode: a lone surrogate escape",
                                   "raw": json.dumps(row, default=str)[:2000]})
                continue
            if size > params.max_record_bytes:
                quarantine.append({**where, "reason": f"record of {size:,} bytes exceeds {params.max_record_bytes:,}",
                                   "raw": ""})
                continue
            rec, reason = map_row(row, columns=params.columns, meta_columns=params.meta_columns,
                                  record_kind=params.record_kind, origin=params.origin,
                                  namespace=f"{params.origin}:{id_namespace(path, params.watch)}", fallback_id=str(line),
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
        # An empty file (or one with only blank lines, a BOM or a header) is accounted for, not passed over.
        if stats["rows"] == rows_before and len(quarantine) == quarantined_before:
            stats["empty_files"] += 1
            quarantine.append({"file": str(path), "line": 0, "reason": "empty file (no records)", "raw": ""})
    bar.close()
    if paths and stats["unreadable_files"] == len(paths):
        first = next(q for q in quarantine if q["line"] == 0)
        raise UserError(f"sources.files.paths: no file this source can read ({len(paths)} matched; "
                        f"{first['file']}: {first['reason']})")
    return records


def unreadable(path: Path, fmt: str | None, params: FilesSourceParams) -> str | None:
    """Why this source cannot read `path` as configured, or None when it can."""
    if fmt is None:
        return (f"unknown file type {path.suffix!r}: leave it out of sources.files.paths, or set "
                f"sources.files.format to one of {sorted(set(FORMATS.values()))}")
    if fmt == "txt" and params.record_kind != "document":
        return ("a text file gives documents and this source makes pairs (record_kind: pair): leave it out of "
                "sources.files.paths, or read it with a second files source that has record_kind: document")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    return None
