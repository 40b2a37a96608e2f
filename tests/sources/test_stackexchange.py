"""StackExchange API 2.3 collector against a loopback server that answers in the API's own wrapper and shapes."""

import copy
import json
import secrets

import pytest

from slmforge.errors import UserError
from slmforge.params import CollectCodeParams, HttpParams, StackExchangeSourceParams
from slmforge.sources import COLLECTORS
from slmforge.sources.records import html_to_text
from slmforge.sources.stackexchange import collect
from tests.sources.loopback import TRUNCATE, Loopback, json_response

LIVE_CODE = CollectCodeParams(stage="metrics/params_check.json", library="metrics/params_check.json")

ROOT_SAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "data" / "sample" / "stackexchange.jsonl"
KEY = "fake-key-" + secrets.token_hex(6) + "(("  # per run; "((" must be URL-quoted, redaction still finds it


def api_questions(n: int) -> list[dict]:
    """n questions in the API's withbody shape (the sample corpus stores them so), answers split off as the
    /questions/{ids}/answers method returns them."""
    rows = [json.loads(line) for line in ROOT_SAMPLE.read_text(encoding="utf-8").splitlines()[:n]]
    for q in rows:
        q.pop("site")  # the API does not return it; the collector sets it from params
        q["answer_count"] = len(q["answers"])
        for a in q["answers"]:
            a["question_id"] = q["question_id"]
    return rows


class FakeSite:
    """/questions paged by page & pagesize, /questions/{ids}/answers paged by `answers_page`; a shrinking quota."""

    def __init__(self, lb: Loopback, questions: list[dict], *, quota: int = 300, answers_page: int = 100,
                 backoff: dict | None = None):
        self.questions, self.quota, self.answers_page = questions, quota, answers_page
        self.backoff = backoff or {}  # {(method, page): seconds} sent in the wrapper
        lb.handle("GET", "/questions", self.list_questions)
        lb.handle("GET", "/questions/*", self.list_answers)

    def wrap(self, items, has_more, method, page):
        self.quota -= 1
        body = {"items": items, "has_more": has_more, "quota_max": 300, "quota_remaining": self.quota}
        if (method, page) in self.backoff:
            body["backoff"] = self.backoff[(method, page)]
        return json_response(body)

    def list_questions(self, req):
        page, size = int(req["query"]["page"][0]), int(req["query"]["pagesize"][0])
        items = [{k: v for k, v in q.items() if k != "answers"} for q in self.questions[(page - 1) * size: page * size]]
        return self.wrap(items, page * size < len(self.questions), "questions", page)

    def list_answers(self, req):
        ids = [int(i) for i in req["path"].split("/")[2].split(";")]
        answers = [a for q in self.questions if q.get("question_id") in ids for a in q["answers"]]
        page, size = int(req["query"]["page"][0]), self.answers_page
        return self.wrap(answers[(page - 1) * size: page * size], page * size < len(answers), "answers", page)


def make_params(lb, **changes) -> StackExchangeSourceParams:
    base = dict(kind="stackexchange", watch="src/slmforge/sources/stackexchange.py", code=LIVE_CODE,
                http=HttpParams(base_url=lb.url, timeout_s=2, max_retries=3, backoff_s=0.001),
                site="stats", tags=["ab-test", "p-value"], min_score=1, accepted_only=False, from_date=None,
                to_date=None, sort="votes", page_size=2, max_pages=10, key_env="SLMFORGE_TEST_SE_KEY", max_records=0)
    return StackExchangeSourceParams(**{**base, **changes})


@pytest.fixture
def lb(monkeypatch):
    monkeypatch.delenv("SLMFORGE_TEST_SE_KEY", raising=False)
    with Loopback() as server:
        yield server


def run(params, sleeps=None):
    quarantine, stats = [], {}
    records = collect(params, run_id="run-1", quarantine=quarantine, stats=stats,
                      sleep=(sleeps if sleeps is not None else []).append)
    return records, quarantine, stats


