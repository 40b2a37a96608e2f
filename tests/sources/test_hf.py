"""The `hf` collector: local data folders, single files and save_to_disk folders through `datasets`, the column
mapping, and one-line errors for what a user gets wrong (a missing column or split, a hub id not cached offline)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from slmforge.errors import UserError
from slmforge.params import HfSourceParams, build, compose
from slmforge.sources import COLLECTORS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "data" / "files" / "hf_example"
DEFAULTS = yaml.safe_load((ROOT / "conf" / "sources" / "hf.yaml").read_text())
ROWS = [{"id": "q1", "question": "What is a p-value?", "answer": "A tail probability under the null hypothesis.",
         "topic": "inference"},
        {"id": "q2", "question": "What is power?", "answer": "The chance to detect a real effect.", "topic": "power"},
        {"id": "q3", "question": "What is an MDE?", "answer": "The smallest effect the test can detect.",
         "topic": "power"}]


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """No network and an empty HF cache in tmp, so nothing is read from or written to the user's cache.
    `datasets` reads these variables at import, so its module-level copies are patched too."""
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    for var, value in {"HF_HOME": home, "HF_DATASETS_CACHE": home / "datasets", "HF_HUB_CACHE": home / "hub",
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(var, str(value))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def params(name, **overrides) -> HfSourceParams:
    return dataclasses.replace(build(HfSourceParams, DEFAULTS, "sources.hf"), name=str(name), **overrides)


def run(p: HfSourceParams, run_id: str = "test-run") -> tuple[list[dict], list[dict], dict]:
    quarantine: list[dict] = []
    stats: dict = {}
    records = COLLECTORS["hf"](p, run_id=run_id, quarantine=quarantine, stats=stats)
    return records, quarantine, stats


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_local_folder_of_jsonl(offline_cache):
    expected = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines() if line.strip()]
    records, quarantine, stats = run(params(EXAMPLE), run_id="run-7")
    assert quarantine == [] and len(records) == len(expected) == 12 and stats["rows"] == 12
    assert [r["id"] for r in records] == [f"hf:hf_example:{row['id']}" for row in expected]
    assert [(r["prompt"], r["response"]) for r in records] == [(row["question"], row["answer"]) for row in expected]
    for r in records:
        assert set(r) == {"id", "source", "kind", "prompt", "response", "text", "meta", "provenance"}
        assert (r["source"], r["kind"], r["meta"]["origin"]) == ("hf", "pair", "hf")
        # a local folder is no snapshot: no pull time or run id, so the same files give the same records
        assert r["provenance"]["run_id"] is None and r["provenance"]["fetched_at"] is None
        assert r["provenance"]["url"] is None
        assert str(EXAMPLE) in r["provenance"]["query"]
    again, _, again_stats = run(params(EXAMPLE))
    assert again == records and again_stats == stats  # the same records (and metrics) on every run


def write_rows(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        lines = [sep.join(rows[0])] + [sep.join(f'"{v}"' if sep in v else v for v in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".tsv", ".jsonl"])
def test_single_local_data_file(tmp_path, suffix):
    rows = [{**r, "answer": r["answer"].replace(".", ", indeed.")} for r in ROWS]  # a comma inside a field
    path = write_rows(tmp_path / f"faq{suffix}", rows)
    records, quarantine, _ = run(params(path, meta_columns=["topic"]))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"], r["meta"]["topic"]) for r in records] == [
        (f"hf:faq{suffix}:{r['id']}", r["question"], r["answer"], r["topic"]) for r in rows]


def test_saved_dataset_folder(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    records, quarantine, _ = run(params(tmp_path / "saved"))
    assert quarantine == []
    assert [r["id"] for r in records] == ["hf:saved:q1", "hf:saved:q2", "hf:saved:q3"]


def test_saved_dataset_dict_picks_the_split_and_a_missing_split_is_a_user_error(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                               "test": datasets.Dataset.from_list(ROWS[2:])})
    dd.save_to_disk(str(tmp_path / "saved"))
    records, _, _ = run(params(tmp_path / "saved", split="test"))
    assert [r["id"] for r in records] == ["hf:saved:q3"]
    records, _, _ = run(params(tmp_path / "saved", split="train"))
    assert [r["id"] for r in records] == ["hf:saved:q1", "hf:saved:q2"]
    with pytest.raises(UserError) as exc:
        run(params(tmp_path / "saved", split="validation"))
    msg = one_line_error(exc)
    assert "sources.hf.split" in msg and "'validation'" in msg and "test" in msg and "train" in msg


def test_missing_split_in_a_data_folder_is_a_user_error():
    with pytest.raises(UserError) as exc:
        run(params(EXAMPLE, split="validation"))
    assert "validation" in one_line_error(exc)


def test_column_mapping_and_meta_columns(tmp_path):
    rows = [{"qid": f"k{i}", "q": r["question"], "a": r["answer"], "lang": "en", "votes": i, "private": "x"}
            for i, r in enumerate(ROWS)]
    path = write_rows(tmp_path / "export.jsonl", rows)
    records, quarantine, _ = run(params(path, columns={"id": "qid", "prompt": "q", "response": "a"},
                                        meta_columns=["lang", "votes"], origin="support"))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"]) for r in records] == [
        (f"hf:export.jsonl:k{i}", r["question"], r["answer"]) for i, r in enumerate(ROWS)]
    assert [(r["meta"]["origin"], r["meta"]["lang"], r["meta"]["votes"]) for r in records] == [
        ("support", "en", 0), ("support", "en", 1), ("support", "en", 2)]
    assert all("private" not in r["meta"] for r in records)


def test_document_kind_and_fallback_row_ids(tmp_path):
    path = write_rows(tmp_path / "docs.jsonl", [{"body": "First document."}, {"body": "Second document."}])
    records, _, _ = run(params(path, record_kind="document", columns={"text": "body"}))
    assert [(r["id"], r["kind"], r["text"]) for r in records] == [
        ("hf:docs.jsonl:0", "document", "First document."), ("hf:docs.jsonl:1", "document", "Second document.")]


def test_missing_mapped_column_is_a_one_line_user_error():
    with pytest.raises(UserError) as exc:
        run(params(EXAMPLE, columns={"id": "id", "prompt": "question", "response": "reply"}))
    msg = one_line_error(exc)
    assert "sources.hf.columns" in msg and "'reply'" in msg


def test_hub_id_not_cached_offline_is_a_one_line_user_error(offline_cache):
    with pytest.raises(UserError) as exc:
        run(params("someorg/not-a-cached-dataset"))
    msg = one_line_error(exc)
    assert "someorg/not-a-cached-dataset" in msg and "HF cache" in msg
    assert not any(offline_cache.rglob("*.arrow"))


def test_hub_id_not_cached_offline_ends_the_stage_in_one_line(tmp_path, offline_cache):
    project = tmp_path / "project"
    project.mkdir()
    composed = compose(ROOT / "conf", ["sources=[hf]"])
    composed["sources"]["hf"]["name"] = "someorg/not-a-cached-dataset"
    (project / "params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_EXP_NAME": "test"}  # offline variables from the fixture
    proc = subprocess.run([sys.executable, "-m", "stages.collect", "--source", "hf", "--out", "raw/hf.jsonl",
                           "--quarantine", "raw/hf.quarantine.jsonl", "--metrics", "hf.json",
                           "--run-facts", "runs/hf.json"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "someorg/not-a-cached-dataset" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (project / "raw").exists()  # nothing written that DVC could mistake for a result


def test_data_file_that_does_not_parse_is_a_one_line_user_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\nnot json at all\n")
    with pytest.raises(UserError) as exc:
        run(params(path))
    msg = one_line_error(exc)
    assert "broken.jsonl" in msg and "JSON" in msg


def test_max_records(tmp_path):
    records, _, stats = run(params(EXAMPLE, max_records=5))
    assert [r["id"] for r in records] == [f"hf:hf_example:g0{i}" for i in range(1, 6)]
    assert stats["capped_at"] == 5


def test_duplicate_ids_are_quarantined_and_the_first_kept(tmp_path):
    rows = [ROWS[0], ROWS[1], {**ROWS[0], "answer": "A second row with the first row's id."}, ROWS[2]]
    path = write_rows(tmp_path / "dups.jsonl", rows)
    records, quarantine, _ = run(params(path))
    assert [r["id"] for r in records] == ["hf:dups.jsonl:q1", "hf:dups.jsonl:q2", "hf:dups.jsonl:q3"]
    assert records[0]["response"] == ROWS[0]["answer"]
    assert [(q["source"], q["row"]) for q in quarantine] == [("hf", 2)]
    assert "duplicate id hf:dups.jsonl:q1" in quarantine[0]["reason"]
    assert json.loads(quarantine[0]["raw"])["answer"] == "A second row with the first row's id."
    assert len(records) + len(quarantine) == len(rows)


def test_a_mapped_id_column_that_is_absent_is_an_error_not_row_numbers():
    with pytest.raises(UserError) as exc:
        run(params(str(EXAMPLE), columns={"id": "uid", "prompt": "question", "response": "answer"}))
    assert "'uid'" in one_line_error(exc)
