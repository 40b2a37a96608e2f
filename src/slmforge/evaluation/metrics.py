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
