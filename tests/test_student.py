"""The student scorer: the head's shape, the loss, truncation, training on the real embedded model (it learns
the oracle's scores), loading with plain transformers + peft, `slmforge score`, and the verdict rules."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.errors import UserError
from slmforge.params import RubricParams, ScorerParams, ScorerVerdictParams, build, compose
from slmforge.student_eval import compare, evaluate, plot_rows, report_markdown, verdict
from slmforge.student import encode, load_scorer, load_scorer_base, predict, record_text, targets, train_scorer
from tests.conftest import chat_row

ROOT = Path(__file__).resolve().parents[1]
RUBRIC = build(RubricParams, compose(ROOT / "conf")["rubric"], "rubric")
DIMS = list(RUBRIC.dimensions)


def tiny_params(**overrides) -> ScorerParams:
    data = compose(ROOT / "conf", ["scorer=tiny"])["scorer"]  # tiny.yaml overrides the default profile
    return build(ScorerParams, {**data, **overrides}, "scorer")


def rows_and_labels(n: int) -> tuple[list[dict], dict[str, dict]]:
    """On-topic rows the "oracle" scored 8-9, off-topic ones it scored 1-2: a pattern the scorer can learn."""
    rows, labels = [], {}
    for k in range(n):
        if k % 2 == 0:
            row = chat_row(f"on{k}", f"How many users does an A/B test need for power {k}?",
                           "Compute the sample size from the baseline rate, the minimum detectable effect and power.")
            scores = {"relevance": 9.0, "correctness": 8.0, "helpfulness": 8.0 + (k % 3) / 3}
        else:
            row = chat_row(f"off{k}", f"What is a good pasta recipe number {k}?", "Boil water, add salt and pasta.")
            scores = {"relevance": 1.0, "correctness": 2.0, "helpfulness": 1.0 + (k % 3) / 3}
        rows.append(row)
        labels[row["id"]] = {"id": row["id"], "scores": scores}
    return rows, labels


@pytest.fixture(scope="module")
def trained(base_model, tmp_path_factory):
    base_dir, base_json = base_model
    rows, labels = rows_and_labels(40)
    out = tmp_path_factory.mktemp("scorer")
    from slmforge.params import ModelParams
    model_params = build(ModelParams, compose(ROOT / "conf")["model"], "model")
    params = tiny_params(max_steps=14, lr=1e-3, eval_steps=7, max_train_examples=0)
    summary = train_scorer(train_rows=rows[:32], val_rows=rows[32:], labels=labels, rubric=RUBRIC,
                           model_params=model_params, params=params, base_dir=base_dir, base_json=base_json,
                           out_dir=out / "scorer", metrics_dir=out / "metrics", checkpoint_dir=out / "ckpt")
    return {"dir": out / "scorer", "base": base_dir, "pin": base_json, "rows": rows, "labels": labels,
            "summary": summary, "metrics": out / "metrics", "model_params": model_params}


def test_the_head_has_one_output_per_dimension_and_the_loss_is_mse(base_model, model_params):
    import torch

    model, tokenizer = load_scorer_base(model_params, *base_model, n_outputs=len(DIMS), for_training=False)
    assert model.score.out_features == len(DIMS) and model.config.problem_type == "regression"
    enc = tokenizer(["an A/B test question", "a longer text about pasta and salt"], return_tensors="pt", padding=True)
    labels = torch.tensor([[0.9, 0.8, 0.8], [0.1, 0.2, 0.1]])
    out = model(**enc, labels=labels)
    assert out.logits.shape == (2, len(DIMS))
    assert out.loss.item() == pytest.approx(torch.mean((out.logits.float() - labels) ** 2).item(), rel=1e-2)


def test_truncation_keeps_the_head_and_the_tail(tokenizer):
    text = " ".join(f"w{i}" for i in range(300))
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = encode(tokenizer, text, 10, 5)
    assert ids == full[:10] + full[-5:]
    assert encode(tokenizer, "short", 10, 5) == tokenizer("short", add_special_tokens=False)["input_ids"]


def test_record_text_and_targets():
    row = chat_row("a", "Q?", "A.")
    assert record_text(row) == "USER: Q?\n\nASSISTANT: A."  # the system turn is ours, not the record's
    assert record_text({"id": "r", "prompt": "Q?", "response": "A."}) == "USER: Q?\n\nASSISTANT: A."
    assert record_text({"id": "d", "text": "A document."}) == "A document."
    with pytest.raises(UserError, match="'x' has no messages"):
        record_text({"id": "x"})
    assert targets({"scores": {"relevance": 10, "correctness": 0, "helpfulness": 5}}, RUBRIC) == [1.0, 0.0, 0.5]


def test_training_learns_the_oracles_scores(trained):
    model, tokenizer, card = load_scorer(trained["dir"], trained["base"], trained["pin"])
    assert card["dimensions"] == DIMS and card["head_tokens"] == 48
    preds = predict(model, tokenizer, trained["rows"], card, batch_size=8)
    result = compare(preds, trained["labels"], RUBRIC)
    # an untrained head is around the middle of the scale; the trained one separates on- from off-topic rows
    on = [p["overall"] for p in preds if p["id"].startswith("on")]
    off = [p["overall"] for p in preds if p["id"].startswith("off")]
    assert min(on) > max(off), (on, off)
    assert result["mae"] < 2.5 and result["overall"]["spearman"] > 0.7, result
    assert all(p["tier"] in RUBRIC.tiers or p["tier"] == "reject" for p in preds)
    assert (trained["metrics"] / "metrics.json").exists()  # dvclive's summary
    assert trained["summary"]["train_examples"] == 32 and trained["summary"]["best_step"] in (7, 14)


def test_the_scorer_loads_with_plain_transformers_and_peft_in_a_fresh_process(trained):
    model, tokenizer, card = load_scorer(trained["dir"], trained["base"], trained["pin"])
    row = trained["rows"][0]
    expected = predict(model, tokenizer, [row], card, batch_size=1)[0]["scores"]["relevance"]
    script = f"""
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
tok = AutoTokenizer.from_pretrained({str(trained['dir'])!r})
base = AutoModelForSequenceClassification.from_pretrained({str(trained['base'])!r}, num_labels=3, dtype=torch.float32)
base.config.pad_token_id = tok.pad_token_id
model = PeftModel.from_pretrained(base, {str(trained['dir'])!r}).eval()
ids = tok({json.dumps(record_text(row))}, add_special_tokens=False, return_tensors="pt")
print(float(model(**ids).logits[0, 0].clamp(0, 1)) * 10)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    # fp32 here against the 4-bit base the scorer was trained on: close, not identical
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(expected, abs=1.0)


