"""The content-addressed answer cache: what its key depends on, where answers live, and seeding from DVC's cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from slmforge.oracle.cache import AnswerCache, request_key, seed_from_dvc
from slmforge.oracle.types import Request

VENV_BIN = Path(sys.executable).parent
BASE = dict(backend="claude", model="claude-sonnet-4-5", decoding={"max_field_tokens": 40},
            req=Request(id="rec1", system="You score records.", prompt="<record>\nhello\n</record>",
                        schema={"type": "object"}, max_tokens=64))


def key_of(**changes) -> str:
    kw = {**BASE, **{k: v for k, v in changes.items() if k in BASE}}
    req_changes = {k: v for k, v in changes.items() if k not in BASE}
    return request_key(kw["backend"], kw["model"], kw["decoding"], replace(kw["req"], **req_changes))


@pytest.mark.parametrize("change", [
    {"backend": "local"},
    {"model": "claude-haiku-4-5"},
    {"decoding": {"max_field_tokens": 41}},
    {"decoding": {"max_field_tokens": 40, "top_k": 1}},
    {"system": "You score records strictly."},
    {"prompt": "<record>\nhello!\n</record>"},
    {"schema": {"type": "object", "required": ["score"]}},
    {"max_tokens": 65},
    {"repeat": 1},
])
def test_key_changes_with_everything_that_shapes_the_answer(change):
    assert key_of(**change) != key_of()


def test_key_ignores_the_record_id_and_is_stable():
    assert key_of(id="another-record-with-the-same-text") == key_of()
    assert key_of() == key_of() and len(key_of()) == 64 and int(key_of(), 16) >= 0


def test_put_then_get_from_the_same_and_a_fresh_cache(tmp_path):
    cache = AnswerCache(tmp_path / "out", store=tmp_path / "store")
    key, entry = key_of(), {"answer": {"score": 7}, "raw": '{"score": 7}'}
    assert cache.get(key) is None and len(cache) == 0
    cache.put(key, entry)
    assert cache.get(key) == entry and len(cache) == 1
    assert AnswerCache(tmp_path / "out2", store=tmp_path / "store").get(key) == entry
    assert cache.get(key_of(repeat=3)) is None


def test_the_store_defaults_to_slmforge_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "home-cache"))
    cache = AnswerCache(tmp_path / "out")
    cache.put(key_of(), {"answer": {}})
    assert list((tmp_path / "home-cache" / "oracle").rglob("*.json"))


def test_an_answer_found_only_in_the_store_is_copied_into_the_stage_output(tmp_path):
    """DVC deletes a stage's outputs before running it: answers come back from the store, and the new output
    must list every answer the stage used, or `dvc push` would not share them."""
    store = tmp_path / "store"
    AnswerCache(tmp_path / "first-run", store=store).put(key_of(), {"answer": {"score": 1}})
    rerun = AnswerCache(tmp_path / "rerun", store=store)
    assert len(rerun) == 0
    assert rerun.get(key_of()) == {"answer": {"score": 1}}
    assert len(rerun) == 1
    copied = next((tmp_path / "rerun").glob("*/*.json"))
    assert json.loads(copied.read_text()) == {"answer": {"score": 1}} and copied.stem == key_of()


def test_an_answer_found_only_in_the_output_is_used_without_the_store(tmp_path):
    AnswerCache(tmp_path / "out", store=tmp_path / "store").put(key_of(), {"answer": {"score": 2}})
    assert AnswerCache(tmp_path / "out", store=tmp_path / "empty-store").get(key_of()) == {"answer": {"score": 2}}


def test_a_corrupt_file_is_ignored_not_trusted(tmp_path):
    cache = AnswerCache(tmp_path / "out", store=tmp_path / "store")
    key = key_of()
    cache.put(key, {"answer": {"score": 5}})
    for root in (tmp_path / "out", tmp_path / "store"):
        (root / key[:2] / f"{key}.json").write_text('{"answer": {"sco', encoding="utf-8")
    assert cache.get(key) is None  # a miss: the oracle asks again ...
    cache.put(key, {"answer": {"score": 6}})  # ... and the new answer replaces the corrupt file
    assert cache.get(key) == {"answer": {"score": 6}}


def test_a_corrupt_output_file_is_replaced_by_the_store_copy(tmp_path):
    cache = AnswerCache(tmp_path / "out", store=tmp_path / "store")
    key = key_of()
    cache.put(key, {"answer": {"score": 5}})
    out_file = tmp_path / "out" / key[:2] / f"{key}.json"
    out_file.write_bytes(b"\xff\xfe not json")
    assert cache.get(key) == {"answer": {"score": 5}}
    assert json.loads(out_file.read_text()) == {"answer": {"score": 5}}  # the DVC output is whole again


def test_valid_json_that_is_not_an_entry_is_ignored(tmp_path):
    cache = AnswerCache(tmp_path / "out", store=tmp_path / "store")
    key = key_of()
    (tmp_path / "out" / key[:2]).mkdir(parents=True)
    (tmp_path / "out" / key[:2] / f"{key}.json").write_text("[1, 2]", encoding="utf-8")
    assert cache.get(key) is None


# --- seeding the store from DVC's own cache (a teammate who ran `dvc pull`) ------------------------------------

STAGE_SCRIPT = textwrap.dedent("""
    import sys
    from slmforge.oracle.cache import AnswerCache
    cache = AnswerCache("data/oracle_cache/label", store=sys.argv[1])
    for n in range(3):
        cache.put(f"{n:x}" * 64, {"key": f"{n:x}" * 64, "answer": {"score": n}})
