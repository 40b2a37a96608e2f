"""Batch mode survives a killed run: the batch id is kept in the answer store the moment the batch exists and
printed, a re-run polls that batch instead of submitting its requests again, and an answered request is never
sent twice. The run is a real process killed (SIGKILL) while it polls a loopback Message Batches API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmforge.oracle.batches import BatchJournal
from tests.oracle.batch_worker import main
from tests.oracle.messages_server import BATCHES, running_messages_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


def score(body: dict) -> str:
    return json.dumps({"score": int(re.search(r"value=(\d+)", body["messages"][0]["content"]).group(1)) % 11})


def worker(server, store: Path, out: Path, n: int) -> subprocess.Popen:
    env = {**os.environ, "SLMFORGE_CACHE": str(store), "ANTHROPIC_API_KEY": "sk-ant-" + "x" * 30}
    return subprocess.Popen([sys.executable, "-m", "tests.oracle.batch_worker", server.base_url, str(out), str(n)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def polls(server, batch_id: str) -> int:
    return len([r for r in server.calls("GET", f"{BATCHES}/{batch_id}")])


def test_a_run_killed_mid_poll_resumes_its_batch_and_pays_once(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    with running_messages_server(score) as server:
        server.batch_polls_in_progress = 10**9  # the batch stays in progress until the test says otherwise
        first = worker(server, store, tmp_path / "out1", 6)
        deadline = time.monotonic() + 60
        while not server.batches or polls(server, next(iter(server.batches))) < 2:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        (batch_id,) = server.batches
        kept = json.loads((store / "oracle" / "batches" / f"{batch_id}.json").read_text())
        assert kept["batch_id"] == batch_id and len(kept["keys"]) == 6  # in the store while the run polls
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert f"submitted batch {batch_id} (6 requests)" in first.stderr.read()  # the user saw its id

        server.batch_polls_in_progress = 0  # the batch ends: the next poll sees it done
        second = worker(server, store, tmp_path / "out2", 8)  # two more requests than the killed run asked
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert json.loads(out) == [{"score": k} for k in range(8)]
        assert f"resuming batch {batch_id} of an earlier run (6 of these requests)" in err
        created = server.calls("POST", BATCHES)
        assert len(created) == 2  # the killed run's batch, and one for the two new requests only
        assert len(created[1]["body"]["requests"]) == 2
        assert server.calls("POST", "/v1/messages") == []
        assert not list((store / "oracle" / "batches").glob("*.json"))  # settled: nothing left to resume

        monkeypatch.setenv("SLMFORGE_CACHE", str(store))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + "x" * 30)
        main(server.base_url, str(tmp_path / "out3"), 8)  # a third run, in this process: all from the cache
        assert json.loads(capsys.readouterr().out) == [{"score": k} for k in range(8)]
        assert len(server.calls("POST", BATCHES)) == 2 and server.calls("POST", "/v1/messages") == []


def test_a_batch_the_api_no_longer_has_is_asked_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "store"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + "x" * 30)
    with running_messages_server(score) as server:
        main(server.base_url, str(tmp_path / "out0"), 3)  # learn the three keys from a first, complete run
        keys = [p.stem for p in (tmp_path / "out0").glob("*/*.json")]
        for p in (tmp_path / "store" / "oracle").glob("*/*.json"):
            if p.parent.name != "batches":
                p.unlink()  # forget the answers: as if that run had been killed before its batch ended
        BatchJournal(tmp_path / "store" / "oracle" / "batches").add("msgbatch_expired", keys, "claude", "m")
        main(server.base_url, str(tmp_path / "out1"), 3)
    assert len(server.calls("POST", BATCHES)) == 2  # the deleted batch's requests were asked in a new batch
    assert not (tmp_path / "store" / "oracle" / "batches" / "msgbatch_expired.json").exists()
