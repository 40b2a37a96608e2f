"""`slmforge annotate` driven through a pseudo-terminal as a person drives it: one keystroke per score (no Enter),
each finished row saved at once, back and invalid keys, quitting mid-row, and a second session that resumes at the
first row without a gold score; the file it writes is a gold file calibration reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from slmforge.annotate import score_keys, to_annotate
from slmforge.gold import load_gold
from slmforge.errors import UserError
from slmforge.params import RubricParams, build
from tests.conftest import ROOT, chat_row
from tests.test_cli import ANSI, Terminal, cli_env

RUBRIC = build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")


def sample_files(tmp_path):
    chats = [chat_row("se:1", "How many users per arm for a 2% lift?", "About 20k per arm at 80% power."),
             chat_row("se:2", "Is peeking at p-values a problem?", "Yes: it inflates false positives."),
             chat_row("tw:3", "Ramen tonight?", "Tonkotsu, always.", origin="tweets")]
    label = lambda r, o: {"id": r, "scores": {"relevance": o, "correctness": 2.0, "helpfulness": 1.5},  # noqa: E731
                          "overall": o, "tier": "reject"}
    sample = [{"id": "se:1", "sample": "main", "stratum": "on_topic", "label": label("se:1", 1.6)},
              {"id": "tw:3", "sample": "main", "stratum": "off_topic", "label": label("tw:3", 2.4)},
              {"id": "se:2", "sample": "validation", "stratum": "on_topic", "label": label("se:2", 1.2)},
              {"id": "se:1", "sample": "validation", "stratum": "on_topic", "label": label("se:1", 1.6)}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
    (tmp_path / "sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample))
    return tmp_path / "gold.jsonl"


def start(tmp_path):
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "slmforge.cli", "annotate", "--sample", "sample.jsonl", "--chatml",
                             "chat.jsonl", "--gold", "gold.jsonl", "--params", str(ROOT / "params.yaml")],
                            stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=cli_env(),
                            start_new_session=True)
    os.close(slave)
    return proc, master, Terminal(master)


def text(chunks) -> str:
    return ANSI.sub(b"", b"".join(d for _, d in chunks)).decode(errors="replace")


def key(master: int, k: str) -> None:
    os.write(master, k.encode())  # one keystroke, no Enter


def gold(tmp_path) -> dict:
    return {r["id"]: r["scores"] for r in map(json.loads, (tmp_path / "gold.jsonl").read_text().splitlines())}


@pytest.mark.timeout(300)
def test_annotate_in_a_terminal_saves_each_row_and_resumes(tmp_path):
    sample_files(tmp_path)
    proc, master, term = start(tmp_path)
    try:
        shown = text(term.expect(b"relevance (", 60))
        assert "3 row(s) to score, 0 already in gold.jsonl" in shown
        assert "[1/3] se:1 (main sample, stratum on_topic)" in shown and "USER: How many users per arm" in shown
        assert "oracle: relevance 1.6, correctness 2.0, helpfulness 1.5 (overall 1.60, tier reject)" in shown
        for k, next_prompt in (("9", b"correctness ("), ("8", b"helpfulness ("), ("7", b"saved (1 in gold.jsonl)")):
            key(master, k)
            term.expect(next_prompt, 10)
        assert gold(tmp_path) == {"se:1": {"relevance": 9, "correctness": 8, "helpfulness": 7}}

        assert "[2/3] tw:3 (main sample, stratum off_topic)" in text(term.expect(b"relevance (", 10))
        key(master, "a")  # 10 ...
        term.expect(b"correctness (", 10)
        key(master, "-")  # ... taken back
        assert "back" in text(term.expect(b"relevance (", 10))
        key(master, "0")
        term.expect(b"correctness (", 10)
        key(master, "x")  # not a score: asked again
        assert "'x' is not a score" in text(term.expect(b"correctness (", 10))
        key(master, "5")
        term.expect(b"helpfulness (", 10)
        key(master, "a")
        term.expect(b"saved (2 in gold.jsonl)", 10)
        assert gold(tmp_path)["tw:3"] == {"relevance": 0, "correctness": 5, "helpfulness": 10}

        term.expect(b"relevance (", 10)  # [3/3] se:2, from the validation sample
        key(master, "4")
        term.expect(b"correctness (", 10)
        key(master, "q")  # quit mid-row: the finished rows stay, this one is not saved
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert set(gold(tmp_path)) == {"se:1", "tw:3"}

    proc, master, term = start(tmp_path)  # a second session starts where the first stopped
    try:
        shown = text(term.expect(b"relevance (", 60))
        assert "1 row(s) to score, 2 already in gold.jsonl" in shown and "[1/1] se:2 (validation sample" in shown
        for k in "632":
            key(master, k)
        assert "done: 1 saved, 0 skipped; 3 rows in gold.jsonl" in text(term.expect(b"rows in gold.jsonl", 10))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    # what it wrote is a gold file calibration accepts, every row once
    loaded = load_gold(tmp_path / "gold.jsonl", RUBRIC)
    assert list(loaded) == ["se:1", "tw:3", "se:2"] and loaded["se:2"]["scores"]["correctness"] == 3.0
    assert loaded["se:2"]["by"] == "annotate" and loaded["se:2"]["sample"] == "validation"


def test_keys_cover_the_scale_as_one_base36_digit_and_rows_come_once():
    assert score_keys(RUBRIC) == {**{str(v): v for v in range(10)}, "a": 10}
    rows = [{"id": "a", "sample": "main"}, {"id": "b", "sample": "validation"}, {"id": "a", "sample": "validation"}]
    assert [r["id"] for r in to_annotate(rows, "all", set())] == ["a", "b"]
    assert [r["id"] for r in to_annotate(rows, "validation", {"b"})] == ["a"]
    with pytest.raises(UserError, match="scale must lie within 0..35"):
        score_keys(build(RubricParams, {**yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()),
                                        "max_score": 100}, "rubric"))


def test_annotate_without_a_calibration_sample_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slmforge.cli", "annotate", "--params", str(ROOT / "params.yaml")],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: data/calibration/sample.jsonl: no calibration sample: run `dvc repro calibrate` first"]