""")


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"


def test_seed_from_dvc_restores_the_locked_answers_into_the_store(tmp_path, monkeypatch):
    repo, store = tmp_path / "repo", tmp_path / "store"
    repo.mkdir()
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))  # DVC's own scratch stays in tmp too
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    (repo / "answer.py").write_text(STAGE_SCRIPT, encoding="utf-8")
    _run(["git", "init", "-q"], repo, env)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo, env)
    _run([str(VENV_BIN / "dvc"), "stage", "add", "-q", "-n", "label", "-d", "answer.py",
          "-o", "data/oracle_cache/label", f"{sys.executable} answer.py {store}"], repo, env)
    _run([str(VENV_BIN / "dvc"), "repro", "-q"], repo, env)
    assert len(list(store.rglob("*.json"))) == 3

    # A fresh machine: the stage output gone (DVC deletes it before a run), the store empty.
    shutil.rmtree(repo / "data" / "oracle_cache" / "label")
    shutil.rmtree(store)
    lock = repo / "dvc.lock"
    assert seed_from_dvc("data/oracle_cache/label", store=store, lock=lock) == 3
    keys = [f"{n:x}" * 64 for n in range(3)]
    cache = AnswerCache(tmp_path / "new-out", store=store)
    assert [cache.get(k)["answer"] for k in keys] == [{"score": n} for n in range(3)]
    assert seed_from_dvc("data/oracle_cache/label", store=store, lock=lock) == 0  # nothing new the second time
    assert seed_from_dvc("data/oracle_cache/other", store=store, lock=lock) == 0  # not an output of the lock


def test_seed_from_dvc_outside_a_dvc_repo_is_zero(tmp_path):
    assert seed_from_dvc("data/oracle_cache/label", store=tmp_path / "store", lock=tmp_path / "dvc.lock") == 0
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  label:\n    cmd: x\n    outs:\n"
                                       "    - path: data/oracle_cache/label\n      md5: 0123456789abcdef.dir\n")
    assert seed_from_dvc("data/oracle_cache/label", store=tmp_path / "store", lock=tmp_path / "dvc.lock") == 0
    assert not (tmp_path / "store").exists()
