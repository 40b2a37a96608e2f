"""The `files` collector: every supported format read through the column mapping, stable namespaced ids, and bad
input quarantined with its file, line and reason while the collect and clean stages finish and account for it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from slmforge.errors import UserError
from slmforge.io import atomic_write_jsonl, read_jsonl
from slmforge.params import FilesSourceParams, build, compose
from slmforge.sources import COLLECTORS

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((ROOT / "conf" / "sources" / "files.yaml").read_text())  # what a user starts from

Q1, A1 = "What is statistical power?", "The probability that a test detects an effect of a given size when it exists."
Q2, A2 = "What is an MDE?", "The smallest true effect the test has the chosen power to detect at the chosen alpha."


def params(*paths, **overrides) -> FilesSourceParams:
    return dataclasses.replace(build(FilesSourceParams, DEFAULTS, "sources.files"),
                               paths=[str(p) for p in paths], **overrides)


def run(p: FilesSourceParams, run_id: str = "test-run") -> tuple[list[dict], list[dict], dict]:
    quarantine: list[dict] = []
    stats: dict = {}
    records = COLLECTORS["files"](p, run_id=run_id, quarantine=quarantine, stats=stats)
    return records, quarantine, stats


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --- formats ---------------------------------------------------------------------------------------------


def test_csv_with_bom_crlf_multiline_field_and_meta_column(tmp_path):
    # Excel on Windows: a BOM, CRLF line ends, a quoted answer over two lines, an extra column kept as meta.
    text = ("id,topic,question,answer\r\n"
            f"q1,power,{Q1},\"{A1}\r\nSee also: MDE.\"\r\n"
            f"q2,design,\"{Q2}\",\"{A2}\"\r\n")
    path = tmp_path / "faq.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    records, quarantine, _ = run(params(path))
    assert quarantine == []
    assert [r["id"] for r in records] == ["files:faq:q1", "files:faq:q2"]  # the BOM did not eat the `id` header
    assert records[0]["prompt"] == Q1
    assert records[0]["response"] == f"{A1}\nSee also: MDE."  # one field, two lines, no \r
    assert records[1]["response"] == A2
    assert [r["meta"]["topic"] for r in records] == ["power", "design"]
    assert [r["meta"]["line"] for r in records] == [2, 4]  # where each row starts
    assert all(r["kind"] == "pair" and r["meta"]["origin"] == "files" for r in records)


def test_tsv_is_tab_separated(tmp_path):
    path = tmp_path / "faq.tsv"
    path.write_text(f"id\ttopic\tquestion\tanswer\nq1\tpower\t{Q1}\t{A1}, with a comma\n")
    records, quarantine, _ = run(params(path))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"]) for r in records] == [("files:faq:q1", Q1, f"{A1}, with a comma")]


@pytest.mark.parametrize("wrap", [lambda rows: rows, lambda rows: {"data": rows, "version": 2}],
                         ids=["list", "data-wrapper"])
def test_json_list_or_wrapped_list(tmp_path, wrap):
    rows = [{"id": "q1", "question": Q1, "answer": A1, "topic": "power"},
            {"id": "q2", "question": Q2, "answer": A2, "topic": "design"}]
    path = tmp_path / "faq.json"
    path.write_text(json.dumps(wrap(rows)))
    records, quarantine, _ = run(params(path))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"], r["meta"]["topic"]) for r in records] == [
        ("files:faq:q1", Q1, A1, "power"), ("files:faq:q2", Q2, A2, "design")]


def test_json_file_that_is_not_a_list_is_quarantined(tmp_path):
    path = tmp_path / "faq.json"
    path.write_text('"just a string"')
    records, quarantine, _ = run(params(path))
    assert records == []
    assert [(q["file"], q["line"]) for q in quarantine] == [(str(path), 0)]
    assert "not a list" in quarantine[0]["reason"]


def test_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"id": "q1", "question": Q1, "answer": A1, "topic": "power"},
                                                 {"id": "q2", "question": Q2, "answer": A2, "topic": "design"}])
    records, quarantine, _ = run(params(path))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"], r["meta"]["line"]) for r in records] == [
        ("files:faq:q1", Q1, A1, 1), ("files:faq:q2", Q2, A2, 2)]


def test_parquet_with_typed_meta_columns(tmp_path):
    path = tmp_path / "faq.parquet"
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    pq.write_table(pa.table({"id": [1, 2], "question": [Q1, Q2], "answer": [A1, A2], "topic": ["power", None],
                             "asked": [when, when]}), path)
    records, quarantine, _ = run(params(path, meta_columns=["topic", "asked"]))
    assert quarantine == []
    assert [(r["id"], r["prompt"], r["response"]) for r in records] == [
        ("files:faq:1", Q1, A1), ("files:faq:2", Q2, A2)]
    assert records[0]["meta"]["topic"] == "power" and records[1]["meta"]["topic"] is None
    assert records[0]["meta"]["asked"].startswith("2024-05-01")
    json.dumps(records)  # a timestamp column does not stop the stage from writing its output


def test_corrupt_parquet_is_quarantined(tmp_path):
    path = tmp_path / "faq.parquet"
    path.write_bytes(b"this is not parquet")
    records, quarantine, _ = run(params(path))
    assert records == [] and len(quarantine) == 1
    assert quarantine[0]["file"] == str(path) and "Parquet" in quarantine[0]["reason"]


TXT = "First paragraph,\nover two lines.\n\n\n\nSecond paragraph.\r\n\r\nThird.\n"


@pytest.mark.parametrize("unit, expected", [
    ("file", [(1, TXT.replace("\r\n", "\n"))]),
    ("paragraph", [(1, "First paragraph,\nover two lines."), (6, "Second paragraph."), (8, "Third.")]),
    ("line", [(1, "First paragraph,"), (2, "over two lines."), (6, "Second paragraph."), (8, "Third.")]),
])
def test_txt_units_with_their_line_numbers(tmp_path, unit, expected):
    path = tmp_path / "notes.txt"
    path.write_bytes(TXT.encode())
    records, quarantine, _ = run(params(path, record_kind="document", txt_unit=unit))
    assert quarantine == []
    assert [(r["meta"]["line"], r["text"]) for r in records] == [(line, text.strip()) for line, text in expected]
    assert all(r["kind"] == "document" and not r["prompt"] and r["id"] == f"files:notes:{r['meta']['line']}"
               for r in records)


def test_txt_with_pair_kind_is_a_user_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Some text.\n")
    with pytest.raises(UserError) as exc:
        run(params(path, record_kind="pair"))
    assert "record_kind: document" in one_line_error(exc)


# --- mapping, ids, provenance ----------------------------------------------------------------------------


def test_column_mapping_and_meta_columns(tmp_path):
    path = write_jsonl(tmp_path / "export.jsonl", [
        {"qid": "A-7", "q": Q1, "a": A1, "lang": "en", "score": 4, "secret": "not copied"}])
    records, quarantine, _ = run(params(path, columns={"id": "qid", "prompt": "q", "response": "a"},
                                        meta_columns=["lang", "score", "absent"], origin="support"))
    assert quarantine == []
    [rec] = records
    assert (rec["id"], rec["prompt"], rec["response"]) == ("support:export:A-7", Q1, A1)
    assert rec["meta"]["origin"] == "support"
    assert rec["meta"]["lang"] == "en" and rec["meta"]["score"] == 4
    assert "secret" not in rec["meta"] and "absent" not in rec["meta"]


def test_document_kind_maps_text_column(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "d1", "body": "A long document about variance."}])
    records, quarantine, _ = run(params(path, record_kind="document", columns={"id": "id", "text": "body"}))
    assert quarantine == []
    assert [(r["id"], r["kind"], r["text"]) for r in records] == [
        ("files:docs:d1", "document", "A long document about variance.")]


def test_ids_are_namespaced_and_stable_across_runs(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"id": "q1", "question": Q1, "answer": A1},
                                                 {"question": Q2, "answer": A2}])  # no id: its line number
    first, _, _ = run(params(path), run_id="run-1")
    second, _, _ = run(params(path), run_id="run-2")
    assert [r["id"] for r in first] == [r["id"] for r in second] == ["files:faq:q1", "files:faq:2"]
    assert first == second  # local files are no snapshot: the same records, byte for byte, whatever the run


def test_fallback_id_is_the_line_number(tmp_path):
    jsonl = tmp_path / "noid.jsonl"
    jsonl.write_text(f'{json.dumps({"question": Q1, "answer": A1})}\n\n{json.dumps({"question": Q2, "answer": A2})}\n')
    csv_path = tmp_path / "noid.csv"
    csv_path.write_text(f"question,answer\n{Q1},\"{A1}\nsecond line\"\n{Q2},{A2}\n")
    records, quarantine, _ = run(params(jsonl))
    assert quarantine == [] and [r["id"] for r in records] == ["files:noid:1", "files:noid:3"]
    records, quarantine, _ = run(params(csv_path))
    assert quarantine == [] and [r["id"] for r in records] == ["files:noid:2", "files:noid:4"]


def test_provenance_and_record_contract(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"id": "q1", "question": Q1, "answer": A1}])
    [rec], _, _ = run(params(path), run_id="run-42")
    assert set(rec) == {"id", "source", "kind", "prompt", "response", "text", "meta", "provenance"}
    assert rec["source"] == "files"
    prov = rec["provenance"]
    assert set(prov) == {"query", "url", "fetched_at", "run_id"}
    assert prov["run_id"] is None and prov["fetched_at"] is None  # no pull time: the same files, the same records
    assert prov["url"] is None and str(path) in prov["query"]
    assert (rec["meta"]["file"], rec["meta"]["line"]) == (path.as_posix(), 1)


# --- which files -----------------------------------------------------------------------------------------


def test_globs_over_several_files_are_read_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.jsonl", "a.jsonl", "sub/c.jsonl"]:
        write_jsonl(tmp_path / name, [{"id": "1", "question": f"{Q1} ({name})", "answer": A1}])
    (tmp_path / "ignored.csv").write_text("not matched by the glob")
    p = params(tmp_path / "*.jsonl", tmp_path / "**" / "c.jsonl", tmp_path / "a.jsonl")  # a.jsonl matched twice
    records, quarantine, stats = run(p)
    assert quarantine == []
    assert [r["id"] for r in records] == ["files:a:1", "files:b:1", "files:c:1"]
    assert stats["files"] == 3


def test_max_records_caps_the_pull(tmp_path):
    rows = [{"id": str(i), "question": f"{Q1} {i}", "answer": A1} for i in range(10)]
    path = write_jsonl(tmp_path / "faq.jsonl", rows)
    records, _, stats = run(params(path, max_records=3))
    assert [r["id"] for r in records] == ["files:faq:0", "files:faq:1", "files:faq:2"]
    assert stats["capped_at"] == 3
    records, _, stats = run(params(path, max_records=0))  # 0: no cap
    assert len(records) == 10 and "capped_at" not in stats


def test_unknown_suffix_is_a_one_line_user_error(tmp_path):
    path = tmp_path / "faq.xml"
    path.write_text("<faq/>")
    with pytest.raises(UserError) as exc:
        run(params(path))
    msg = one_line_error(exc)
    assert "faq.xml" in msg and ".xml" in msg and "sources.files.format" in msg


def test_bad_format_or_txt_unit_setting_is_a_user_error(tmp_path):
    path = write_jsonl(tmp_path / "faq.jsonl", [{"id": "q1", "question": Q1, "answer": A1}])
    with pytest.raises(UserError) as exc:
        run(params(path, format="xlsx"))
    assert "sources.files.format" in one_line_error(exc)
    with pytest.raises(UserError) as exc:
        run(params(path, txt_unit="sentence"))
    assert "sources.files.txt_unit" in one_line_error(exc)


def test_no_file_matching_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as exc:
        run(params(tmp_path / "nothing" / "*.csv"))
    assert "sources.files.paths" in one_line_error(exc)


# --- bad input -------------------------------------------------------------------------------------------


def test_csv_bad_rows_are_quarantined_and_a_long_field_is_read_whole(tmp_path):
    long_answer = "A very long answer. " * 10_000  # 200 KB: over the csv module's default 128 KiB field limit
    path = tmp_path / "faq.csv"
    path.write_bytes(
        b"id,question,answer\n"
        + f"q1,{Q1},{A1}\n".encode()
        + f"q2,{Q2},{A2}, but with an unquoted comma\n".encode()
        + b"q3,caf\xe9?,Latin-1 bytes\n"
        + f"q4,{Q1} (long),{long_answer}\n".encode()
        + f"q5,{Q2},\n".encode())
    records, quarantine, _ = run(params(path))
    assert [r["id"] for r in records] == ["files:faq:q1", "files:faq:q4"]
    assert records[1]["response"] == long_answer.strip()
    assert [(q["line"], q["reason"].split(" ")[0]) for q in quarantine] == [(3, "row"), (4, "invalid"), (6, "missing")]
    assert "UTF-8" in quarantine[1]["reason"] and "`answer`" in quarantine[2]["reason"]


def test_lone_surrogate_escape_is_quarantined_not_a_crash_at_write(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": Q1, "answer": A1}) + "\n"
                    + '{"id": "q2", "question": "broken \\ud800 escape", "answer": "x"}\n'
                    + json.dumps({"id": "q3", "question": "emoji \U0001f600 as a pair", "answer": A2}) + "\n")
    records, quarantine, _ = run(params(path))
    assert [r["id"] for r in records] == ["files:faq:q1", "files:faq:q3"]
    assert [q["line"] for q in quarantine] == [2] and "surrogate" in quarantine[0]["reason"]
    json.dumps(records, ensure_ascii=False).encode("utf-8")
    # read_jsonl (every stage's reader) holds the same line back, so what it returns can always be written again
    bad: list[dict] = []
    rows = read_jsonl(path, bad)
    atomic_write_jsonl(tmp_path / "copy.jsonl", rows)
    assert [r["id"] for r in rows] == ["q1", "q3"] and [q["line"] for q in bad] == [2]


def test_read_jsonl_size_limit_counts_the_record_not_its_line_end(tmp_path):
    record = json.dumps({"id": "q1", "text": "x" * 100})
    path = tmp_path / "raw.jsonl"
    path.write_bytes(record.encode() + b"\r\n" + record.replace("q1", "q2").encode() + b"x\n")
    bad: list[dict] = []
    assert [r["id"] for r in read_jsonl(path, bad, max_line_bytes=len(record))] == ["q1"]
    assert [q["line"] for q in bad] == [2] and "exceeds" in bad[0]["reason"]


BIG = 10 * 1024 * 1024


def bad_input_lines() -> list[tuple[bytes, str | None]]:
    """(line bytes, the reason it is quarantined, or None for a good record), in file order."""
    def line(obj: dict, end: bytes = b"\n") -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode() + end
    repeated = {"id": "bom", "question": "Why does a test need a sample size?", "answer": "A repeated id."}
    return [
        (b"\xef\xbb\xbf" + line({"id": "bom", "question": "Why does a test need a sample size?",
                                  "answer": "Without enough users a test cannot tell a real effect from noise."}),
         None),
        (line({"id": "crlf", "question": "What does statistical power mean in an experiment?",
               "answer": "Power is the chance the experiment detects an effect that is really there."}, b"\r\n"), None),
        (b'{"id": "broken", "question": "What is alpha?", "answer": \n', "invalid JSON"),
        (b'{"id": "latin1", "question": "Caf\xe9 experiments?", "answer": "Encoded in Latin-1."}\n', "UTF-8"),
        (line({"id": "noanswer", "question": "What is a holdout group in an experiment?"}), "`answer`"),
        (line({"id": "huge", "question": "What is a scraped page?", "answer": "x" * BIG}), "exceeds"),
        (line({"id": "good", "question": "Why should an experiment run for full weeks?",
               "answer": "Behaviour differs by weekday, so partial weeks bias the estimated effect."}), None),
        (line(repeated), "duplicate"),
    ]


def make_project(tmp_path: Path) -> Path:
    """A project folder as a user has it: params.yaml composed from conf/ with the files source pointed at an inbox."""
    project = tmp_path / "project"
    inbox = project / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "batch1.jsonl").write_bytes(b"".join(data for data, _ in bad_input_lines()))
    (inbox / "batch2.jsonl").write_bytes(b"")
    composed = compose(ROOT / "conf", ["sources=[files]"])
    composed["sources"]["files"].update(paths=["inbox/*.jsonl"], watch="inbox")
    composed["clean"]["dedup"]["semantic"] = False  # no encoder to load: this test is about accounting
    composed["clean"]["language"]["workers"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(composed, sort_keys=False))
    return project


def stage(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_EXP_NAME": "test"}  # inside `dvc exp run`: params are fresh
    return subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)


def test_bad_input_is_quarantined_and_the_stages_finish_and_account_for_it(tmp_path):
    project = make_project(tmp_path)
    proc = stage(project, "stages.collect", "--source", "files", "--out", "data/raw/files.jsonl",
                 "--quarantine", "data/raw/files.quarantine.jsonl", "--metrics", "metrics/collect/files.json",
                 "--run-facts", "metrics/runs/collect/files.json")
    assert proc.returncode == 0, proc.stderr[-2000:]

    lines = bad_input_lines()
    bad = {n: reason for n, (_, reason) in enumerate(lines, start=1) if reason}
    raw = (project / "data/raw/files.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in raw.splitlines()]
    quarantine = [json.loads(line) for line in (project / "data/raw/files.quarantine.jsonl").read_text().splitlines()]
    metrics = json.loads((project / "metrics/collect/files.json").read_text())

    # Every bad line is in the quarantine with its file, line number and a reason naming the problem.
    by_line = {q["line"]: q for q in quarantine if q["file"].endswith("batch1.jsonl")}
    assert sorted(by_line) == sorted(bad)
    for n, problem in bad.items():
        assert problem in by_line[n]["reason"], (n, by_line[n]["reason"])
        assert by_line[n]["file"] == "inbox/batch1.jsonl"
    assert "duplicate id files:batch1:bom" in by_line[8]["reason"]
    [empty] = [q for q in quarantine if q["file"].endswith("batch2.jsonl")]
    assert "empty" in empty["reason"]

    # The good records, the BOM and CRLF ones included, come through with their text intact.
    assert [r["id"] for r in records] == ["files:batch1:bom", "files:batch1:crlf", "files:batch1:good"]
    assert records[0]["prompt"] == "Why does a test need a sample size?"
    assert records[1]["response"] == "Power is the chance the experiment detects an effect that is really there."
    assert "\r" not in raw and "\ufeff" not in raw and "\\r" not in raw and "\\ufeff" not in raw
    assert all(r["source"] == "files" and r["provenance"]["run_id"] is None for r in records)

    # The counts say so: nothing lost.
    assert metrics["records"] == 3
    assert metrics["quarantined"] == len(bad) + 1  # the bad lines and the empty file
    assert metrics["records"] + metrics["quarantined"] == len(lines) + 1
    assert metrics["source"]["empty_files"] == 1 and metrics["source"]["files"] == 2
    assert f"{3} records, {len(bad) + 1} quarantined" in proc.stdout

    proc = stage(project, "stages.clean", "--raw", "data/raw/{source}.jsonl", "--quarantine",
                 "data/raw/{source}.quarantine.jsonl", "--kept", "data/clean/kept.jsonl",
                 "--rejected", "data/clean/rejected.jsonl", "--metrics", "metrics/clean.json", "--run-facts", "metrics/runs/clean.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    clean = json.loads((project / "metrics/clean.json").read_text())
    kept = (project / "data/clean/kept.jsonl").read_text().splitlines()
    rejected = (project / "data/clean/rejected.jsonl").read_text().splitlines()
    assert clean["records_in"] == 3 == clean["kept"] + clean["rejected"]
    assert (len(kept), len(rejected)) == (clean["kept"], clean["rejected"])
    assert clean["quarantined_at_collect"] == {"files": len(bad) + 1}


# --- ids, patterns and text encodings --------------------------------------------------------------------


def test_files_with_the_same_name_in_two_folders_get_distinct_ids(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_jsonl(tmp_path / sub / "train.jsonl", [{"id": "1", "question": Q1, "answer": A1}])
    records, quarantine, _ = run(params(tmp_path / "*" / "train.jsonl", watch=str(tmp_path)))
    assert quarantine == []
    assert [r["id"] for r in records] == ["files:a/train:1", "files:b/train:1"]


def test_a_pattern_that_matches_nothing_is_an_error_even_when_others_match(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "1", "question": Q1, "answer": A1}])
    with pytest.raises(UserError) as exc:
        run(params(good, tmp_path / "typo*.jsonl"))
    assert "typo*.jsonl" in one_line_error(exc)


def test_txt_paragraph_with_invalid_utf8_is_quarantined_and_the_rest_read(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"First paragraph about power.\n\nBroken \xff\xfe bytes here.\n\nThird paragraph on MDE.\n")
    records, quarantine, _ = run(params(path, record_kind="document", txt_unit="paragraph"))
    assert [r["text"] for r in records] == ["First paragraph about power.", "Third paragraph on MDE."]
    assert [(q["line"], q["reason"]) for q in quarantine] == [(3, "invalid UTF-8")]


def test_a_stray_file_under_a_glob_is_quarantined_with_its_reason_and_the_rest_read(tmp_path):
    (tmp_path / "faq.csv").write_text(f"id,question,answer\nq1,{Q1},{A1}\n")
    (tmp_path / "README.md").write_text("# My data\n\nThe FAQ export.\n")  # .md reads as text: documents
    (tmp_path / "notes.xml").write_text("<notes/>")
    records, quarantine, stats = run(params(tmp_path / "*"))
    assert [r["prompt"] for r in records] == [Q1]
    why = {Path(q["file"]).name: q["reason"] for q in quarantine}
    assert set(why) == {"README.md", "notes.xml"} and all(q["line"] == 0 for q in quarantine)
    assert "leave it out of sources.files.paths" in why["README.md"] and "record_kind: pair" in why["README.md"]
    assert "unknown file type '.xml'" in why["notes.xml"]
    assert stats["unreadable_files"] == 2 and stats["files"] == 3


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a file without permission")
def test_a_file_without_read_permission_is_quarantined(tmp_path):
    (tmp_path / "a.csv").write_text(f"id,question,answer\nq1,{Q1},{A1}\n")
    locked = tmp_path / "b.csv"
    locked.write_text(f"id,question,answer\nq2,{Q2},{A2}\n")
    locked.chmod(0)
    records, quarantine, _ = run(params(tmp_path / "*.csv"))
    assert [r["prompt"] for r in records] == [Q1]
    assert quarantine[0]["file"] == str(locked) and "cannot read the file" in quarantine[0]["reason"]


def test_nothing_readable_left_is_one_line_naming_a_file_and_why(tmp_path):
    (tmp_path / "README.md").write_text("# My data\n")
    (tmp_path / "notes.xml").write_text("<notes/>")
    with pytest.raises(UserError) as exc:
        run(params(tmp_path / "*"))
    msg = one_line_error(exc)
    assert msg.startswith("sources.files.paths: no file this source can read (2 matched; ") and "README.md" in msg
