"""The pipeline budget through the real ClaudeBackend against the loopback Messages API: one ceiling over the
stages (what earlier stages paid + this stage's estimate + the forecast of the rest), a ceiling per stage, one
check over every round of a stage, and a guard that stops a stage before the call that would cross, not after."""

from __future__ import annotations

import json
import re

import pytest

from slmforge.errors import UserError
from slmforge.oracle.budget import Budget, BudgetStop, worst_usd
from slmforge.oracle.client import Oracle, cost, estimate_usd
from slmforge.oracle.types import Answer
from tests.oracle.messages_server import running_messages_server
from tests.oracle.test_client import claude_oracle, messages, params, request, score_from

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
CJK = "實驗的樣本量取決於效應大小與檢定力" * 6  # 102 characters, 306 bytes of UTF-8


def one_token_per_character(text: str) -> int:
    """How a real tokenizer treats CJK text: about a token a character (the client's estimate assumes 3.5)."""
    return len(text)


def cjk_request(n: int):
    r = request(n)
    return type(r)(id=r.id, system=r.system, prompt=r.prompt.replace("Score it.", CJK + "\nScore it."),
                   schema=r.schema, max_tokens=r.max_tokens)


@pytest.fixture
def cjk_server():
    with running_messages_server(score_from, tokens=one_token_per_character) as srv:
        yield srv


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "slmforge-cache"))
    return tmp_path / "store"


def budgeted(server, tmp_path, store, budget: Budget, **overrides) -> Oracle:
    oracle = claude_oracle(server, tmp_path / "out", store, **overrides)
    oracle.budget = budget
    return oracle


def label_budget(**kw) -> Budget:
    p = params(**kw.pop("params", {}))
    return Budget.for_stage("label", p, **kw)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_stage_that_would_cross_its_ceiling_midway_stops_before_the_crossing_call(cjk_server, key, store,
                                                                                      tmp_path, concurrency):
    reqs = [cjk_request(n) for n in range(12)]
    p = params(cjk_server, concurrency=concurrency, prompt_cache=False)
    estimate = estimate_usd(reqs, p, batch=False)
    # A ceiling the estimate fits under, but the real bill (a token a character) does not.
    ceiling = estimate * 1.05
    budget = Budget.for_stage("label", params(stage_max_usd={**p.stage_max_usd, "label": ceiling}))
    oracle = budgeted(cjk_server, tmp_path, store, budget, concurrency=concurrency, prompt_cache=False)
    with pytest.raises(BudgetStop) as stop:
        oracle.ask(reqs, "label")
    sent = messages(cjk_server)
    assert 0 < sent < len(reqs)  # it started (the estimate passed) and stopped part-way
    assert oracle.ledger.usd <= ceiling  # never past the ceiling: the guard stopped before, not after
    assert budget.paid == pytest.approx(oracle.ledger.usd) and budget.calls == sent
    # and it stopped only because the next call could have crossed: its worst case did not fit beside what was
    # paid (and, with calls in flight, beside their worst cases, reserved until they are billed)
    if concurrency == 1:
        assert oracle.ledger.usd + worst_usd(reqs[0], p) > ceiling
    line = str(stop.value)
    assert "\n" not in line and line.startswith("oracle: label stopped before call")
    assert "oracle.stage_max_usd.label" in line
    # every answer paid for is cached: a run with room for the rest asks only the rest
    again = budgeted(cjk_server, tmp_path, store, Budget.for_stage("label", params()), concurrency=concurrency,
                     prompt_cache=False)
    assert again.ask(reqs, "label") == [{"score": n % 11} for n in range(12)]
    assert again.ledger.cache_hits == sent and messages(cjk_server) == len(reqs)


def test_the_guard_bounds_every_call_the_api_can_bill(cjk_server, key, store, tmp_path):
    """The guard's worst case holds for text where the estimate does not: bytes bound a byte-level tokenizer."""
    oracle = claude_oracle(cjk_server, tmp_path / "out", store, prompt_cache=False)
    reqs = [cjk_request(n) for n in range(3)]
    oracle.ask(reqs, "label")
    per_call = oracle.ledger.usd / 3
    assert per_call > estimate_usd(reqs[:1], oracle.params, batch=False)  # the estimate is beaten here...
    assert per_call <= worst_usd(reqs[0], oracle.params)  # ...the worst case is not


