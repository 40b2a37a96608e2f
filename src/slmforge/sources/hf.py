"""Hugging Face datasets through `datasets.load_dataset(name, config, split)` with a column mapping.

`name` is a hub id (read from the cache when HF_HUB_OFFLINE=1, as on a machine with no network), a local
folder of data files, a folder written by `Dataset.save_to_disk`, or a single data file.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.params import HfSourceParams
from slmforge.sources.files import FORMATS, map_row
from slmforge.sources.records import now_iso


def load(params: HfSourceParams):
    import datasets

    local = Path(params.name)
    try:
        # a folder written by save_to_disk: state.json for a Dataset, dataset_dict.json for a DatasetDict
        # (its split is picked in collect)
        if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
            return datasets.load_from_disk(str(local))
        if local.is_file():
            fmt = FORMATS.get(local.suffix.lower())
            if fmt is None:
                raise UserError(f"sources.hf.name: {params.name}: unknown file type {local.suffix!r}; use one of "
                                f"{sorted(FORMATS)} or a folder")
            builder = {"jsonl": "json", "txt": "text"}.get(fmt, fmt)
            extra = {"delimiter": "\t"} if local.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files={params.split: str(local)}, split=params.split, **extra)
        return datasets.load_dataset(params.name, params.config, split=params.split, revision=params.revision)
    # Offline, an uncached hub id is a ConnectionError ("Couldn't reach ... (OfflineModeIsEnabled)"); a folder with
    # no data files a FileNotFoundError; an unknown split or config a ValueError; a data file that does not parse a
    # DatasetGenerationError (a DatasetsError, not an OSError), whose cause says what is wrong.
    except (FileNotFoundError, ConnectionError, ValueError, datasets.exceptions.DatasetsError) as exc:
        cause = exc.__cause__ if isinstance(exc, datasets.exceptions.DatasetGenerationError) and exc.__cause__ else exc
        first = str(cause).strip().splitlines()[0].rstrip(".") if str(cause).strip() else type(cause).__name__
        hint = ("fix the file or point sources.hf.name at another" if local.exists() else
                "offline, it must be a local path or in the HF cache (`hf download --repo-type dataset NAME` "
                "where there is network)")
        raise UserError(f"sources.hf: cannot load dataset {params.name!r} (config {params.config!r}, split "
                        f"{params.split!r}): {first}; {hint}") from None


def collect(params: HfSourceParams, *, run_id: str, quarantine: list[dict], stats: dict) -> list[dict]:
    import datasets

    ds = load(params)
    if isinstance(ds, datasets.DatasetDict):
        if params.split not in ds:
            raise UserError(f"sources.hf.split: {params.split!r} not in {params.name!r} (splits: {sorted(ds)})")
        ds = ds[params.split]
    needed = {params.columns.get(f, f) for f in (("prompt", "response") if params.record_kind == "pair" else ("text",))}
    if "id" in params.columns:  # a mapped id column that is absent would silently fall back to row numbers
        needed.add(params.columns["id"])
    missing = sorted(needed - set(ds.column_names))
    if missing:
        raise UserError(f"sources.hf.columns: {params.name!r} has no column {missing[0]!r} (columns: {ds.column_names})")
    local = Path(params.name).exists()
    namespace = f"hf:{Path(params.name).name if local else params.name}"
    # A local folder or file is not a snapshot: no pull time or run id (null), so the same files give the same
    # records. A hub dataset is fetched: it keeps when, and the dataset's fingerprint (for a local one that
    # hashes file times, not content: DVC's hash of `watch` is the content's).
    prov = {"source": "hf", "query": f"hf:{params.name}:{params.config}:{params.split}",
            "url": None if local else f"https://huggingface.co/datasets/{params.name}",
            "fetched_at": None if local else now_iso(), "run_id": None if local else run_id}
    stats.update(rows=len(ds), **({} if local else {"fingerprint": getattr(ds, "_fingerprint", None)}))
    records, seen = [], set()
    for i, row in enumerate(tqdm(ds, desc="hf", unit="rec", disable=None)):
        rec, reason = map_row(row, columns=params.columns, meta_columns=params.meta_columns,
                              record_kind=params.record_kind, origin=params.origin, namespace=namespace,
                              fallback_id=str(i), where={"row": i}, prov=prov)
        if rec is not None and rec["id"] in seen:
            rec, reason = None, f"duplicate id {rec['id']}"
        if rec is None:
            quarantine.append({"source": "hf", "row": i, "reason": reason,
                               "raw": json.dumps(row, ensure_ascii=False, default=str)[:2000]})
            continue
        seen.add(rec["id"])
        records.append(rec)
        if params.max_records and len(records) >= params.max_records:
            stats["capped_at"] = params.max_records
            break
    return records
