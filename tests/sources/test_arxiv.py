"""arXiv export API collector against a loopback server that answers in the API's Atom, errors included."""

import json
import textwrap
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from slmforge.errors import UserError
from slmforge.params import ArxivSourceParams, CollectCodeParams, HttpParams
from slmforge.sources import COLLECTORS
from slmforge.sources.arxiv import collect
from slmforge.sources.records import arxiv_document
from tests.sources.loopback import TRUNCATE, Loopback

LIVE_CODE = CollectCodeParams(stage="metrics/params_check.json", library="metrics/params_check.json")

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "arxiv.jsonl"
ATOM = {"Content-Type": "application/atom+xml; charset=utf-8"}
OS = 'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"'
AX = 'xmlns:arxiv="http://arxiv.org/schemas/atom"'
NL = "\n"  # f-string expressions cannot hold a backslash before Python 3.12


def sample_entries(n: int) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:n]]


def atom_entry(e: dict) -> str:
    """One entry as export.arxiv.org writes it (title and abstract wrapped over lines, links, arxiv: elements)."""
    pdf = e["id"].replace("/abs/", "/pdf/")
    title = "\n  ".join(textwrap.wrap(e["title"], 60))  # arXiv wraps long titles at spaces
    return f"""  <entry>
    <id>{e['id']}</id>
    <updated>{e['updated']}</updated>
    <published>{e['published']}</published>
    <title>{escape(title)}</title>
    <summary>  {escape(e['summary'])}
</summary>
{''.join(f'    <author>{NL}      <name>{escape(a["name"])}</name>{NL}    </author>{NL}' for a in e['authors'])}\
    <arxiv:comment {AX}>12 pages, 3 figures</arxiv:comment>
    <link href="{e['id']}" rel="alternate" type="text/html"/>
    <link title="pdf" href="{pdf}" rel="related" type="application/pdf"/>
    <arxiv:primary_category {AX} term={quoteattr(e['primary_category'])} scheme="http://arxiv.org/schemas/atom"/>
{''.join(f'    <category term={quoteattr(c)} scheme="http://arxiv.org/schemas/atom"/>{NL}' for c in e['categories'])}\
  </entry>
"""


def atom_feed(entries: list[dict], total: int, start: int = 0, raw_entries: str = "") -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?search_query%3Dabs%3Atest%26id_list%3D%26start%3D{start}"
    rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query=abs:test&amp;id_list=&amp;start={start}&amp;max_results=2</title>
  <id>http://arxiv.org/api/3Y4Cn0uOxZx2lbEz0yXyKPBmfnI</id>
  <updated>2024-05-02T00:00:00-04:00</updated>
  <opensearch:totalResults {OS}>{total}</opensearch:totalResults>
  <opensearch:startIndex {OS}>{start}</opensearch:startIndex>
  <opensearch:itemsPerPage {OS}>{len(entries)}</opensearch:itemsPerPage>
{''.join(atom_entry(e) for e in entries)}{raw_entries}</feed>
"""


ERROR_ENTRY = """  <entry>
    <id>http://arxiv.org/api/errors#max_results_must_be_non-negative</id>
    <title>Error</title>
    <summary>max_results must be non-negative</summary>
    <updated>2024-05-02T00:00:00-04:00</updated>
    <link href="http://arxiv.org/api/errors#max_results_must_be_non-negative" rel="alternate" type="text/html"/>
    <author>
      <name>arXiv api core</name>
    </author>
  </entry>