def test_slmforge_score_scores_a_file(trained, tmp_path):
    src = tmp_path / "holdout.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in trained["rows"][:5]))
    out = tmp_path / "scores.jsonl"
    cmd = [sys.executable, "-m", "slmforge.cli", "score", str(src), "--out", str(out), "--scorer", str(trained["dir"]),
           "--base", str(trained["base"]), "--pin", str(trained["pin"]), "--batch-size", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in scored] == [r["id"] for r in trained["rows"][:5]]
    assert all(set(s["scores"]) == set(DIMS) and s["tier"] and 0 <= s["overall"] <= 10 for s in scored)
    assert "scored 5 records" in done.stdout
    missing = subprocess.run([*cmd[:4], str(tmp_path / "nope.jsonl"), *cmd[5:]], capture_output=True, text=True,
                             timeout=300)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode == 1 and len(errors) == 1 and "no such file" in errors[0]


def test_a_missing_scorer_is_a_one_line_error(tmp_path, base_model):
    with pytest.raises(UserError, match="dvc repro train_scorer"):
        load_scorer(tmp_path, *base_model)


def pred(id_, scores):
    from slmforge.labeling import overall_score, tier_of
    overall = overall_score(scores, RUBRIC)
    return {"id": id_, "scores": scores, "overall": overall, "tier": tier_of(overall, RUBRIC)}


