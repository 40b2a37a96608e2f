"""Tuned against base on the same test items and probes: generations, per-item metrics, the pairwise judge,
paired statistics with a verdict, a breakdown by source, and overfitting diagnostics from training."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from slmforge.adapter_folder import adapter_sha, check_card_template, read_adapter_card
from slmforge.chat_tokens import tokenize_within
from slmforge.evaluation import numerics
from slmforge.evaluation.generate import generate, prompt_messages, reference, score_references
from slmforge.evaluation.judge import judge_items, outcome_score
from slmforge.evaluation.metrics import (aggregate, delta, format_ok, hallucinated, mean_or_nan, per_group,
                                         probe_match, rouge_l)
from slmforge.evaluation.stats import paired_stats, verdict, win_rate
from slmforge.errors import UserError
from slmforge.params import EvalParams, ModelParams
from slmforge.templates import strip_think

TRAIN_HINT = "run `dvc repro train` first"

# Per-item metrics the statistics are computed on: name -> (kind of item, higher is better).
PAIRED = {"rouge_l": ("test", True), "nll": ("test", False), "token_accuracy": ("test", True),
          "judge": ("test", True), "correct": ("probe", True), "hallucinated": ("probe", False)}
BREAKDOWN = ["rouge_l", "nll", "token_accuracy", "judge", "correct", "hallucinated", "format_ok", "eos", "length"]


def evaluate_model(model, tokenizer, test_rows: list[dict], probes: list[dict], params: EvalParams,
                   max_len: int, label: str, cache_id: tuple[str, str | None],
                   template_kwargs: dict | None = None) -> tuple[dict, list[dict]]:
    scores = score_references(model, tokenizer, test_rows, max_len, params.batch_size, desc=f"{label} ppl",
                              template_kwargs=template_kwargs)
    gen = generate(model, tokenizer, [prompt_messages(r) for r in [*test_rows, *probes]], params.max_new_tokens,
                   params.batch_size, desc=f"{label} generate", cache_id=cache_id, template_kwargs=template_kwargs)
    thinking = sum(strip_think(g["text"]) != g["text"] for g in gen)
    if params.strip_think:  # metrics and the judge read the answer, not the reasoning before it
        gen = [{**g, "text": strip_think(g["text"])} for g in gen]
    test_gen, probe_gen = gen[: len(test_rows)], gen[len(test_rows):]
    rouge = [rouge_l(g["text"], reference(r)) for g, r in zip(test_gen, test_rows)]
    ok = [probe_match(g["text"], p["meta"]["answer"], p["meta"].get("aliases", [])) for g, p in zip(probe_gen, probes)]
    bad = [hallucinated(g["text"], p["meta"]["answer"], p["meta"].get("aliases", []), params.abstain_markers)
           for g, p in zip(probe_gen, probes)]
    common = lambda g, r: {"generation": g["text"], "length": g["tokens"], "eos": float(g["eos"]),  # noqa: E731
                           "format_ok": _float(format_ok(g["text"], reference(r), params.units))}
    items = [{"id": r["id"], "kind": "test", "source": r["source"], "origin": r["meta"].get("origin"),
              **common(g, r), "rouge_l": x, "ref_tokens": s["tokens"],
              # a reference cut away entirely by max_len has no score (None), not a perfect one
              "nll": s["nll"] / s["tokens"] if s["tokens"] else None,
              "token_accuracy": s["correct"] / s["tokens"] if s["tokens"] else None}
             for r, g, x, s in zip(test_rows, test_gen, rouge, scores)]
    items += [{"id": p["id"], "kind": "probe", "source": p["source"], "origin": "facts", **common(g, p),
               "correct": float(c), "hallucinated": float(h)} for p, g, c, h in zip(probes, probe_gen, ok, bad)]
    summary = aggregate(scores, rouge, ok, bad)
    summary.update({"mean_length": mean_or_nan([i["length"] for i in items]),
                    "eos_rate": mean_or_nan([i["eos"] for i in items]),
                    "format_compliance": mean_or_nan([i["format_ok"] for i in items]),
                    "generations_cached": sum(g["cached"] for g in gen),
                    "answers_with_thinking": thinking})
    # Accounting to the end: every test row's reference is scored whole, cut short by max_len, or cut away
    # (no token left: its nll is None and it counts in no mean); rows_in = scored + answer_truncated_away.
    fates = Counter(tokenize_within(tokenizer, r["messages"], max_len, template_kwargs)[1] for r in test_rows)
    summary["references"] = {"rows_in": len(test_rows), "scored": sum(1 for s in scores if s["tokens"]),
                             "truncated": fates["truncated"], "answer_truncated_away": fates["answer_truncated_away"]}
    return summary, items


def _float(x: bool | None) -> float | None:
    return None if x is None else float(x)


def overfitting(card_metrics: dict) -> dict:
    """From the training log the adapter carries: the train/validation gap on rows an epoch shows once, and the
    last step's validation loss (logged before the best checkpoint was restored) against the best."""
    c = card_metrics
    best, last = c.get("best_eval_loss"), c.get("last_eval_loss")
    return {
        "train_eval_gap": c.get("train_eval_gap"), "overfit_flag": bool(c.get("overfit_flag")),
        "train_once_loss": c.get("train_once_loss"), "train_once_rows": c.get("train_once_rows"),
        "best_step": c.get("best_step"), "last_step": c.get("last_step"), "stopped_early": c.get("stopped_early"),
        "best_eval_loss": best, "last_eval_loss": last,
        "last_minus_best_eval_loss": None if best is None or last is None else last - best,
    }


