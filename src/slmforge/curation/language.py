"""Language identification with langdetect: the real probability of each kept language, seeded."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from slmforge.curation.normalise import strip_code
from slmforge.params import LanguageParams


def _init(seed: int) -> None:
    from langdetect import DetectorFactory

    # langdetect samples n-grams at random; without a seed the same text can get another verdict on a rerun.
    DetectorFactory.seed = seed


def _probs(texts: list[str]) -> list[dict[str, float]]:
    from langdetect import detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    out = []
    for text in texts:
        try:
            out.append({lang.lang: lang.prob for lang in detect_langs(text)})
        except LangDetectException:  # no letters at all (only digits, emoji or code)
            out.append({})
    return out


def language_probs(texts: list[str], params: LanguageParams) -> list[dict[str, float]]:
    """langdetect's distribution over languages for each text (prose only, the first max_chars)."""
    prose = [" ".join(strip_code(t).split())[: params.max_chars] for t in texts]
    if params.workers <= 1 or len(prose) < 2000:
        _init(params.seed)
        return _probs(prose)
    # Pure Python, so processes, not threads; chunks keep the result independent of the worker count
    # (each text is detected alone with the same seed).
    chunk = 500
    parts = [prose[i:i + chunk] for i in range(0, len(prose), chunk)]
    with ProcessPoolExecutor(params.workers, initializer=_init, initargs=(params.seed,)) as pool:
        done = tqdm(pool.map(_probs, parts), total=len(parts), desc="language", unit="chunk")
        return [p for part in done for p in part]


def kept_prob(probs: dict[str, float], params: LanguageParams) -> float:
    return max((probs.get(lang, 0.0) for lang in params.keep), default=0.0)
