"""The benchmarks' own arithmetic and the sections that need no pipeline outputs, run small and for real."""

import math

import numpy as np
import pytest

from bench import __main__ as runner
from bench import pipeline
from bench.common import exponent, median, summary


def test_exponent_reads_a_power_law():
    assert exponent(1.0, 4.0) == pytest.approx(1.0)
    assert exponent(2.0, 32.0) == pytest.approx(2.0)
    assert exponent(3.0, 3.0 * 4 ** 1.3) == pytest.approx(1.3)


def test_summary_keeps_every_run_beside_the_median():
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "runs": [3.0, 1.0, 2.0]}
    assert median([1.0, 10.0, 2.0, 3.0]) == 2.5


def test_a_param_change_keeps_the_type_and_changes_the_value():
    for value in (True, 3, 0.5, "sonnet", ["a"], [], None):
        new = pipeline.changed(value)
        assert new != value
        assert value is None or type(new) is type(value)
    params = {"train": {"lr": 2e-4, "nested": {"k": 1}}, "model": {"name": "x"}}
    assert pipeline.leaf(params, "train") == "train.lr"
    assert pipeline.leaf(params, "train.nested") == "train.nested.k"
    pipeline.set_key(params, "train.nested.k")
    assert params["train"]["nested"]["k"] == 2


def test_the_table_marks_each_goal_met_or_not_and_the_readme_block_is_replaced(tmp_path, monkeypatch):
    results = {"train.speedup_vs_naive": 2.5, "train.fraction_of_ceiling": 0.5, "dvc.only_downstream_executed": True,
               "train.loss_delta_vs_naive": 0.01, "train.loss_within_noise": True, "train.loss_noise": 0.03,
               "machine": "test box", "runs": 3}
    text = runner.table(results)
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    assert "| yes |" in rows["train.speedup_vs_naive"] and "**no**" in rows["train.fraction_of_ceiling"]
    assert "within noise (0.03)" in rows["train.loss_delta_vs_naive"] and "| yes |" in rows["train.loss_delta_vs_naive"]
    assert "| true |" in rows["dvc.only_downstream_executed"]
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    monkeypatch.setattr(runner, "README", readme)
    runner.write_readme(results)
    runner.write_readme({**results, "train.fraction_of_ceiling": 0.9})
    out = readme.read_text()
    assert out.startswith("# Benchmarks\n\nintro\n") and out.count("<!-- results:start -->") == 1
    assert "| `train.fraction_of_ceiling` | 0.9 | >= 0.8 | yes |" in out


def test_planted_near_duplicates_are_what_semantic_dedup_finds():
    from bench.curation import planted_vectors
    from slmforge.curation.dedup import semantic_duplicates

    emb = planted_vectors(2000, dup_share=0.05, seed=3)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    found = semantic_duplicates(emb, list(range(len(emb))), 0.9, 512)
    assert 0.9 * 100 <= len(found) <= 100  # 100 planted; a copy of a copy may point at either
    assert all(sim >= 0.9 for _, sim in found.values())


def test_oracle_bench_warm_rerun_makes_no_call_through_a_real_client_and_server():
    from bench.oracle import bench

    out = bench(records=40, runs=1)
    assert out["oracle.cold_calls"] > 30  # every distinct record asked once (exact copies share a key)
    assert out["oracle.warm_calls"] == 0
    assert out["oracle.warm_s_per_1k"] < out["oracle.cold_s_per_1k"]
    assert math.isfinite(out["oracle.warm_speedup_vs_cold"])


def test_clean_throughput_section_loses_no_record():
    from bench.curation import clean_throughput
    from slmforge.curation import toxicity
    from slmforge.params import CleanParams, build, compose
    from tests.conftest import ROOT

    params = build(CleanParams, compose(ROOT / "conf")["clean"], "clean")
    out = clean_throughput([400], 1, params, toxicity.load_scorer(params.toxicity))
    part = out["curation.clean_400"]
    assert out["curation.clean_records_per_s_400"] > 0
    assert part["kept"] + sum(part["reasons"].values()) >= 400  # a rejected record may carry several reasons
    assert part["reasons"].get("duplicate_exact", 0) > 0 and part["seconds_by_part"]["dedup_semantic"] == 0.0