def overfit_policy(headline: dict, over: dict, on_overfit: str) -> dict:
    """eval.verdict.on_overfit: `report` leaves the verdict alone; `review` turns a DEPLOY into REVIEW; `fail`
    fails the model. Either way an overfit flag is one of the reasons."""
    if on_overfit not in ("report", "review", "fail"):
        raise UserError(f"params.yaml: eval.verdict.on_overfit must be report, review or fail, got {on_overfit!r}")
    if not over["overfit_flag"]:
        return headline
    reason = (f"overfit: the train/validation loss gap {over['train_eval_gap']:+.3f} on {over['train_once_rows']} "
              f"training rows seen once is above train.gap_threshold (eval.verdict.on_overfit={on_overfit})")
    verdict = headline["verdict"]
    if on_overfit == "fail" or (on_overfit == "review" and verdict == "DEPLOY"):
        verdict = "FAIL" if on_overfit == "fail" else "REVIEW"
    return {**headline, "verdict": verdict, "reasons": headline["reasons"] + [reason]}


def statistics(items: list[dict], params: EvalParams, judge_summary: dict | None) -> tuple[dict, dict]:
    """(paired statistics of every per-item metric, the headline stats and verdict)."""
    per_metric = {}
    for name, (kind, higher) in PAIRED.items():
        pairs = [(i["base"][name], i["tuned"][name]) for i in items
                 if i["kind"] == kind and i["base"].get(name) is not None and i["tuned"].get(name) is not None]
        if pairs:
            per_metric[name] = paired_stats([b for b, _ in pairs], [t for _, t in pairs], higher_is_better=higher,
                                            n_boot=params.bootstrap, seed=params.seed)
    outcomes = [i["judge"]["outcome"] for i in items if i.get("judge") and i["judge"]["outcome"] is not None]
    judge = win_rate(outcomes, n_boot=params.bootstrap, seed=params.seed) if outcomes else None
    v = params.verdict
    if v.metric not in per_metric:
        kind = PAIRED.get(v.metric, ("", True))[0]
        why = ("eval.judge.enabled is false" if v.metric == "judge" and judge_summary is None else
               "the judge answered no item" if v.metric == "judge" else
               f"this run has no {kind} items (data/split/{'test' if kind == 'test' else 'probes'}.jsonl is empty)"
               if kind else f"pick one of {sorted(PAIRED)}")
        raise UserError(f"eval.verdict.metric={v.metric!r} has no paired values: {why}")
    primary = per_metric[v.metric]
    extra = []
    informative = judge
    if judge and judge_summary and judge_summary["inconsistency"] > params.judge.max_inconsistency:
        # Its verdicts follow the answers' order, not their content: a tie by construction, not evidence.
        informative = None
        extra = [f"judge left out: its verdict changed with the answers' order on "
                 f"{judge_summary['inconsistency']:.0%} of items (eval.judge.max_inconsistency "
                 f"{params.judge.max_inconsistency:.0%})"]
    elif judge_summary and not judge:
        extra = [f"judge unavailable: 0 of {judge_summary['items']} items judged"]
    decision, reasons = verdict(primary, p_max=v.p_max, min_effect=v.min_effect,
                                min_improvement=v.min_improvement, judge=informative)
    reasons = reasons + extra
    nan = float("nan")
    headline = {
        "verdict": decision, "reasons": reasons, "metric": v.metric,
        "stats": {
            "n": primary["n"], "mean_delta": primary["mean_delta"], "delta_ci_low": primary["delta_ci_low"],
            "delta_ci_high": primary["delta_ci_high"], "wilcoxon_p": primary["wilcoxon_p"],
            "mannwhitney_p": primary["mannwhitney_p"], "cohens_d": primary["cohens_d"],
            "cliffs_delta": primary["cliffs_delta"], "relative_improvement": primary["relative_improvement"],
            "judge_win_rate": judge["win_rate"] if judge else nan,
            "judge_win_rate_ci_low": judge["win_rate_ci_low"] if judge else nan,
            "judge_win_rate_ci_high": judge["win_rate_ci_high"] if judge else nan,
            "judge_inconsistency": judge_summary["inconsistency"] if judge_summary else nan,
            "judge_first_position_preference": judge_summary["first_position_preference"] if judge_summary else nan,
        },
        "judge": {**judge_summary, **(judge or {}), "in_verdict": informative is not None} if judge_summary else None,
    }
    return per_metric, headline