def test_compare_against_hand_computed_errors():
    labels = {"a": {"scores": {"relevance": 8.0, "correctness": 6.0, "helpfulness": 4.0}},
              "b": {"scores": {"relevance": 2.0, "correctness": 2.0, "helpfulness": 2.0}},
              "c": {"scores": None}}  # the oracle failed on it: left out
    preds = [pred("a", {"relevance": 7.0, "correctness": 6.0, "helpfulness": 6.0}),
             pred("b", {"relevance": 2.0, "correctness": 4.0, "helpfulness": 2.0}),
             pred("c", {"relevance": 5.0, "correctness": 5.0, "helpfulness": 5.0})]
    r = compare(preds, labels, RUBRIC)
    diffs = [-1, 0, 2, 0, 2, 0]
    assert r["n"] == 2 and r["mae"] == pytest.approx(5 / 6)
    assert r["rmse"] == pytest.approx(math.sqrt(sum(d * d for d in diffs) / 6))
    assert r["per_dimension"]["relevance"]["mae"] == pytest.approx(0.5)
    assert r["per_dimension"]["helpfulness"]["rmse"] == pytest.approx(math.sqrt(2))
    assert r["per_dimension"]["correctness"]["spearman"] == pytest.approx(1.0)
    assert sum(sum(row.values()) for row in r["confusion"].values()) == 2
    assert plot_rows(preds, labels, DIMS)[0] == {"id": "a", "dimension": "relevance", "oracle": 8.0, "predicted": 7.0}


V = ScorerVerdictParams(deploy_mae=1.0, deploy_rmse=1.5, deploy_max_dimension_mae=2.0, deploy_max_gap=0.2, fail_mae=1.2)


def result(mae, rmse=1.0, dims=(0.5, 0.5, 0.5), n=10):
    return {"n": n, "mae": mae, "rmse": rmse, "per_dimension": {d: {"mae": m} for d, m in zip(DIMS, dims)}}


@pytest.mark.parametrize("test,val,expected", [
    (result(0.8), result(0.7), "DEPLOY"),
    (result(0.8), result(0.5), "REVIEW"),  # the gap: 0.3
    (result(0.8, rmse=1.5), result(0.8), "REVIEW"),  # RMSE at the threshold is not under it
    (result(0.8, dims=(0.5, 2.1, 0.5)), result(0.8), "REVIEW"),  # one dimension far off
    (result(1.0), result(1.0), "REVIEW"),  # MAE at the threshold
    (result(1.2), result(1.2), "REVIEW"),  # not above fail_mae
    (result(1.21), result(1.2), "FAIL"),
    (result(float("nan"), n=0), result(0.5), "FAIL"),  # nothing measured
])
def test_verdict_rules(test, val, expected):
    decision, reasons, _ = verdict(test, val, V)
    assert decision == expected, reasons
    assert len(reasons) >= 4


def test_a_scorer_no_better_than_the_train_mean_is_not_deployed():
    decision, reasons, _ = verdict(result(0.8), result(0.7), V, baseline=result(0.75))
    assert decision == "REVIEW" and "no better than predicting the train mean (MAE 0.750)" in reasons
    assert verdict(result(0.8), result(0.7), V, baseline=result(0.9))[0] == "DEPLOY"


def test_the_mean_baseline_predicts_the_train_means():
    from slmforge.student_eval import mean_baseline
    labels = {"a": {"scores": {"relevance": 8.0, "correctness": 6.0, "helpfulness": 4.0}},
              "b": {"scores": {"relevance": 2.0, "correctness": 2.0, "helpfulness": 2.0}}, "c": {"scores": None}}
    (p,) = mean_baseline(["a", "b", "c"], labels, RUBRIC, ["t"])
    assert p["id"] == "t" and p["scores"] == {"relevance": 5.0, "correctness": 4.0, "helpfulness": 3.0}


def test_evaluate_carries_the_oracles_noise_and_a_report():
    labels = {"a": {"scores": {"relevance": 8.0, "correctness": 6.0, "helpfulness": 4.0}}}
    p = [pred("a", {"relevance": 7.5, "correctness": 6.0, "helpfulness": 4.5})]
    calibration = {"sample": {"self_consistency_mad": 0.4, "self_consistency_mad_by_dimension": {"relevance": 0.3},
                              "self_consistency_n": 10}}
    r = evaluate(p, p, labels, RUBRIC, V, calibration, [pred("a", {d: 5.0 for d in DIMS})])
    assert r["verdict"] == "DEPLOY" and r["oracle_noise"]["self_consistency_mad"] == 0.4
    assert r["mean_baseline"]["mae"] == pytest.approx((3 + 1 + 1) / 3)
    text = report_markdown(r)
    assert "train split's mean score" in text
    assert text.startswith("# Student scorer against the oracle: **DEPLOY**") and "| relevance |" in text
