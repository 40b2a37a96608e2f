"""evaluate's numerics (the probes and a test sample on the full-precision base too) and latency, through compare()
on the real embedded base with a tiny adapter; and the domain selection and side-by-side report."""

from __future__ import annotations

import dataclasses

from slmforge.domains import render, select, select_split
from slmforge.params import DomainParams
from tests.conftest import chat_row
from tests.evaluation.test_compare import params as eval_params
from tests.test_cli import make_adapter


def probe(i: int, answer: str) -> dict:
    row = chat_row(f"p{i}", "What is Lumen's default alpha?", f"It is {answer}.", origin="facts", answer=answer,
                   aliases=[])
    return row


def test_compare_reports_full_precision_sides_and_latency_apart(base_model, model_params, tmp_path, monkeypatch):
    from slmforge.evaluation.compare import compare
    from slmforge.evaluation.report import render as render_report
    from slmforge.params import NumericsParams

    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    adapter = make_adapter(base_model[0], tmp_path / "a", model_params, random_b=True, seed=3)
    tests = [chat_row("t1", "What is a p-value?", "The probability of data at least as extreme under the null."),
             chat_row("t2", "What is power?", "The chance to detect a real effect.")]
    params = dataclasses.replace(eval_params(), max_new_tokens=6, numerics=NumericsParams(True, 1), latency_queries=2)
    result = compare(test_rows=tests, probes=[probe(1, "0.025")], model_params=model_params, params=params,
                     max_len=128, base_dir=base_model[0], base_json=base_model[1], adapter_dir=adapter)
    numerics = result["numerics"]
    assert (numerics["probes"], numerics["test_items"]) == (1, 1)
    assert set(numerics["sides"]) == {"nf4", "nf4+adapter", "full", "full+adapter"}
    for side in numerics["sides"].values():
        assert side["probe_accuracy"] in (0.0, 1.0) and 0.0 <= side["rouge_l"] <= 1.0
    latency = result.pop("latency")
    for side in ("base", "tuned"):
        assert latency[side]["queries"] == 2 and 0 < latency[side]["median_s"] <= latency[side]["p95_s"]
        assert latency[side]["tokens_per_s"] > 0 and latency[side]["mean_new_tokens"] <= 6
    report = render_report(result, 2)
    assert "## Numerics" in report and "full precision: + adapter" in report and "metrics/runs/latency/" in report


def test_a_domain_selects_by_origin_source_tag_and_field():
    rows = [chat_row("a", "q", "r", origin="stackexchange", tags=["ab-testing"], site="stats"),
            chat_row("b", "q", "r", origin="tweets"), chat_row("c", "q", "r", origin="stackexchange", site="math")]
    rows[1]["source"] = "apify"
    pick = lambda **kw: [r["id"] for r in select(rows, DomainParams(**{"origins": [], "sources": [], "tags": [],  # noqa: E731
                                                                         "fields": {}, **kw}))]
    assert pick() == ["a", "b", "c"]
    assert pick(origins=["stackexchange"]) == ["a", "c"] and pick(sources=["apify"]) == ["b"]
    assert pick(tags=["ab-testing", "other"]) == ["a"] and pick(fields={"site": ["math", "x"]}) == ["c"]
    assert pick(origins=["stackexchange"], fields={"site": "stats"}) == ["a"]


def test_a_domain_without_training_rows_is_one_line():
    import pytest

    from slmforge.errors import UserError

    empty = DomainParams(origins=["finance"], sources=[], tags=[], fields={})
    with pytest.raises(UserError, match="domains.finance selects no train row"):
        select_split({"train": [chat_row("a", "q", "r")], "val": []}, "finance", empty)


def test_domains_report_puts_every_verdict_side_by_side():
    metric = {"mean_base": 0.1, "mean_tuned": 0.3}
    result = lambda v: {"verdict": v, "metric": "rouge_l", "reasons": [f"why {v}"],  # noqa: E731
                        "stats": {"n": 5, "relative_improvement": 2.0, "wilcoxon_p": 0.01},
                        "per_metric": {"rouge_l": metric}, "base": {"perplexity": 9.0}, "tuned": {"perplexity": 7.0}}
    d = lambda o: DomainParams(origins=[o], sources=[], tags=[], fields={})  # noqa: E731
    md = render({"stats": result("DEPLOY"), "tweets": result("FAIL")}, {"stats": d("stackexchange"), "tweets": d("tweets")})
    lines = md.splitlines()
    assert any(line.startswith("| stats | origins stackexchange | **DEPLOY** |") for line in lines)
    assert any(line.startswith("| tweets | origins tweets | **FAIL** |") for line in lines)
    assert "- **tweets**: why FAIL." in md