def test_the_pipeline_ceiling_counts_spent_upstream_and_the_forecast_downstream(cjk_server, key, store, tmp_path):
    reqs = [request(n) for n in range(10)]
    p = params(cjk_server)
    usd = estimate_usd(reqs, p, batch=False)
    spent, forecast = {"synthesize": 1.25, "calibrate": 0.5}, {"evaluate": 0.75}
    # each part fits the ceiling alone; together they do not
    budget = Budget.for_stage("label", params(max_usd=1.25 + 0.5 + 0.75 + usd * 0.5), spent=spent, forecast=forecast)
    oracle = budgeted(cjk_server, tmp_path, store, budget)
    with pytest.raises(UserError) as refused:
        oracle.ask(reqs, "label")
    line = str(refused.value)
    assert cjk_server.calls() == [] and "\n" not in line
    assert re.search(rf"with label's 10 calls \(estimated \${usd:.2f}; spent synthesize \$1\.25, calibrate \$0\.50; "
                     r"forecast evaluate \$0\.75\), above oracle\.max_usd=", line), line
    # with room for all of it, the same stage runs
    # (room for the estimate and, since the guard reserves each call's worst case while it is in flight, for the
    # worst cases of `concurrency` calls)
    margin = p.concurrency * worst_usd(reqs[0], p)
    roomy = Budget.for_stage("label", params(max_usd=2.5 + usd + margin), spent=spent, forecast=forecast)
    assert budgeted(cjk_server, tmp_path, store, roomy).ask(reqs, "label")[3] == {"score": 3}


def test_a_stage_ceiling_refuses_naming_stage_estimate_and_knob(cjk_server, key, store, tmp_path):
    reqs = [request(n) for n in range(10)]
    usd = estimate_usd(reqs, params(cjk_server), batch=False)
    budget = label_budget(params={"stage_max_usd": {"synthesize": 5.0, "calibrate": 5.0, "label": usd / 2,
                                                    "evaluate": 3.0}})
    with pytest.raises(UserError, match=rf"^oracle: label would ask 10 calls estimated at \${usd:.2f}, above its "
                                        r"ceiling oracle\.stage_max_usd\.label=\$"):
        budgeted(cjk_server, tmp_path, store, budget).ask(reqs, "label")
    assert cjk_server.calls() == []


def test_a_stage_asking_in_rounds_is_checked_once_on_all_of_them(cjk_server, key, store, tmp_path):
    """calibrate asks four rounds; a ceiling checked round by round let it spend about four times the ceiling."""
    rounds = [[request(10 * k + n) for n in range(5)] for k in range(4)]
    one_round = estimate_usd(rounds[0], params(cjk_server), batch=False)
    budget = Budget.for_stage("calibrate", params(max_usd=one_round * 2))
    oracle = budgeted(cjk_server, tmp_path, store, budget)
    assert one_round <= budget.allowance()  # each round alone would pass
    with pytest.raises(UserError, match=r"oracle\.max_usd"):
        oracle.plan([r for rnd in rounds for r in rnd])
    assert cjk_server.calls() == []


