"""Synthetic Q&A from documents through the real Oracle client and cache, with an in-test backend returning fixed
pairs: citations and provenance on every pair, duplicates and short answers dropped and counted, caps counted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from slmforge.oracle.cache import AnswerCache
from slmforge.oracle.client import Oracle
from slmforge.oracle.types import Answer
from slmforge.params import OracleParams, SynthesizeParams, build
from slmforge.synthesis import has_documents, no_document_metrics, synthesize

ROOT = Path(__file__).resolve().parents[1]
LONG = "It is the probability, under the null hypothesis, of data at least as extreme as those observed."


def params(**overrides) -> SynthesizeParams:
    data = yaml.safe_load((ROOT / "conf/synthesize/default.yaml").read_text())
    return build(SynthesizeParams, {**data, **overrides}, "synthesize")


def doc(id_: str, title: str | None = "A paper", text: str = "Body of the paper.", **meta) -> dict:
    return {"id": id_, "source": id_.split(":")[0], "kind": "document", "prompt": "", "response": "", "text": text,
            "meta": {**({"title": title} if title else {}), **meta},
            "provenance": {"url": f"https://example.org/{id_}", "query": "ab testing", "run_id": "r1"}}


class FixedPairs:
    """Answers a synth request with `pairs[title]` (the title is read back from the prompt's document block)."""

    name = "fixed"

    def __init__(self, pairs: dict[str, list[tuple[str, str]]]):
        self.pairs, self.calls = pairs, []

    def model_id(self) -> str:
        return "fixed-1"

    def complete(self, req):
        self.calls.append(req.id)
        title = re.search(r"<document>\nTitle: (.*)\n", req.prompt).group(1)
        pairs = [{"question": q, "answer": a} for q, a in self.pairs[title]]
        return Answer(text=json.dumps({"pairs": pairs}), tokens_in=100, tokens_out=50)


def oracle(tmp_path, backend, **overrides) -> Oracle:
    data = {**yaml.safe_load((ROOT / "conf/oracle/local.yaml").read_text()), **overrides}
    return Oracle(build(OracleParams, data, "oracle"), AnswerCache(tmp_path / "out", store=tmp_path / "store"), backend)


def test_pairs_carry_their_citation_and_provenance(tmp_path):
    records = [doc("arxiv:2101.00001", "Always-valid p-values", authors=["A. Author"]),
               doc("files:notes.md", None, text="Notes on CUPED\nCUPED reduces variance.", arxiv_id="1234.5678"),
               {"id": "se:1", "kind": "pair", "prompt": "q", "response": "r"}]  # not a document: not asked
    backend = FixedPairs({"Always-valid p-values": [("What is a p-value?", LONG), ("Why not peek?", LONG + " 2")],
                          "": [("What does CUPED do?", LONG + " 3"), ("What is a covariate?", LONG + " 4")]})
    pairs, metrics = synthesize(records, oracle(tmp_path, backend), params(pairs_per_document=2))
    assert sorted(backend.calls) == ["arxiv:2101.00001", "files:notes.md"]
    assert len(pairs) == 4 and metrics["pairs"] == 4 and metrics["documents"] == 2 and metrics["pairs_asked"] == 4

    arxiv = [p for p in pairs if p["meta"]["document_id"] == "arxiv:2101.00001"]
    assert [p["prompt"] for p in arxiv] == ["What is a p-value?", "Why not peek?"]
    cite = arxiv[0]["meta"]["citation"]
    assert cite == {"title": "Always-valid p-values", "arxiv_id": "2101.00001",
                    "url": "https://example.org/arxiv:2101.00001", "authors": ["A. Author"]}
    notes = next(p for p in pairs if p["meta"]["document_id"] == "files:notes.md")
    assert notes["meta"]["citation"]["title"] == "Notes on CUPED"  # no title: the text's first line
    assert notes["meta"]["citation"]["arxiv_id"] == "1234.5678"  # from meta when the id is not arxiv:

    for p in pairs:
        assert p["kind"] == "pair" and p["meta"]["origin"] == "synthetic" and p["response"].startswith(LONG)
        assert p["provenance"]["derived_from"] == p["meta"]["document_id"]
        assert p["provenance"]["query"] == "ab testing" and p["provenance"]["run_id"] == "r1"  # the doc's, kept
        assert p["meta"]["oracle"] == {"backend": "fixed", "model": "fixed-1"}
        assert p["id"].startswith(f"synthetic:{p['meta']['document_id']}:")
    assert len({p["id"] for p in pairs}) == 4
    assert metrics["oracle"]["calls"] == 2 and metrics["dropped"] == {}


def test_pair_ids_are_stable_across_runs(tmp_path):
    backend = FixedPairs({"A paper": [("Q one?", LONG), ("Q two?", LONG)]})
    first, _ = synthesize([doc("arxiv:1")], oracle(tmp_path, backend), params())
    again, metrics = synthesize([doc("arxiv:1")], oracle(tmp_path, backend), params())
    assert [p["id"] for p in again] == [p["id"] for p in first] and again == first
    assert len(backend.calls) == 1 and metrics["oracle"]["cache_hits"] == 1  # the re-run asked nothing


def test_duplicate_questions_are_dropped_and_counted(tmp_path):
    backend = FixedPairs({
        "P1": [("What is power?", LONG), ("what is  POWER", LONG + " again")],  # same question, other spelling
        "P2": [("What is power?!", LONG + " elsewhere"), ("What is alpha?", LONG)],  # across documents too
    })
    pairs, metrics = synthesize([doc("arxiv:1", "P1"), doc("arxiv:2", "P2")], oracle(tmp_path, backend), params())
    assert [p["prompt"] for p in pairs] == ["What is power?", "What is alpha?"]
    assert metrics["dropped"] == {"duplicate_question": 2}
    assert metrics["pairs"] + sum(metrics["dropped"].values()) == metrics["pairs_asked"]


def test_too_short_answers_are_dropped_and_counted(tmp_path):
    p = params()
    short = "x" * (p.min_answer_chars - 1)
    backend = FixedPairs({"P": [("Short?", "  " + short + "  "), ("Long?", "y" * p.min_answer_chars)]})
    pairs, metrics = synthesize([doc("arxiv:1", "P")], oracle(tmp_path, backend), p)
    assert [q["prompt"] for q in pairs] == ["Long?"]  # exactly min_answer_chars is enough; spaces do not count
    assert metrics["dropped"] == {"answer_too_short": 1}


def test_a_document_whose_answer_fails_is_counted(tmp_path):
    backend = FixedPairs({"Good": [("Q1?", LONG), ("Q2?", LONG)], "Bad": [("Only one?", LONG)]})  # 1 of 2 pairs
    pairs, metrics = synthesize([doc("arxiv:1", "Good"), doc("arxiv:2", "Bad")],
                                oracle(tmp_path, backend, max_failure_share=0.5), params())
    assert len(pairs) == 2 and metrics["dropped"] == {"oracle_failure": 1}
    assert metrics["oracle"]["failures"] == 1


def test_no_documents_no_calls_and_empty_output(tmp_path):
    backend = FixedPairs({})
    pairs, metrics = synthesize([{"id": "se:1", "kind": "pair", "prompt": "q", "response": "r"}],
                                oracle(tmp_path, backend), params())
    assert pairs == [] and backend.calls == []
    assert metrics["documents"] == 0 and metrics["pairs"] == 0 and metrics["pairs_asked"] == 0
    assert metrics["oracle"]["calls"] == 0


def test_without_a_document_the_stage_asks_nothing_and_reports_zero_calls():
    assert not has_documents([{"id": "se:1", "kind": "pair"}, {"id": "x"}])
    assert has_documents([{"id": "se:1", "kind": "pair"}, {"id": "arxiv:1", "kind": "document"}])
    metrics = no_document_metrics()
    assert metrics["documents"] == metrics["pairs"] == 0
    assert metrics["oracle"] == {"calls": 0, "cache_hits": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0}


@pytest.mark.parametrize("cap, asked, skipped", [(2, 2, 3), (0, 5, 0), (5, 5, 0), (9, 5, 0)])
def test_max_documents_caps_the_calls_and_counts_the_rest(tmp_path, cap, asked, skipped):
    docs = [doc(f"arxiv:{n}", f"P{n}") for n in (4, 0, 3, 1, 2)]
    backend = FixedPairs({f"P{n}": [(f"Q{n}a?", LONG), (f"Q{n}b?", LONG)] for n in range(5)})
    pairs, metrics = synthesize(docs, oracle(tmp_path, backend), params(max_documents=cap))
    assert len(backend.calls) == asked and metrics["documents"] == asked
    assert metrics["documents_skipped_by_cap"] == skipped and len(pairs) == 2 * asked
    assert sorted(backend.calls) == [f"arxiv:{n}" for n in range(asked)]  # the same documents every run
