"""reports/eval.md: the comparison first, then side-by-side examples a person can read."""

from __future__ import annotations

KEYS = [("perplexity", "lower"), ("token_accuracy", "higher"), ("rouge_l", "higher"),
        ("probe_accuracy", "higher"), ("hallucination_rate", "lower")]


def _better(key: str, direction: str, d: float) -> str:
    if d == 0:
        return "="
    return "better" if (d < 0) == (direction == "lower") else "worse"


def _cell(text: str, width: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def render(result: dict, n_examples: int = 10) -> str:
    base, tuned, delta = result["base"], result["tuned"], result["delta"]
    wins = [k for k, d in KEYS if _better(k, d, delta[k]) == "better"]
    lines = [
        "# Evaluation: tuned adapter against its base model",
        "",
        f"The tuned model is better on {len(wins)} of {len(KEYS)} metrics ({', '.join(wins) or 'none'}), on "
        f"{base['items']} test items and {base['probes']} held-out fact probes.",
        "",
        "| metric | base | tuned | delta | |",
        "|---|---:|---:|---:|---|",
    ]
    for key, direction in KEYS:
        lines.append(f"| {key} ({direction} is better) | {base[key]:.4f} | {tuned[key]:.4f} | {delta[key]:+.4f} "
                     f"| {_better(key, direction, delta[key])} |")
    probes = [i for i in result["items"] if i["kind"] == "probe"]
    tests = [i for i in result["items"] if i["kind"] == "test"]
    lines += ["", f"## Fact probes ({min(n_examples, len(probes))} of {len(probes)})", "",
              "| question | expected | base | tuned |", "|---|---|---|---|"]
    for item in probes[:n_examples]:
        mark = lambda side: ("✓ " if item[side]["correct"] else "✗ ") + _cell(item[side]["generation"])  # noqa: E731
        lines.append(f"| {_cell(item['question'])} | {_cell(item['expected'])} | {mark('base')} | {mark('tuned')} |")
    lines += ["", f"## Test items ({min(n_examples, len(tests))} of {len(tests)})", "",
              "| question | reference | base | tuned |", "|---|---|---|---|"]
    for item in tests[:n_examples]:
        lines.append(f"| {_cell(item['question'])} | {_cell(item['reference'])} | {_cell(item['base']['generation'])} "
                     f"| {_cell(item['tuned']['generation'])} |")
    return "\n".join(lines) + "\n"