def compare(*, test_rows: list[dict], probes: list[dict], model_params: ModelParams, params: EvalParams,
            max_len: int, base_dir: Path, base_json: Path, adapter_dir: Path,
            oracle=None, domain: str = "") -> dict:
    """Evaluate the base, then the same weights with the adapter attached, on identical inputs; then judge,
    test and decide."""
    import torch
    from peft import PeftModel
    from transformers import set_seed

    from slmforge.modeling import load_base, model_fingerprint, set_threads
    from slmforge.templates import check_template

    set_threads()
    set_seed(params.seed)
    card = read_adapter_card(adapter_dir, TRAIN_HINT)
    if params.max_test_items:
        test_rows = test_rows[: params.max_test_items]
    if params.max_probes:
        probes = probes[: params.max_probes]
    model, tokenizer = load_base(model_params, base_dir, base_json)
    kwargs = model_params.chat_template_kwargs
    check_template(tokenizer, kwargs)
    check_card_template(card, tokenizer, adapter_dir, base_dir, TRAIN_HINT, kwargs)
    pin = json.loads(Path(base_json).read_text()) if Path(base_json).exists() else None
    fingerprint = (f"{model_fingerprint(Path(base_dir), pin)}|4bit={model_params.load_in_4bit}|"
                   f"{model_params.compute_dtype}|{'cuda' if torch.cuda.is_available() else 'cpu'}")
    base, base_items = evaluate_model(model, tokenizer, test_rows, probes, params, max_len, "base", (fingerprint, None),
                                      kwargs)
    timed = test_rows or probes  # latency: wall-clock facts, returned apart from the result (metrics/runs/latency/)
    latency = {"base": numerics.latency(model, tokenizer, timed, params.max_new_tokens, params.latency_queries,
                                       kwargs)}
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    tuned, tuned_items = evaluate_model(model, tokenizer, test_rows, probes, params, max_len, "tuned",
                                        (fingerprint, adapter_sha(adapter_dir)), kwargs)
    latency["tuned"] = numerics.latency(model, tokenizer, timed, params.max_new_tokens, params.latency_queries,
                                       kwargs)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    items = []
    refs = {r["id"]: r for r in [*test_rows, *probes]}
    for b, t in zip(base_items, tuned_items):
        row = refs[b["id"]]
        keep = lambda d: {k: v for k, v in d.items() if k not in ("id", "kind", "source", "origin")}  # noqa: E731
        items.append({"id": b["id"], "kind": b["kind"], "source": b["source"], "origin": b["origin"],
                      "question": prompt_messages(row)[-1]["content"], "reference": reference(row),
                      "expected": row["meta"].get("answer"), "base": keep(b), "tuned": keep(t)})
    judge_summary = None
    if params.judge.enabled and oracle is not None:
        tests = [i for i in items if i["kind"] == "test"]
        judged, judge_summary = judge_items(tests, oracle, domain, params.judge)
        by_id = {j["id"]: j for j in judged}
        for item in tests:
            if item["id"] in by_id:
                item["judge"] = by_id[item["id"]]
                score = outcome_score(by_id[item["id"]]["outcome"])
                item["tuned"]["judge"] = score
                item["base"]["judge"] = None if score is None else 1.0 - score
    per_metric, headline = statistics(items, params, judge_summary)
    over = overfitting(card.get("metrics", {}))
    headline = overfit_policy(headline, over, params.verdict.on_overfit)
    if params.numerics.enabled:
        rows = numerics.numerics_rows(test_rows, probes, params)
        full = numerics.full_precision(model_params, base_dir, base_json, adapter_dir, rows, params, fingerprint,
                                       adapter_sha(adapter_dir))
        headline["numerics"] = numerics.numerics_summary(rows, items, full)
    result = {
        **headline, "base": base, "tuned": tuned, "delta": delta(base, tuned), "per_metric": per_metric,
        "per_source": per_group(items, BREAKDOWN), "overfitting": over,
        "template_sha256": card["template_sha256"], "items": items, "latency": latency,
    }
    if oracle is not None:
        result.update(oracle.metrics())
    return result


def plot_rows(result: dict) -> tuple[list[dict], list[dict]]:
    """(per-source bars, judge outcomes) for `dvc plots`: one row per (source, metric, model), and the counts of
    each judge outcome."""
    bars = []
    for group, entry in result["per_source"].items():
        for side in ("base", "tuned"):
            for metric, value in entry[side].items():
                if not (isinstance(value, float) and math.isnan(value)):
                    bars.append({"source": group, "metric": metric, "model": side, "value": value, "n": entry["n"]})
    j = result.get("judge") or {}
    # "tie": the same verdict in both orders (identical answers included); "flips with order": any change
    judge = [{"outcome": "tuned wins", "count": j.get("tuned_wins", 0)},
             {"outcome": "base wins", "count": j.get("base_wins", 0)},
             {"outcome": "tie", "count": j.get("ties_both_orders", 0)},
             {"outcome": "flips with order", "count": j.get("flips_with_order", 0) + j.get("tie_in_one_order", 0)}]
    return bars, judge