def test_registered_under_its_kind():
    assert COLLECTORS["stackexchange"] is collect


def test_pages_until_has_more_is_false_and_pairs_each_question_with_its_answer(lb):
    questions = api_questions(5)
    FakeSite(lb, questions)
    records, quarantine, stats = run(make_params(lb, from_date="2020-01-01", to_date="2020-12-31"))
    assert quarantine == []
    assert [r["id"] for r in records] == [f"stackexchange:stats:{q['question_id']}" for q in questions]
    assert stats["pages"] == 3 and stats["calls"] == 6 and stats["retries"] == 0
    assert stats["quota_max"] == 300 and stats["quota_remaining"] == 294
    # the questions query is the API's, page after page
    pages = lb.calls("GET", "/questions")
    assert [p["query"]["page"] for p in pages] == [["1"], ["2"], ["3"]]
    assert pages[0]["query"] == {"site": ["stats"], "tagged": ["ab-test;p-value"], "sort": ["votes"], "order": ["desc"],
                                 "min": ["1"], "fromdate": ["1577836800"], "todate": ["1609459199"],
                                 "pagesize": ["2"], "filter": ["withbody"], "page": ["1"]}
    # one vectorised answers call per page, for that page's ids
    answer_calls = [r for r in lb.requests if r["path"].endswith("/answers")]
    assert [c["path"] for c in answer_calls][0] == \
        f"/questions/{questions[0]['question_id']};{questions[1]['question_id']}/answers"
    assert answer_calls[0]["query"] == {"site": ["stats"], "filter": ["withbody"], "sort": ["votes"],
                                        "order": ["desc"], "pagesize": ["100"], "page": ["1"]}
    # the pair is the question and its accepted answer, as text
    q, r = questions[0], records[0]
    accepted = next(a for a in q["answers"] if a["is_accepted"])
    assert r["response"] == html_to_text(accepted["body"]) and html_to_text(q["body"]) in r["prompt"]
    assert r["meta"]["site"] == "stats" and r["meta"]["accepted"] is True
    assert r["provenance"]["url"] == q["link"] and r["provenance"]["run_id"] == "run-1"
    assert r["provenance"]["fetched_at"] and "tagged ab-test & p-value" in r["provenance"]["query"]
    assert r["source"] == "stackexchange" and r["kind"] == "pair"


def test_answers_are_paged_while_has_more(lb):
    questions = api_questions(2)
    first = questions[0]["answers"][0]
    questions[0]["answers"] = [dict(first, is_accepted=False, score=1, answer_id=1, body="<p>meh</p>"),
                               dict(first, is_accepted=False, score=2, answer_id=2, body="<p>ok</p>"),
                               dict(first, is_accepted=False, score=9, answer_id=3, body="<p>best</p>")]
    FakeSite(lb, questions, answers_page=2)
    records, _, _ = run(make_params(lb))
    answer_pages = [r["query"]["page"] for r in lb.requests if r["path"].endswith("/answers")]
    assert answer_pages == [["1"], ["2"]]
    assert records[0]["response"] == "best"  # the top answer came on the second page of answers


def test_key_is_sent_when_set_and_written_nowhere(lb, monkeypatch):
    monkeypatch.setenv("SLMFORGE_TEST_SE_KEY", KEY)
    FakeSite(lb, api_questions(3))
    records, quarantine, stats = run(make_params(lb))
    assert records and all(r["query"]["key"] == [KEY] for r in lb.requests)
    assert KEY not in json.dumps([records, quarantine, stats])


def test_no_key_param_without_the_env_var(lb):
    FakeSite(lb, api_questions(3))
    run(make_params(lb))
    assert all("key" not in r["query"] for r in lb.requests)


