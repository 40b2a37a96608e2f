"""`slmforge verify` on a small real DVC repository: a deterministic stage reproduces its lock entry, a stage that
writes the time is reported as differing (with what differs), a stage that depends on no code is not re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmforge.verify import first_difference, verify

BIN = Path(sys.executable).parent

DVC_YAML = """\
stages:
  pure:
    cmd: python -m stages.pure
    deps: [data/in.txt, stages/pure.py, src/tinylib]
    outs: [out/pure.txt]
  clock:
    cmd: python -m stages.clock
    deps: [out/pure.txt, stages/clock.py]
    outs: [out/folder]
    metrics:
      - out/clock.json:
          cache: false
  live:
    cmd: python -c "import time; open('out/live.txt', 'w').write(str(time.time_ns()))"
    deps: [constant.txt]
    outs: [out/live.txt]
"""

PURE = """\
from pathlib import Path
from tinylib import shout
Path("out").mkdir(exist_ok=True)
Path("out/pure.txt").write_text(shout(Path("data/in.txt").read_text()))
"""

CLOCK = """\
import json, time
from pathlib import Path
folder = Path("out/folder")
folder.mkdir(parents=True, exist_ok=True)
(folder / "copy.txt").write_text(Path("out/pure.txt").read_text())
(folder / "stamp.txt").write_text(str(time.time_ns()))
Path("out/clock.json").write_text(json.dumps({"lines": 2, "finished_ns": time.time_ns()}, indent=1))
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project run once and committed; the working tree then holds an uncommitted edit of the library."""
    top = tmp_path_factory.mktemp("verify") / "repo"
    for rel, text in {"dvc.yaml": DVC_YAML, "stages/__init__.py": "", "stages/pure.py": PURE, "stages/clock.py": CLOCK,
                      "src/tinylib/__init__.py": "def shout(s):\n    return s.upper()\n",
                      "data/in.txt": "a small input\n", "constant.txt": "1\n",
                      ".gitignore": "/out/*\n!/out/clock.json\n"}.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        mp.setenv("PYTHONPATH", str(top / "src"))
        for key in [k for k in os.environ if k.startswith("DVC_")]:
            mp.delenv(key)
        git(top, "init", "-q")
        git(top, "config", "user.email", "t@t")
        git(top, "config", "user.name", "t")
        subprocess.run(["dvc", "init", "-q"], cwd=top, check=True)
        subprocess.run(["dvc", "repro", "-q"], cwd=top, check=True, capture_output=True)
        git(top, "add", "-A")
        git(top, "commit", "-qm", "run")
        # verify checks the commit (its code and its lock), not the working tree: this edit must change nothing
        (top / "src/tinylib/__init__.py").write_text("def shout(s):\n    return s.lower()\n")
        yield top


def test_a_deterministic_stage_passes_and_a_clock_stage_is_named_with_what_differs(repo, capsys):
    from slmforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--repo", str(repo), "--json", str(repo.parent / "all.json")])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "pure: same as dvc.lock (1 outputs)" in out
    assert "clock: DIFFERS (its inputs are as locked: this stage is not reproducible)" in out
    assert "live: not re-run: depends on no code" in out and "not: clock" in out
    checks = {c["name"]: c for c in json.loads((repo.parent / "all.json").read_text())}
    clock = checks["clock"]
    assert clock["inputs_changed"] == [] and set(clock["differing"]) == {"out/folder", "out/clock.json"}
    assert any(d.startswith("out/folder: 1 file(s) differ: stamp.txt") for d in clock["details"]), clock["details"]
    assert any(d.startswith("out/clock.json: line 3:") and "finished_ns" in d for d in clock["details"])
    assert (checks["pure"]["result"], checks["live"]["result"]) == ("same", "snapshot")
    assert git(repo, "status", "--short") == " M src/tinylib/__init__.py\n"  # nothing of the user's touched


def test_until_stops_at_the_named_stage_and_the_command_exits_zero(repo, capsys):
    from slmforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--repo", str(repo), "--until", "pure"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "pure: same as dvc.lock" in out and "clock" not in out and "1 of 1 stages as locked" in out


def test_a_repository_without_a_committed_lock_is_a_one_line_error(tmp_path, monkeypatch):
    from slmforge.errors import UserError

    top = tmp_path / "bare"
    top.mkdir()
    git(top, "init", "-q")
    git(top, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x")
    with pytest.raises(UserError) as exc:
        verify(top, say=lambda line: None)
    assert "no dvc.lock" in str(exc.value) and "\n" not in str(exc.value)


def test_first_difference_names_the_line():
    assert first_difference(b"a\nb\nc\n", b"a\nB\nc\n") == "line 2: 'b' -> 'B'"
    assert first_difference(b"a\n", b"a\nb\n") == "1 lines -> 2 lines"