def test_a_free_rerun_passes_any_ceiling_and_reports_what_the_cache_saved(cjk_server, key, store, tmp_path):
    reqs = [request(n) for n in range(4)]
    first = claude_oracle(cjk_server, tmp_path / "out", store)
    first.ask(reqs, "label")
    broke = Budget.for_stage("label", params(max_usd=0.0), spent={"synthesize": 3.0})
    warm = budgeted(cjk_server, tmp_path, store, broke)
    warm.plan(reqs)
    assert warm.ask(reqs, "label") == [{"score": n} for n in range(4)]
    m = warm.metrics()["oracle"]
    assert m["calls"] == 0 and m["usd"] == 0 and m["cache_hits"] == 4
    # saved: the cached answers' tokens at today's prices (their cache write/read tokens are not kept, so the
    # saving is priced as plain input)
    want = sum(cost(Answer("", e["tokens_in"], e["tokens_out"]), first.params)
               for e in (json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/*.json")))
    assert m["usd_saved"] == pytest.approx(want) and m["usd_saved"] > 0


def test_a_batch_is_sent_only_up_to_the_allowance(cjk_server, key, store, tmp_path):
    reqs = [cjk_request(n) for n in range(6)]
    p = params(cjk_server)
    worst = worst_usd(reqs[0], p, batch=True)
    budget = Budget.for_stage("label", params(stage_max_usd={**p.stage_max_usd, "label": worst * 3.5}))
    oracle = budgeted(cjk_server, tmp_path, store, budget)
    oracle.budget.planned_calls = 6
    with pytest.raises(BudgetStop, match="stopped before call 4 of 6"):
        oracle.ask(reqs, "label", batch=True)
    sent = [r for c in cjk_server.calls("POST", "/v1/messages/batches") for r in c["body"]["requests"]]
    assert len(sent) == 3 and oracle.ledger.calls == 3 and oracle.ledger.usd <= worst * 3.5


def test_a_budget_for_an_unknown_stage_or_without_a_ceiling_is_one_line():
    with pytest.raises(UserError, match=r"oracle\.stage_max_usd has no ceiling for label"):
        Budget.for_stage("label", params(stage_max_usd={"synthesize": 1.0}))
    with pytest.raises(UserError, match=r"oracle\.stage_max_usd\.judge is not an oracle stage"):
        Budget.for_stage("label", params(stage_max_usd={"label": 1.0, "judge": 1.0}))



def test_calibrate_is_checked_once_on_the_requests_it_then_asks(key, store, tmp_path):
    """calibrate() plans exactly the requests its four rounds ask: a ceiling that fits one round refuses it before
    any call, and with room its calls are those requests, no more, no fewer."""
    import yaml

    from slmforge.calibration import calibrate, calibration_requests
    from slmforge.params import CalibrationParams, RubricParams, build
    from tests.conftest import ROOT, chat_row
    from tests.e2e.test_claude_pipeline import keyword_judge

    rubric = build(RubricParams, yaml.safe_load((ROOT / "conf/rubric/default.yaml").read_text()), "rubric")
    conf = yaml.safe_load((ROOT / "conf/calibration/default.yaml").read_text())
    cal = build(CalibrationParams, {**conf, "gold": None, "strata": {"on_topic": 6, "off_topic": 6, "edge": 2},
                                    "self_consistency_n": 3}, "calibration")
    rows = [chat_row(f"on{i}", f"What sample size does A/B test {i} need for 80% power?", "About 4k per variant.")
            for i in range(10)]
    rows += [chat_row(f"off{i}", f"Which tomato variety grows best in pots, take {i}?", "Cherry tomatoes.")
             for i in range(10)]
    rows += [chat_row(f"edge{i}", f"Is experiment {i} worth it?", "Maybe.") for i in range(3)]
    requests = calibration_requests(rows, rubric, cal)
    unique = {(r.prompt, r.repeat) for r in requests}  # the validation sample may overlap the main one
    with running_messages_server(keyword_judge) as server:
        p = params(server, concurrency=1)
        one_round = estimate_usd(requests[:len(requests) // 4], p, batch=False)
        tight = Budget.for_stage("calibrate", params(max_usd=one_round * 2))
        with pytest.raises(UserError, match=r"oracle\.max_usd"):
            calibrate(rows, budgeted(server, tmp_path, store, tight, concurrency=1), rubric, cal)
        assert server.calls() == []

        roomy = budgeted(server, tmp_path, store, Budget.for_stage("calibrate", params()), concurrency=1)
        result, _ = calibrate(rows, roomy, rubric, cal)
        assert messages(server) == result["oracle"]["calls"] == len(unique)