"""


class FakeArxiv:
    """/api/query paged by start & max_results over `entries`; `script` answers chosen calls (by number) instead."""

    def __init__(self, lb: Loopback, entries: list[dict], script: dict | None = None):
        self.entries, self.script, self.n = entries, script or {}, 0
        lb.handle("GET", "/api/query", self.query)

    def query(self, req):
        self.n += 1
        if self.n in self.script:
            return self.script[self.n]
        start, size = int(req["query"]["start"][0]), int(req["query"]["max_results"][0])
        return 200, ATOM, atom_feed(self.entries[start:start + size], len(self.entries), start)


def make_params(lb, **changes) -> ArxivSourceParams:
    base = dict(kind="arxiv", watch="src/slmforge/sources/arxiv.py", code=LIVE_CODE,
                http=HttpParams(base_url=lb.url + "/api/query", timeout_s=2, max_retries=3, backoff_s=0.001),
                query='abs:"A/B test"', categories=["stat.ME", "stat.AP"], sort_by="submittedDate",
                sort_order="descending", page_size=2, delay_s=3.0, max_records=0)
    return ArxivSourceParams(**{**base, **changes})


@pytest.fixture
def lb():
    with Loopback() as server:
        yield server


def run(params, sleeps=None):
    quarantine, stats = [], {}
    records = collect(params, run_id="run-1", quarantine=quarantine, stats=stats,
                      sleep=(sleeps if sleeps is not None else []).append)
    return records, quarantine, stats


def test_registered_under_its_kind():
    assert COLLECTORS["arxiv"] is collect


def test_pages_through_the_results_and_reads_each_entry_as_the_sample_does(lb):
    entries = sample_entries(5)
    FakeArxiv(lb, entries)
    sleeps = []
    records, quarantine, stats = run(make_params(lb), sleeps)
    assert quarantine == []
    calls = lb.calls("GET", "/api/query")
    assert [c["query"]["start"] for c in calls] == [["0"], ["2"], ["4"]]  # totalResults=5 reached: no 4th call
    assert calls[0]["query"] == {"search_query": ['(abs:"A/B test") AND (cat:stat.ME OR cat:stat.AP)'],
                                 "start": ["0"], "max_results": ["2"], "sortBy": ["submittedDate"],
                                 "sortOrder": ["descending"]}
    assert sleeps == [3.0, 3.0]  # delay_s between calls, none before the first
    assert stats["pages"] == 3 and stats["calls"] == 3 and stats["total_results"] == 5 and stats["retries"] == 0
    # the feed parsed by feedparser gives what the sample corpus's stored shape gives
    expected = [arxiv_document(e, source="arxiv", query="", fetched_at="", run_id="") for e in entries]
    assert [(r["id"], r["text"], r["meta"]) for r in records] == [(e["id"], e["text"], e["meta"]) for e in expected]
    r = records[0]
    assert r["source"] == "arxiv" and r["kind"] == "document"
    assert r["provenance"]["url"] == entries[0]["id"] and r["provenance"]["run_id"] == "run-1"
    assert r["provenance"]["fetched_at"] and "cat:stat.ME" in r["provenance"]["query"]


def test_without_categories_the_query_goes_as_is(lb):
    FakeArxiv(lb, sample_entries(1))
    run(make_params(lb, categories=[]))
    assert lb.calls()[0]["query"]["search_query"] == ['abs:"A/B test"']


def test_an_empty_result_set_is_one_call(lb):
    FakeArxiv(lb, [])
    records, _, stats = run(make_params(lb))
    assert records == [] and len(lb.calls()) == 1 and stats["total_results"] == 0 and "stopped" not in stats


def test_a_transient_empty_page_mid_pull_is_asked_again(lb):
    FakeArxiv(lb, sample_entries(5), script={2: (200, ATOM, atom_feed([], 0, 2))})
    records, _, stats = run(make_params(lb))
    assert len(records) == 5 and stats["empty_page_retries"] == 1
    assert [c["query"]["start"] for c in lb.calls()] == [["0"], ["2"], ["2"], ["4"]]


def test_empty_pages_that_persist_end_the_pull_with_a_note(lb):
    empty = (200, ATOM, atom_feed([], 0, 2))
    FakeArxiv(lb, sample_entries(5), script={n: empty for n in range(2, 10)})
    records, _, stats = run(make_params(lb))
    assert len(records) == 2 and len(lb.calls()) == 1 + 1 + 3  # first page, then max_retries more asks
    assert "empty pages at start=2 of 5" in stats["stopped"]


def test_max_records_caps_the_pull(lb):
    FakeArxiv(lb, sample_entries(9))
    records, _, stats = run(make_params(lb, max_records=3))
    assert len(records) == 3 and stats["capped_at"] == 3 and len(lb.calls()) == 2


@pytest.mark.parametrize("status", [200, 400])
def test_an_error_entry_is_a_user_error_with_its_message(lb, status):
    FakeArxiv(lb, [], script={1: (status, ATOM, atom_feed([], 1, 0, ERROR_ENTRY))})
    with pytest.raises(UserError, match="max_results must be non-negative") as err:
        run(make_params(lb))
    assert "\n" not in str(err.value) and len(lb.calls()) == 1


def test_500_429_a_truncated_and_a_broken_body_are_retried(lb):
    entries = sample_entries(3)
    broken = atom_feed(entries[:2], 3)
    FakeArxiv(lb, entries, script={
        1: (500, {"Content-Type": "text/plain"}, "Internal Server Error"),
        2: (429, {"Retry-After": "5"}, "Too Many Requests"),
        3: (200, {**ATOM, TRUNCATE: "1"}, broken[: len(broken) // 2]),  # the connection drops mid-body
        4: (200, ATOM, broken[: len(broken) // 2]),  # a well-framed response whose XML stops half-way
    })
    sleeps = []
    http4 = HttpParams(base_url=lb.url + "/api/query", timeout_s=2, max_retries=4, backoff_s=0.001)
    records, quarantine, stats = run(make_params(lb, http=http4), sleeps)
    assert len(records) == 3 and quarantine == [] and stats["retries"] == 4
    assert 5.0 in sleeps and stats["pages"] == 2


def test_500_forever_is_one_line(lb):
    FakeArxiv(lb, [], script={n: (503, {"Content-Type": "text/plain"}, "Service Unavailable") for n in range(1, 9)})
    with pytest.raises(UserError, match="HTTP 503") as err:
        run(make_params(lb))
    assert "\n" not in str(err.value) and "sources.arxiv.http.max_retries" in str(err.value)
    assert len(lb.calls()) == 4


def test_unparseable_entries_are_quarantined_and_the_rest_survive(lb):
    entries = sample_entries(3)
    bad = """  <entry>
    <id>http://arxiv.org/not-an-abstract/1</id>
    <title>Odd</title>
    <summary>odd</summary>
  </entry>
  <entry>
    <id>http://arxiv.org/abs/2401.00001v1</id>
    <summary>no title</summary>
  </entry>
"""
    lb.handle("GET", "/api/query", lambda req: (200, ATOM, atom_feed(entries, 5, 0, bad)))
    records, quarantine, _ = run(make_params(lb, page_size=10))
    assert [r["id"] for r in records] == [f"arxiv:{e['id'].rsplit('/abs/')[1][:-2]}" for e in entries]
    assert [q["item"] for q in quarantine] == ["http://arxiv.org/not-an-abstract/1",
                                               "http://arxiv.org/abs/2401.00001v1"]
    assert all(q["source"] == "arxiv" and q["reason"] and q["raw"] for q in quarantine)


def test_an_entry_repeated_on_the_next_page_is_kept_once(lb):
    entries = sample_entries(4)
    FakeArxiv(lb, entries, script={2: (200, ATOM, atom_feed([entries[1], entries[2]], 4, 2))})
    records, _, stats = run(make_params(lb))
    assert len(records) == len({r["id"] for r in records}) == 3 and stats["duplicates"] == 1
