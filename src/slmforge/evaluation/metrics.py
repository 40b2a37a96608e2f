"""Per-item metrics (ROUGE-L, probe match, hallucination) and their aggregation for base and tuned."""

from __future__ import annotations

import math
import re
import unicodedata

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, ref: str) -> float:
    return _SCORER.score(ref, prediction)["rougeL"].fmeasure


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation to spaces except inside numbers (3,200 and 0.025 keep their marks)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s#%.,-]", " ", text)
    text = re.sub(r"(?<!\d)[.,]|[.,](?!\d)", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def probe_match(prediction: str, answer: str, aliases: list[str]) -> bool:
    """True when the normalised answer or an alias appears in the prediction as whole words."""
    pred = f" {normalise(prediction)} "
    for candidate in [answer, *aliases]:
        cand = normalise(candidate).strip(" -")  # "LMX-" must match "LMX-1234"
        if cand and re.search(rf"(?<![\w]){re.escape(cand)}(?![\w])", pred):
            return True
    return False


def abstains(prediction: str, markers: list[str]) -> bool:
    low = prediction.lower().replace("’", "'")
    return any(m in low for m in markers)


def hallucinated(prediction: str, answer: str, aliases: list[str], markers: list[str]) -> bool:
    """A wrong answer given as fact: no match, and no admission of not knowing."""
    return not probe_match(prediction, answer, aliases) and not abstains(prediction, markers)


def aggregate(scores: list[dict], rouge: list[float], probe_ok: list[bool], halluc: list[bool]) -> dict:
    tokens = sum(s["tokens"] for s in scores)
    nll = sum(s["nll"] for s in scores)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        "token_accuracy": sum(s["correct"] for s in scores) / tokens if tokens else float("nan"),
        "rouge_l": mean(rouge),
        "probe_accuracy": mean([float(x) for x in probe_ok]),
        "hallucination_rate": mean([float(x) for x in halluc]),
        "items": len(scores),
        "probes": len(probe_ok),
    }


def delta(base: dict, tuned: dict) -> dict:
    return {k: tuned[k] - base[k] for k in base if isinstance(base[k], float)}


_NUMBER = r"\d[\d,]*(?:\.\d+)?"


def _unit_pattern(unit: str) -> re.Pattern:
    u = re.escape(unit.lower())
    tail = "" if not unit[-1:].isalnum() else r"(?![a-z])"
    if unit in ("$", "USD"):  # a currency stands before the number as often as after it
        return re.compile(rf"{u}\s?{_NUMBER}|{_NUMBER}\s?{u}{tail}")
    return re.compile(rf"{_NUMBER}\s?-?{u}{tail}")


def units_in(text: str, units: list[str]) -> set[str]:
    """The units given with a number in `text`, singular and plural as one ("11-day" and "11 days")."""
    low = text.lower()
    return {u.lower().removesuffix("s") if len(u) > 3 else u.lower() for u in units if _unit_pattern(u).search(low)}


def format_ok(prediction: str, ref: str, units: list[str]) -> bool | None:
    """Format compliance: where the reference gives a number with a unit ("11 days", "2.5%"), the answer gives
    a number with that unit too. None where the reference has no such number (not applicable)."""
    wanted = units_in(ref, units)
    if not wanted:
        return None
    return wanted <= units_in(prediction, units)


def group_of(item: dict) -> str:
    """The provenance group an item is reported under: its source, and its origin inside the source when they
    differ (the sample corpus holds StackExchange threads, tweets and facts under one source)."""
    source, origin = item.get("source") or "unknown", item.get("origin")
    return source if not origin or origin == source else f"{source}:{origin}"


def mean_or_nan(values: list) -> float:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def per_group(items: list[dict], keys: list[str]) -> dict[str, dict]:
    """Every per-item metric's mean for base and tuned, by provenance group: {group: {n, base{k}, tuned{k}}}."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(group_of(item), []).append(item)
    out = {}
    for name, rows in sorted(groups.items()):
        out[name] = {"n": len(rows)}
        for side in ("base", "tuned"):
            out[name][side] = {k: mean_or_nan([r[side].get(k) for r in rows]) for k in keys
                               if any(r[side].get(k) is not None for r in rows)}
    return out
