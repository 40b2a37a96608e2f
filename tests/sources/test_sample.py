"""The embedded sample corpus: enough pairs and facts, real API shapes, provenance, and known noise."""

import json

import pytest

from slmforge.params import load_source_params
from slmforge.sources.records import html_to_text
from slmforge.sources.sample import collect


@pytest.fixture(scope="module")
def records(root):
    quarantine = []
    params = load_source_params("sample", root / "params.yaml")
    import os
    cwd = os.getcwd()
    os.chdir(root)
    try:
        out = collect(params, run_id="test-run", quarantine=quarantine, stats={})
    finally:
        os.chdir(cwd)
    assert quarantine == []
    return out


def test_at_least_300_question_answer_pairs_from_real_shapes(records):
    pairs = [r for r in records if r["kind"] == "pair" and r["meta"]["origin"] in {"stackexchange", "tweets"}]
    assert len(pairs) >= 300
    assert {r["meta"]["origin"] for r in records} == {"stackexchange", "tweets", "arxiv", "facts"}
    docs = [r for r in records if r["kind"] == "document"]
    assert len(docs) >= 30 and all(r["text"] and not r["prompt"] for r in docs)


def test_fact_table_has_40_facts_with_3_to_5_phrasings(records):
    facts = {}
    for r in records:
        if r["meta"]["origin"] == "facts":
            facts.setdefault(r["meta"]["fact_id"], []).append(r)
    assert len(facts) >= 40
    assert all(3 <= len(v) <= 5 for v in facts.values())
    for phrasings in facts.values():
        answer = phrasings[0]["meta"]["answer"]
        assert all(answer in p["response"] for p in phrasings)


def test_records_follow_the_contract(records):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        assert set(r) == {"id", "source", "kind", "prompt", "response", "text", "meta", "provenance"}
        assert set(r["provenance"]) == {"query", "url", "fetched_at", "run_id"}
        assert r["provenance"]["run_id"] is None and r["provenance"]["fetched_at"] is None  # no snapshot
        if r["kind"] == "pair":
            assert r["prompt"].strip() and r["response"].strip()
        assert "<p>" not in r["prompt"] + r["response"]


def test_noise_for_later_filters_is_present_and_labelled(records, root):
    ids = {r["id"] for r in records}
    expected = []
    for name in ["stackexchange_expected_drops.jsonl", "tweets_arxiv_expected_drops.jsonl"]:
        expected += [json.loads(line) for line in (root / "data/sample" / name).read_text().splitlines()]
    reasons = {e["reason"] for e in expected}
    assert reasons == {"off_topic", "non_english", "spam", "duplicate"}
    assert all(e["id"] in ids for e in expected)
    assert all(e["dup_of"] in ids for e in expected if e["reason"] == "duplicate")


def test_html_to_text_keeps_code_blocks_and_paragraphs():
    html = "<p>Use <code>t.test(x, y)</code> here.</p><pre><code>n &lt;- 16 * s^2\n</code></pre><p>Done &amp; dusted</p>"
    text = html_to_text(html)
    assert "`t.test(x, y)`" in text
    assert "```\nn <- 16 * s^2\n```" in text
    assert text.endswith("Done & dusted")
