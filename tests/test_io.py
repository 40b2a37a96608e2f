"""Tolerant JSONL reading with a quarantine, and atomic writes that leave nothing half-written."""

import json
import os

import pytest

from slmforge.errors import UserError
from slmforge.io import atomic_dir, atomic_write_jsonl, atomic_write_text, json_safe, read_jsonl


def test_bad_lines_go_to_quarantine_with_line_and_reason(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text('{"id": 1}\nnot json\n\n[1, 2]\n{"id": 2}\n{"id": 3')
    quarantine = []
    rows = read_jsonl(path, quarantine)
    assert [r["id"] for r in rows] == [1, 2]
    assert [(q["line"], q["raw"]) for q in quarantine] == [(2, "not json"), (4, "[1, 2]"), (6, '{"id": 3')]
    assert all(q["reason"].startswith("invalid JSON") for q in quarantine)
    assert len(rows) + len(quarantine) == 5  # nothing lost: every non-blank line is somewhere


def test_bad_line_without_quarantine_is_a_one_line_error(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text('{"id": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"raw.jsonl:2: invalid JSON"):
        read_jsonl(path)
    with pytest.raises(UserError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.jsonl"
    atomic_write_text(target, "old\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(target, rows())
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_json_safe_writes_nan_as_null_at_any_depth_and_leaves_the_rest():
    safe = json_safe({"a": float("nan"), "b": [1.0, float("nan")], "c": {"d": "x", "e": [{"f": float("nan")}]}})
    assert json.dumps(safe, allow_nan=False) == '{"a": null, "b": [1.0, null], "c": {"d": "x", "e": [{"f": null}]}}'
    assert json_safe(float("inf")) == float("inf") and json_safe("nan") == "nan"
