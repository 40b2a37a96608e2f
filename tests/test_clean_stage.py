"""clean reads exactly the raw files of the configured sources: a dropped source's old file, still on disk,
contributes nothing (stage level, and through DVC in a temporary repository: dropping a source re-runs clean);
a clean that leaves nothing stops in one line naming the filter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.errors import UserError
from tests.stage_project import error_lines, make_project, run_stage

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARGS = ["--raw", "data/raw/{source}.jsonl", "--quarantine", "data/raw/{source}.quarantine.jsonl", "--kept", "kept.jsonl",
        "--rejected", "rejected.jsonl", "--metrics", "clean.json"]
SMALL = ["clean.dedup.semantic=false"]  # no encoder to load: what is read is the point here


def pair(id_: str, origin: str, prompt: str, response: str) -> dict:
    return {"id": id_, "source": id_.split(":")[0], "kind": "pair", "prompt": prompt, "response": response, "text": "",
            "meta": {"origin": origin}, "provenance": {}}


FILES = [pair(f"files:faq:{k}", "files", f"How do I size an A/B test number {k}?",
              f"Fix alpha, the power and the minimum detectable effect, then compute the sample size for case {k}.")
         for k in range(4)]
STALE = [pair(f"sample:se:{k}", "stackexchange", f"What is a p-value, question {k}?",
              f"The probability of data at least as extreme under the null hypothesis, answer {k}.") for k in range(5)]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def clean_main(monkeypatch):
    """stages.clean's main in this process (the toxicity model's import is shared with the curation tests)."""
    from stages.clean import main

    def run_in(project: Path):
        monkeypatch.chdir(project)
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        main(ARGS)
    return run_in


def test_a_dropped_sources_file_on_disk_contributes_nothing(tmp_path, clean_main, capsys):
    project = make_project(tmp_path, "sources=[files]", *SMALL)
    write(project / "data/raw/files.jsonl", FILES)
    write(project / "data/raw/files.quarantine.jsonl", [{"file": "x.csv", "line": 3, "reason": "bad", "raw": ""}])
    write(project / "data/raw/sample.jsonl", STALE)  # collect@sample's output from when sample was configured
    write(project / "data/raw/sample.quarantine.jsonl", [{"file": "y", "line": 1, "reason": "bad", "raw": ""}])
    clean_main(project)
    out = read(project / "kept.jsonl") + read(project / "rejected.jsonl")
    assert {r["id"] for r in out} == {r["id"] for r in FILES}  # no record of the dropped source, kept or rejected
    metrics = json.loads((project / "clean.json").read_text())
    assert metrics["records_in"] == 4 and metrics["sources"] == ["files"]
    assert metrics["quarantined_at_collect"] == {"files": 1}
    assert metrics["ignored_files"] == ["data/raw/sample.jsonl", "data/raw/sample.quarantine.jsonl"]
    assert ("clean: ignored data/raw/sample.jsonl, data/raw/sample.quarantine.jsonl: not from a configured source "
            "(files)") in capsys.readouterr().err


def test_a_configured_source_that_was_not_collected_is_one_line(tmp_path):
    project = make_project(tmp_path, "sources=[sample,files]", *SMALL)
    write(project / "data/raw/files.jsonl", FILES)
    proc = run_stage(project, "clean", *ARGS)  # a real process: what the user reads, and nothing else
    assert proc.returncode == 1 and error_lines(proc) == [
        "error: data/raw/sample.jsonl not found: source `sample` is configured but not collected; run "
        "`dvc repro collect@sample`"]


def test_a_clean_that_removes_every_record_stops_naming_the_filter(tmp_path, clean_main):
    project = make_project(tmp_path, "sources=[files]", *SMALL)
    write(project / "data/raw/files.jsonl", [pair(f"files:faq:{k}", "files", "What is power, exactly?", "Short.")
                                             for k in range(3)])
    with pytest.raises(UserError) as info:
        clean_main(project)
    assert str(info.value) == ("clean: all 3 records were removed (too_short 3); loosen clean.rules.min_chars in "
                               "conf/clean/default.yaml")
    assert not (project / "kept.jsonl").exists()


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", SLMFORGE_CACHE=str(repo.parent / "store"))
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_dropping_a_source_reruns_clean_through_dvc_and_no_record_of_it_survives(tmp_path):
    """The everyday case: a run on [sample, files], then sources=[files] to train on one's own data only."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ["dvc.yaml", "conf", "stages", "src/slmforge", "data/sample", "data/files"]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / rel).is_dir() else shutil.copy)(ROOT / rel, repo / rel)
    dvc(repo, "init", "--no-scm", "-q")
    compose = [sys.executable, "-m", "slmforge.cli", "compose", *SMALL]
    subprocess.run([*compose, "sources=[sample,files]", "sources.sample.max_records=30"], cwd=repo, check=True,
                   capture_output=True)
    dvc(repo, "repro", "clean")
    kept = read(repo / "data/clean/kept.jsonl")
    assert {r["meta"]["origin"] for r in kept} >= {"files", "stackexchange"}

    subprocess.run([*compose, "sources=[files]"], cwd=repo, check=True, capture_output=True)
    status = dvc(repo, "status", "clean").stdout
    assert "params.yaml" in status and "modified:" in status and "clean" in status, status  # clean.sources changed
    dry = dvc(repo, "repro", "--dry", "clean").stdout
    assert "Running stage 'clean'" in dry and "collect@sample" not in dry, dry
    dvc(repo, "repro", "clean")
    assert (repo / "data/raw/sample.jsonl").exists()  # still on disk, as DVC leaves it ...
    out = read(repo / "data/clean/kept.jsonl") + read(repo / "data/clean/rejected.jsonl")
    assert out and {r["source"] for r in out} == {"files"}  # ... and nothing of it reached clean's outputs
    assert "Running stage" not in dvc(repo, "repro", "clean").stdout  # and the run is recorded: up to date
