"""The pipeline's cost: the forecast of every oracle stage from the data at hand (an upper bound of what the loopback
Messages API bills; $0 once the answers are cached), `slmforge cost` before anything runs, the stages' budget wired
to what the earlier stages paid, and metrics/cost.json adding up the stages."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from slmforge.cost import (CostParams, cost_markdown, cost_summary, forecast_pipeline, judge_forecast,
                           label_forecast, read_spent)
from slmforge.labeling import label_rows
from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.claude import ClaudeBackend
from slmforge.oracle.client import Oracle
from slmforge.params import build, compose
from tests.conftest import ROOT, chat_row
from tests.e2e.test_claude_pipeline import keyword_judge
from tests.oracle.messages_server import running_messages_server

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")


def claude_params(**oracle) -> CostParams:
    conf = compose(ROOT / "conf", ["oracle=claude"])
    conf["oracle"].update(oracle)
    return CostParams(**{name: build(tp, conf[name], name) for name, tp in typing.get_type_hints(CostParams).items()})


def rows(n: int) -> list[dict]:
    return [chat_row(f"r{i}", f"How large a sample does an A/B test of variant {i} need?",
                     f"About {1000 + i} users per arm for a 2% lift at 80% power.") for i in range(n)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "store"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", secrets.token_hex(20))


def test_label_forecast_bounds_the_bill_and_a_warm_cache_forecasts_zero(env, tmp_path):
    chat = rows(8)
    with running_messages_server(keyword_judge) as server:
        p = claude_params(base_url=server.base_url)
        oracle = Oracle(p.oracle, AnswerCache(tmp_path / "out"), ClaudeBackend(p.oracle))
        has = lambda r: oracle.cache.has(oracle.key(r))  # noqa: E731
        before = label_forecast(chat, p, has)
        assert (before.requests, before.cached, before.to_ask) == (8, 0, 8)
        label_rows(chat, oracle, p.rubric, [])
        assert len(server.calls("POST", "/v1/messages")) == 8
    assert 0 < oracle.ledger.usd <= before.usd  # the forecast is an upper bound of what the API billed
    after = label_forecast(chat, p, has)
    assert (after.cached, after.to_ask, after.usd) == (8, 0, 0.0)


def test_the_judge_forecast_counts_two_orders_of_the_capped_test_items():
    p = claude_params()
    f = judge_forecast(rows(40), p, "test split")
    cap = p.eval.max_test_items or 40
    assert f.requests == 2 * min(cap, 40) and f.usd > 0 and f.cached == 0
    # before the split exists: the test fraction of the rows
    before = judge_forecast(rows(40), p, "chat rows")
    assert before.requests == 2 * round(40 * p.split.fractions["test"])


def test_forecast_from_records_covers_every_oracle_stage():
    p = claude_params()
    records = [{"id": f"p{i}", "kind": "pair", "source": "s", "prompt": f"What is CUPED, take {i}?",
                "response": "A variance reduction using pre-period data.", "meta": {"origin": "stackexchange"}}
               for i in range(30)]
    records += [{"id": f"d{i}", "kind": "document", "source": "arxiv", "text": "Sequential testing " * 50,
                 "meta": {"title": f"Paper {i}"}} for i in range(3)]
    by_stage = {f.stage: f for f in forecast_pipeline(p, records=records)}
    assert list(by_stage) == ["synthesize", "calibrate", "label", "evaluate"]
    assert by_stage["synthesize"].requests == 3
    # label: the 30 pairs and the synthetic pairs the 3 documents may give
    assert by_stage["label"].requests == 30 + 3 * p.synthesize.pairs_per_document
    assert all(f.usd > 0 for f in by_stage.values())


def project(tmp_path: Path, *overrides: str) -> Path:
    for name in ("conf", "stages"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "data/sample", tmp_path / "data/sample")
    subprocess.run([sys.executable, "-m", "slmforge.cli", "compose", *overrides], cwd=tmp_path, check=True,
                   capture_output=True)
    return tmp_path


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "ANTHROPIC_"))}
    full.update(SLMFORGE_CACHE=str(cwd / "store"), **env)
    return subprocess.run([sys.executable, *cmd], cwd=cwd, env=full, capture_output=True, text=True)


def test_slmforge_cost_prints_the_estimate_before_anything_runs(tmp_path):
    repo = project(tmp_path, "oracle=claude")
    proc = run(["-m", "slmforge.cli", "cost"], repo)  # no key, no data/raw, no models: nothing has run
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("records: the sources before cleaning")
    table = {line.split()[0]: line.split() for line in lines[3:]}
    assert list(table) == ["synthesize", "calibrate", "label", "evaluate", "total"]
    for stage in ("synthesize", "calibrate", "label", "evaluate"):
        requests, cached, to_ask, usd, ceiling = table[stage][1:6]
        assert int(requests) == int(to_ask) > 0 and cached == "0" and float(usd[1:]) > 0, table[stage]
    total = sum(float(table[s][4][1:]) for s in ("synthesize", "calibrate", "label", "evaluate"))
    assert float(table["total"][4][1:]) == pytest.approx(total, abs=0.011)
    assert "oracle.max_usd: within" in lines[-1]
    # a ceiling below the forecast is flagged before any run would be refused
    repo2 = project(tmp_path / "tight", "oracle=claude", "oracle.max_usd=0.5")
    assert "OVER: the first paid call would be refused" in run(["-m", "slmforge.cli", "cost"], repo2).stdout


def test_label_refuses_when_what_was_spent_upstream_leaves_no_room(tmp_path):
    """The stage wiring: --spent reads what synthesize and calibrate paid from their metrics files."""
    repo = project(tmp_path, "oracle=claude", "oracle.max_usd=1.0")
    (repo / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(5)))
    (repo / "cal.json").write_text(json.dumps({"verdict": "PASS", "reasons": [], "gold": None,
                                               "validation": {"verdict": "PASS", "reasons": [], "overfit": False}}))
    (repo / "synth.json").write_text(json.dumps({"oracle": {"usd": 0.75}}))
    (repo / "calib.json").write_text(json.dumps({"oracle": {"usd": 0.2499}}))
    with running_messages_server(keyword_judge) as server:
        proc = run(["-m", "stages.label", "--chatml", "chat.jsonl", "--calibration", "cal.json", "--oracle-model", "none",
                    "--oracle-pin", "none", "--cache", "cache", "--out", "labels.jsonl", "--failures", "f.jsonl",
                    "--metrics", "label.json", "--spent", "synthesize=synth.json", "calibrate=calib.json"],
                   repo, ANTHROPIC_API_KEY=secrets.token_hex(20), ANTHROPIC_BASE_URL=server.base_url,
                   DVC_EXP_NAME="exp")  # as `dvc exp run -S` does: params.yaml carries the overrides
        assert server.calls() == []
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert re.search(r"with label's 5 calls \(estimated \$0\.\d\d; spent synthesize \$0\.75, calibrate \$0\.25; "
                     r"forecast evaluate \$0\.\d\d\), above oracle\.max_usd=\$1\.00", errors[0]), errors[0]
    assert not (repo / "labels.jsonl").exists()


def test_read_spent_takes_each_stages_last_bill_and_names_a_wrong_stage(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"oracle": {"usd": 1.5, "calls": 3}}))
    assert read_spent({"synthesize": tmp_path / "s.json", "calibrate": tmp_path / "none.json"}) == \
        {"synthesize": 1.5, "calibrate": 0.0}
    with pytest.raises(Exception, match="--spent judge=...: not an oracle stage"):
        read_spent({"judge": tmp_path / "s.json"})


def test_cost_summary_adds_up_the_stages_and_the_stage_writes_it(tmp_path):
    p = claude_params()
    metrics = {"synthesize": {"oracle": {"calls": 12, "cache_hits": 0, "usd": 0.5, "usd_saved": 0.0}},
               "calibrate": {"oracle": {"calls": 0, "cache_hits": 120, "usd": 0.0, "usd_saved": 0.31}},
               "label": {"oracle": {"calls": 400, "cache_hits": 100, "usd": 6.0, "usd_saved": 1.2}},
               "evaluate": {"judge": None}}  # the judge off: no oracle block
    s = cost_summary(metrics, p.oracle)
    assert s["total"]["calls"] == 412 and s["total"]["cache_hits"] == 220
    assert s["total"]["usd"] == pytest.approx(6.5) and s["total"]["usd_saved"] == pytest.approx(1.51)
    assert s["stages"]["evaluate"]["calls"] == 0 and s["total"]["within_ceiling"]
    md = cost_markdown(s)
    assert md.splitlines()[2].startswith("**$6.5000 paid, $1.5100 saved by the cache** over 412 calls")
    assert "| label | 400 | 100 | 0 | 0 | 0 | $6.0000 | $1.2000 | $15.00 |" in md

    repo = project(tmp_path)  # the local oracle: $0, with the call counts
    # the stages' metrics carry no per-run figure (the same outputs cost $0 from the cache): those are in the run
    # facts of the last run on this machine, which the stage reads beside them
    (repo / "runs").mkdir()
    for name, stage in (("s", "synthesize"), ("c", "calibrate"), ("l", "label"), ("e", "evaluate")):
        (repo / f"{name}.json").write_text(json.dumps({"oracle": {"backend": "local"}}))
        if stage in metrics:
            (repo / "runs" / f"{stage}.json").write_text(json.dumps({"stage": stage, **metrics[stage]}))
    proc = run(["-m", "stages.cost", "--stage", "synthesize=s.json", "calibrate=c.json", "label=l.json",
                "evaluate=e.json", "--runs-dir", "runs", "--metrics", "cost.json", "--report", "cost.md"], repo)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((repo / "cost.json").read_text())
    assert written["total"]["calls"] == 412 and written["backend"] == "local" and written["ceiling_usd"] == 0.0
    assert (repo / "cost.md").read_text().startswith("# Oracle cost")
