"""reports/calibration.md: the calibration verdict first, then its measures, strata, agreement with gold and the
worst disagreements, from the result that slmforge.calibration.calibrate returns."""

from __future__ import annotations


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(text: str) -> str:  # a table cell or a quote may not break the markdown
    return " ".join(str(text).split()).replace("|", "\\|")


MEASURE_ROWS = [  # (label, key, digits)
    ("false positive rate (off-topic scored high)", "false_positive_rate", 3),
    ("severe false positive rate", "severe_false_positive_rate", 3),
    ("false negative rate (on-topic scored low)", "false_negative_rate", 3),
    ("dimension variance (mean per record)", "dimension_variance", 2),
    ("score bins used", "score_bins_used", 0),
    ("parse failure rate", "parse_failure_rate", 3),
    ("self-consistency MAD of overall", "self_consistency_mad", 2),
    ("rows labelled / drawn", None, 0),
]


def report_markdown(result: dict) -> str:
    """reports/calibration.md from {"verdict", "reasons", "gate", "backend", "model", "sample": measure(...),
    "validation": {**measure(...), "verdict", "reasons", "overfit"} | None, "agreement": agreement(...) | None}."""
    main, val = result["sample"], result.get("validation")
    sides = [("main sample", main)] + ([("validation", val)] if val else [])
    from slmforge.calibration import gate_failures

    failures, gate = gate_failures(result), result.get("gate")
    state = ("open" if not failures else "CLOSED: label refuses to run" if gate == "enforce"
             else "not enforced: label runs and records the failures")
    gold_word = result["gold"]["verdict"] if result.get("gold") else "no gold file"
    out = ["# Oracle calibration", "", f"**Verdict: {result['verdict']}** · validation "
           f"**{val['verdict'] if val else 'n/a'}** · gold **{gold_word}** · gate (calibration.gate={gate}) {state}", ""]
    out += [f"- calibration (main sample, seed-drawn strata): {result['verdict']}: " +
            ("; ".join(_cell(r) for r in result["reasons"]) or "(no reasons given)")]
    if val:
        out += [f"- validation (a fresh sample, another seed): {val['verdict']}, overfit {_fmt(val.get('overfit'))}: "
                + ("; ".join(_cell(r) for r in val.get("reasons") or []) or "(no reasons given)")]
    gold = result.get("gold")
    out += [f"- gold ({gold['file']}, {gold['n']} rows labelled by both): {gold['verdict']}: "
            + "; ".join(_cell(r) for r in gold["reasons"]) if gold else
            "- gold: no gold file (calibration.gold is null): agreement with people is not part of the gate"]
    # calls, cache hits and dollars are facts of the run (none when every answer was cached), not of its inputs:
    # they are in metrics/runs/calibrate.json and reports/cost.md, never in this cached report
    out += ["", f"Oracle: {result.get('backend')} / {result.get('model')}; its calls and cost this run: "
                "`metrics/runs/calibrate.json`, reports/cost.md."]

    out += ["", "## Measures", "", "| measure | " + " | ".join(n for n, _ in sides) + " |",
            "|---|" + "---|" * len(sides)]
    for label, key, digits in MEASURE_ROWS:
        cells = [f"{m['n_labelled']} / {m['n_sample']}" if key is None else _fmt(m[key], digits) for _, m in sides]
        if key == "score_bins_used":
            cells = [f"{c} ({', '.join(map(str, m['score_bins']))})" for c, (_, m) in zip(cells, sides)]
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    out += ["", "## Strata", "", "| sample | stratum | asked | got | labelled | mean overall |",
            "|---|---|---|---|---|---|"]
    for name, m in sides:
        for s, c in m["n"].items():
            out.append(f"| {name} | {s} | {c['asked']} | {c['got']} | {c['labelled']} | "
                       f"{_fmt(m['mean_overall_by_stratum'].get(s), 2)} |")

    out += ["", "## Self-consistency", "", "| dimension | " + " | ".join(f"MAD ({n})" for n, _ in sides) + " |",
            "|---|" + "---|" * len(sides)]
    out.append("| overall | " + " | ".join(_fmt(m["self_consistency_mad"], 2) for _, m in sides) + " |")
    for d in main["self_consistency_mad_by_dimension"]:
        out.append(f"| {d} | " + " | ".join(_fmt(m["self_consistency_mad_by_dimension"].get(d), 2)
                                             for _, m in sides) + " |")
    out.append("")
    out.append("Rows labelled twice: " + ", ".join(f"{m['self_consistency_n']} ({n})" for n, m in sides) + ".")

    agr = result.get("agreement")
    out += ["", "## Agreement with gold", ""]
    if not agr:
        out.append("No gold file (calibration.gold is null).")
    else:
        out += [f"{agr['n']} records labelled by the oracle (main and validation samples) and in the gold file; 95% "
                f"bootstrap percentile intervals over {agr['n_boot']} resamples.", "",
                "| scores | Spearman | QWK | MAE |", "|---|---|---|---|"]

        def stat(s: dict) -> str:
            ci = f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s["ci95"] else ""
            return _fmt(s["value"], 2) + ci

        for name, row in [*agr["dimensions"].items(), ("overall", agr["overall"])]:
            out.append(f"| {name} | {stat(row['spearman'])} | {stat(row['qwk'])} | {stat(row['mae'])} |")

    out += ["", "## Worst disagreements", "",
            "Off-topic rows the oracle scored highest and on-topic rows it scored lowest; `error` marks a row past "
            "its threshold (a false positive or a false negative)."]
    for name, m in sides:
        out += ["", f"### {name}"]
        if not m["worst"]:
            out += ["", "None labelled."]
        for w in m["worst"]:
            scores = ", ".join(f"{d} {_fmt(float(v), 1)}" for d, v in w["scores"].items())
            out += ["", f"- `{_cell(w['id'])}` ({w['stratum']}{', error' if w['error'] else ''}): overall "
                        f"{w['overall']:.2f}; {scores}", f"  > {_cell(w['excerpt'])}"]
    return "\n".join(out) + "\n"


def plot_rows(sample_rows: list[dict], gold: dict[str, dict] | None, rubric) -> list[dict]:
    """The calibration scatter for `dvc plots`: each sampled record's oracle scores by stratum, with the human
    overall score beside it where a gold label exists (null otherwise)."""
    from slmforge.labeling import overall_score

    rows = []
    for r in sample_rows:
        label = r.get("label")
        if not label or label.get("overall") is None:
            continue
        g = (gold or {}).get(r["id"])
        rows.append({"id": r["id"], "sample": r.get("sample", "main"), "stratum": r["stratum"],
                     "overall": label["overall"], **label["scores"],
                     "gold_overall": overall_score(g["scores"], rubric) if g else None})
    return rows
