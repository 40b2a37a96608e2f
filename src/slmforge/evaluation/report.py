"""reports/eval.md: the verdict first, then the paired statistics with intervals, the judge, the breakdown by
source, overfitting, and side-by-side examples a person can read."""

from __future__ import annotations

import math

from slmforge.evaluation import numerics

# Per-item metrics in the table: name -> (label, higher is better).
ROWS = {"rouge_l": ("ROUGE-L (test)", True), "nll": ("NLL per token of the reference (test)", False),
        "token_accuracy": ("token accuracy (test)", True), "judge": ("judge score (test; win 1, tie 0.5)", True),
        "correct": ("probe accuracy", True), "hallucinated": ("hallucination rate (probes)", False)}


def _num(x, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def _p(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def _cell(text, width: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def overfitting_line(o: dict) -> str:
    """The report's second paragraph: the overfit flag, the gap and early stopping, in one line."""
    stop = (f"early stopping ended the run at step {o.get('last_step')}" if o.get("stopped_early")
            else f"the run went to its last step, {o.get('last_step')}")
    return (f"Overfitting: **{'flagged' if o.get('overfit_flag') else 'not flagged'}**: train/validation loss gap "
            f"{_num(o.get('train_eval_gap'), '+.3f')} on {o.get('train_once_rows')} training rows seen once; "
            f"validation loss at the last step {_num(o.get('last_eval_loss'))} against the best "
            f"{_num(o.get('best_eval_loss'))} (step {o.get('best_step')}); {stop}.")


def render(result: dict, n_examples: int = 10) -> str:
    s, base, tuned = result["stats"], result["base"], result["tuned"]
    lines = [
        f"# Evaluation: **{result['verdict']}**",
        "",
        f"Verdict on `{result['metric']}` over {s['n']} paired items: " + "; ".join(result["reasons"]) + ".",
        "",
        overfitting_line(result["overfitting"]),
        "",
        f"Mean delta {_num(s['mean_delta'])} (95% CI {_num(s['delta_ci_low'])} to {_num(s['delta_ci_high'])}), "
        f"Wilcoxon p {_p(s['wilcoxon_p'])}, Mann-Whitney p {_p(s['mannwhitney_p'])}, Cohen's d {_num(s['cohens_d'], '+.3f')}, "
        f"Cliff's delta {_num(s['cliffs_delta'], '+.3f')}, relative improvement {_num(s['relative_improvement'], '+.1%')}. "
        f"Judge win rate {_num(s['judge_win_rate'], '.3f')} (95% CI {_num(s['judge_win_rate_ci_low'], '.3f')} to "
        f"{_num(s['judge_win_rate_ci_high'], '.3f')}; 0.5 is parity).",
        "",
        "## Paired statistics (tuned against base on the same items)",
        "",
        "| metric | n | base | tuned | delta [95% CI] | Wilcoxon p | Cohen's d | Cliff's δ | rel. improvement |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, (label, higher) in ROWS.items():
        m = result["per_metric"].get(name)
        if not m:
            continue
        lines.append(f"| {label} ({'higher' if higher else 'lower'} is better) | {m['n']} | {_num(m['mean_base'])} | "
                     f"{_num(m['mean_tuned'])} | {_num(m['mean_delta'], '+.4f')} [{_num(m['delta_ci_low'], '+.4f')}, "
                     f"{_num(m['delta_ci_high'], '+.4f')}] | {_p(m['wilcoxon_p'])} | {_num(m['cohens_d'], '+.3f')} | "
                     f"{_num(m['cliffs_delta'], '+.3f')} | {_num(m['relative_improvement'], '+.1%')} |")
    lines += ["", "Effect sizes are oriented: positive means the tuned model is better.", "",
              "Aggregates over all tokens or items (perplexity and token accuracy pooled over every reference token, "
              "so they differ from the per-item means above):", "", "| aggregate | base | tuned |", "|---|---:|---:|"]
    for key in ("perplexity", "token_accuracy", "rouge_l", "probe_accuracy", "hallucination_rate", "format_compliance",
                "eos_rate", "mean_length"):
        lines.append(f"| {key} | {_num(base.get(key))} | {_num(tuned.get(key))} |")
    j = result.get("judge")
    if j:
        lines += ["", "## Judge (pairwise, both orders)", "",
                  f"{j['items']} test items, each asked base-first and tuned-first; {j['failed']} could not be judged. "
                  f"Identical answers (a tie, not asked) {j['identical']}. Tuned wins {j['tuned_wins']}, base wins "
                  f"{j['base_wins']}, ties in both orders {j['ties_both_orders']}; counted as ties because the verdict "
                  f"changed with the order: winner swapped {j['flips_with_order']}, a win in one order and a tie in the "
                  f"other {j['tie_in_one_order']}. Inconsistency {_num(j['inconsistency'], '.2f')} of the items asked; "
                  f"the first position was preferred in {_num(j['first_position_preference'], '.0%')} of the decided "
                  f"order-verdicts (50% is no position bias). Sign test p {_p(j.get('sign_test_p'))}. "
                  + ("The judge's win rate is part of the verdict." if j.get("in_verdict") else
                     "**The judge is left out of the verdict** (see the reasons above).")
                  # what the judge's calls cost is a fact of the run (none when its answers were cached), not of its
                  # inputs: in metrics/runs/evaluate/ and reports/cost.md, never in this cached report
                  + (f" Judge: {oc.get('backend')} / {oc.get('model')}; its calls and cost this run: "
                     "`metrics/runs/evaluate/<domain>.json`, reports/cost.md." if (oc := result.get("oracle")) else "")]
    lines += ["", "## By source", "", "| source | n | metric | base | tuned |", "|---|---:|---|---:|---:|"]
    for group, entry in result["per_source"].items():
        for key in entry["base"]:
            lines.append(f"| {group} | {entry['n']} | {key} | {_num(entry['base'][key])} | {_num(entry['tuned'].get(key))} |")
    o = result["overfitting"]
    lines += ["", "## Overfitting (from the training log)", "",
              f"Validation loss of the saved adapter (the best checkpoint) {_num(o.get('best_eval_loss'))} at step "
              f"{o.get('best_step')}; at the last step, {o.get('last_step')}, before the best was restored: "
              f"{_num(o.get('last_eval_loss'))} (last - best {_num(o.get('last_minus_best_eval_loss'), '+.4f')}). "
              f"Loss on {o.get('train_once_rows')} training rows an epoch shows once (facts repeated by "
              f"train.origin_weights left out) {_num(o.get('train_once_loss'))}; gap {_num(o.get('train_eval_gap'), '+.3f')}."]
    lines += numerics.render(result.get("numerics"))
    lines += ["", "Generation latency per query (median, p95) and tokens/s, base and tuned, are wall-clock facts of the "
              "machine: they are in `metrics/runs/latency/<domain>.json` (a run fact), not in this report, which "
              "is a cached output and a function of the run's inputs only."]
    tests = [i for i in result["items"] if i["kind"] == "test"]
    probes = [i for i in result["items"] if i["kind"] == "probe"]
    lines += ["", f"## Test items side by side ({min(n_examples, len(tests))} of {len(tests)})", "",
              "| question | reference | base | tuned | judge |", "|---|---|---|---|---|"]
    for item in tests[:n_examples]:
        outcome = (item.get("judge") or {}).get("outcome") or "n/a"
        lines.append(f"| {_cell(item['question'])} | {_cell(item['reference'])} | {_cell(item['base']['generation'])} "
                     f"| {_cell(item['tuned']['generation'])} | {outcome} |")
    lines += ["", f"## Fact probes ({min(n_examples, len(probes))} of {len(probes)})", "",
              "| question | expected | base | tuned |", "|---|---|---|---|"]
    for item in probes[:n_examples]:
        mark = lambda side: ("✓ " if item[side]["correct"] else "✗ ") + _cell(item[side]["generation"])  # noqa: E731
        lines.append(f"| {_cell(item['question'])} | {_cell(item['expected'])} | {mark('base')} | {mark('tuned')} |")
    return "\n".join(lines) + "\n"