def test_backoff_field_is_waited_out_before_the_next_call_to_that_method(lb):
    FakeSite(lb, api_questions(5), backoff={("questions", 1): 7})
    sleeps = []

    def sleep(s):
        sleeps.append((s, len(lb.calls("GET", "/questions"))))

    quarantine, stats = [], {}
    collect(make_params(lb), run_id="r", quarantine=quarantine, stats=stats, sleep=sleep)
    assert sleeps == [(7.0, 1)]  # once, after page 1 and before page 2
    assert stats["backoff_s"] == 7.0


def test_accepted_only_keeps_questions_with_an_accepted_answer(lb):
    questions = api_questions(6)
    questions[1].pop("accepted_answer_id")  # never accepted
    questions[2]["answers"] = [dict(a, is_accepted=False) for a in questions[2]["answers"]]  # accepted one deleted
    FakeSite(lb, questions)
    records, _, stats = run(make_params(lb, accepted_only=True))
    ids = {r["id"].rsplit(":", 1)[1] for r in records}
    assert str(questions[1]["question_id"]) not in ids and str(questions[2]["question_id"]) not in ids
    assert len(records) == 4 and all(r["meta"]["accepted"] for r in records)
    assert stats["skipped_not_accepted"] == 2
    answered = ";".join(r["path"] for r in lb.requests if r["path"].endswith("/answers"))
    assert str(questions[1]["question_id"]) not in answered  # no answers call for a question we would drop


def test_score_is_checked_client_side_when_min_cannot_be_sent(lb):
    questions = api_questions(4)
    questions[0]["score"] = 0
    FakeSite(lb, questions)
    records, _, stats = run(make_params(lb, sort="activity"))
    assert "min" not in lb.calls("GET", "/questions")[0]["query"]  # under sort=activity `min` is a date
    assert len(records) == 3 and stats["skipped_low_score"] == 1


def test_unanswered_questions_are_counted_not_kept(lb):
    questions = api_questions(4)
    questions[0]["answers"], questions[0]["answer_count"] = [], 0
    questions[1]["answers"] = []  # answer_count says 1 but the answer is gone
    FakeSite(lb, questions)
    records, _, stats = run(make_params(lb))
    assert len(records) == 2 and stats["skipped_no_answer"] == 2


def test_malformed_items_are_quarantined_and_the_rest_survive(lb):
    questions = api_questions(4)
    questions[0].pop("question_id")
    questions[2]["title"] = {"not": "text"}
    FakeSite(lb, questions)
    records, quarantine, _ = run(make_params(lb))
    assert len(records) == 2
    assert [q["source"] for q in quarantine] == ["stackexchange", "stackexchange"]
    assert quarantine[0]["item"] == 0 and "question_id" in quarantine[0]["reason"]
    assert quarantine[1]["item"] == questions[2]["question_id"] and quarantine[1]["raw"]
    assert all(len(q["raw"]) <= 500 for q in quarantine)


def test_an_empty_page_ends_the_pull(lb):
    questions = api_questions(2)
    lb.route("GET", "/questions",
             json_response({"items": [{k: v for k, v in q.items() if k != "answers"} for q in questions],
                            "has_more": True, "quota_max": 300, "quota_remaining": 10}),
             json_response({"items": [], "has_more": True, "quota_max": 300, "quota_remaining": 9}))
    lb.handle("GET", "/questions/*", lambda req: json_response(
        {"items": [a for q in questions for a in q["answers"]], "has_more": False, "quota_remaining": 8,
         "quota_max": 300}))
    records, _, stats = run(make_params(lb))
    assert len(records) == 2 and stats["pages"] == 2 and len(lb.calls("GET", "/questions")) == 2


def test_max_pages_and_max_records_cap_the_pull(lb):
    FakeSite(lb, api_questions(12))
    records, _, stats = run(make_params(lb, max_pages=2))
    assert len(records) == 4 and len(lb.calls("GET", "/questions")) == 2
    lb.requests.clear()
    records, _, stats = run(make_params(lb, max_records=3))
    assert len(records) == 3 and stats["capped_at"] == 3 and len(lb.calls("GET", "/questions")) == 2


