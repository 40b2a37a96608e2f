"""Lineage: each stage's dvc.yaml deps cover the code it runs (its import closure), and a local source collects the
same bytes on every run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmforge.lineage import import_closure, missing_code_deps, resolved_stages
from slmforge.params import compose

ROOT = Path(__file__).resolve().parents[1]
# The one deliberate exemption: a live API's pull cannot be repeated, so its collect stage depends on no code (a
# code change must not re-pull); its output is a snapshot. Every other stage, local sources included, is checked.
LIVE_SOURCES = {"stackexchange", "arxiv", "apify"}
ALL_SOURCES = sorted(p.stem for p in (ROOT / "conf/sources").glob("*.yaml"))


def project(tmp_path: Path, dvc_yaml: str, sources: list[str]) -> Path:
    """dvc.yaml and params.yaml (conf/ composed with `sources`) in a DVC project of their own."""
    from dvc.repo import Repo

    top = tmp_path / "project"
    top.mkdir()
    (top / "dvc.yaml").write_text(dvc_yaml)
    params = compose(ROOT / "conf", [f"sources=[{','.join(sources)}]"])
    (top / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    Repo.init(str(top), no_scm=True).close()
    return top


@pytest.fixture(scope="module")
def every_source(tmp_path_factory) -> dict[str, tuple[str, list[str]]]:
    """Every stage of dvc.yaml resolved as DVC does, with every source in conf/sources/ configured at once."""
    return resolved_stages(project(tmp_path_factory.mktemp("lineage"), (ROOT / "dvc.yaml").read_text(), ALL_SOURCES))


def test_every_stage_depends_on_the_code_it_imports(every_source):
    live = {f"collect@{name}" for name in LIVE_SOURCES}
    assert live <= set(every_source) and f"collect@sample" in every_source
    missing = missing_code_deps(ROOT, every_source, exempt=live)
    assert not missing, "dvc.yaml deps miss code the stage imports:\n" + "\n".join(
        f"  {stage}: {path}" for stage, paths in missing.items() for path in paths)


def test_a_live_source_depends_on_no_code(every_source):
    # the exemption above is what dvc.yaml says, not a blind spot: a live pull re-runs on its params alone
    for name in LIVE_SOURCES:
        deps = every_source[f"collect@{name}"][1]
        assert not [d for d in deps if d.startswith(("stages", "src"))], (name, deps)


def test_a_removed_dependency_is_named(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    line = "      - src/slmforge/calibration.py  # effective_gate, check_gate: calibration, validation and gold verdicts\n"
    assert text.count(line) == 1
    stages = resolved_stages(project(tmp_path, text.replace(line, ""), ["sample"]))
    assert missing_code_deps(ROOT, stages) == {"label": ["src/slmforge/calibration.py"]}


def test_closure_follows_lazy_imports_and_packages_that_run_code(tmp_path):
    (tmp_path / "stages").mkdir()
    pkg = tmp_path / "src/slmforge"
    (pkg / "quiet").mkdir(parents=True)
    (pkg / "loud").mkdir()
    (pkg / "__init__.py").write_text('"""docs"""\n__version__ = "1"\n')
    (pkg / "quiet/__init__.py").write_text('"""only a docstring: runs nothing"""\n')
    (pkg / "quiet/a.py").write_text("def f():\n    from slmforge.loud import b  # imported when called\n")
    (pkg / "loud/__init__.py").write_text("from slmforge.loud import c\n")
    (pkg / "loud/b.py").write_text("from . import c\n")
    (pkg / "loud/c.py").write_text("import json\n")
    (pkg / "unused.py").write_text("")
    (tmp_path / "stages/x.py").write_text("from slmforge.quiet.a import f\n")
    assert import_closure(tmp_path, tmp_path / "stages/x.py") == {
        "stages/x.py", "src/slmforge/quiet/a.py", "src/slmforge/loud/__init__.py", "src/slmforge/loud/b.py",
        "src/slmforge/loud/c.py"}


def collect(top: Path, source: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "stages.collect", "--source", source, "--out", f"raw/{source}.jsonl",
                           "--quarantine", f"raw/{source}.q.jsonl", "--metrics", f"metrics/{source}.json",
                           "--run-facts", f"runs/{source}.json"], cwd=top, env=env, capture_output=True, text=True,
                          timeout=300)


def test_local_sources_collect_the_same_bytes_on_every_run(tmp_path):
    top = tmp_path / "p"
    for rel in ("conf", "data/sample", "data/files"):
        shutil.copytree(ROOT / rel, top / rel)
    local = ["sample", "files"]  # hf (a local folder): tests/sources/test_hf.py collects it twice
    config = top / "conf/config.yaml"
    config.write_text(config.read_text().replace("sources: [sample]", f"sources: [{', '.join(local)}]"))
    (top / "params.yaml").write_text(yaml.safe_dump(compose(top / "conf"), sort_keys=False))
    first = {}
    for source in local:
        proc = collect(top, source)
        assert proc.returncode == 0, proc.stderr[-2000:]
        first[source] = [(top / f"{d}/{source}.{ext}").read_bytes() for d, ext in
                         (("raw", "jsonl"), ("raw", "q.jsonl"), ("metrics", "json"))]
        facts = (top / f"runs/{source}.json").read_text()
        assert '"finished_at"' in facts and '"run_id"' in facts  # the run's own facts: beside, not inside
    for source in local:
        assert collect(top, source).returncode == 0
        again = [(top / f"{d}/{source}.{ext}").read_bytes() for d, ext in
                 (("raw", "jsonl"), ("raw", "q.jsonl"), ("metrics", "json"))]
        assert again == first[source], source
        assert first[source][0].count(b"\n") > 10, source