def test_a_spent_quota_stops_the_pull_with_a_message(lb):
    FakeSite(lb, api_questions(12), quota=4)  # page 1 + its answers, page 2 + its answers -> 0 left
    records, _, stats = run(make_params(lb))
    assert len(records) == 4 and stats["quota_remaining"] == 0
    assert "quota spent" in stats["stopped"] and "SLMFORGE_TEST_SE_KEY" in stats["stopped"]
    assert len(lb.requests) == 4


def test_throttle_violation_is_retried(lb):
    site = FakeSite(lb, api_questions(2))
    throttled = {"n": 0}

    def questions(req):
        throttled["n"] += 1
        if throttled["n"] == 1:
            return json_response({"error_id": 502, "error_name": "throttle_violation",
                                  "error_message": "too many requests from this IP, more requests available in "
                                                   "2 seconds"},
                                 502)
        return site.list_questions(req)

    lb.handle("GET", "/questions", questions)
    records, _, stats = run(make_params(lb))
    assert len(records) == 2 and stats["retries"] == 1


def test_500_and_429_and_a_truncated_body_are_retried(lb):
    site = FakeSite(lb, api_questions(2))
    failures = [json_response({"error_id": 500, "error_name": "internal_error", "error_message": "oops"}, 500),
                json_response({}, 429, {"Retry-After": "3"}),
                (200, {"Content-Type": "application/json", TRUNCATE: "1"}, '{"items": [{"question_id": 1')]
    lb.handle("GET", "/questions", lambda req: failures.pop(0) if failures else site.list_questions(req))
    sleeps = []
    records, _, stats = run(make_params(lb), sleeps)
    assert len(records) == 2 and stats["retries"] == 3 and 3.0 in sleeps


def test_500_forever_is_one_line_without_the_key(lb, monkeypatch):
    monkeypatch.setenv("SLMFORGE_TEST_SE_KEY", KEY)
    lb.route("GET", "/questions", json_response({"error_id": 500, "error_name": "internal_error",
                                                 "error_message": "internal error"}, 500))
    with pytest.raises(UserError) as err:
        run(make_params(lb))
    message = str(err.value)
    assert "\n" not in message and KEY not in message
    assert "/questions?site=stats" in message and "HTTP 500 internal_error" in message
    assert len(lb.requests) == 4


def test_bad_parameter_is_a_user_error_naming_the_parameter(lb):
    lb.route("GET", "/questions", json_response({"error_id": 400, "error_name": "bad_parameter",
                                                 "error_message": "sort"}, 400))
    with pytest.raises(UserError, match=r"HTTP 400 bad_parameter \(400\): sort: check sources.stackexchange"):
        run(make_params(lb, sort="hotness"))
    assert len(lb.requests) == 1


@pytest.mark.parametrize("changes, match", [({"page_size": 101}, "page_size"),
                                            ({"from_date": "last year"}, "from_date")])
def test_params_the_api_would_refuse_fail_before_any_call(lb, changes, match):
    with pytest.raises(UserError, match=match):
        run(make_params(lb, **changes))
    assert lb.requests == []


def test_sample_items_parse_as_live_items(lb):
    """The same parser reads the sample corpus and the API: a live pull of the sample's questions gives its records."""
    questions = api_questions(6)
    FakeSite(lb, copy.deepcopy(questions))
    records, _, _ = run(make_params(lb))
    from slmforge.sources.records import stackexchange_pair
    expected = [stackexchange_pair({**q, "site": "stats"}, source="stackexchange", query="", fetched_at="", run_id="")
                for q in questions]
    assert [(r["prompt"], r["response"], r["meta"]) for r in records] == \
        [(e["prompt"], e["response"], e["meta"]) for e in expected]
