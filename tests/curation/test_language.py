"""Language identification: langdetect's real, seeded probability decides; processes agree with one process."""

import dataclasses
import random

import pytest

from slmforge.curation.language import kept_prob, language_probs

EN = "How many users do I need per variant to detect a ten percent lift on a five percent baseline conversion rate?"
ES = ("¿Cuántos usuarios necesito por variante para detectar un aumento del diez por ciento en una tasa de "
      "conversión base del cinco por ciento?")
# Half English, half Spanish: langdetect splits its probability between the two.
MIXED = "the sample size we need for this test esta prueba depende de la tasa base y del efecto"


@pytest.fixture
def lp(params):
    return params.language


def prob(text, lp):
    return kept_prob(language_probs([text], lp)[0], lp)


def test_english_kept_spanish_dropped(lp):
    assert lp.keep == ["en"] and lp.min_prob == 0.8
    assert prob(EN, lp) >= lp.min_prob
    assert prob(ES, lp) < lp.min_prob
    assert language_probs([ES], lp)[0].get("es", 0) >= 0.8


def test_probability_is_real_not_a_constant(lp):
    p_en, p_es, p_mixed = prob(EN, lp), prob(ES, lp), prob(MIXED, lp)
    assert len({round(p_en, 3), round(p_es, 3), round(p_mixed, 3)}) == 3
    assert 0.05 < p_mixed < 0.95  # neither "English" nor "not English": a mixed text is in between
    assert p_mixed < lp.min_prob  # and a half-Spanish answer is not kept


def test_code_is_not_evidence_of_language(lp):
    code = "```\nfor i in range(10):\n    print(i)\n```"
    assert language_probs([code], lp) == [{}]  # nothing to tell from
    assert prob(f"{ES}\n{code}", lp) < lp.min_prob


def test_seeded_same_text_same_result(lp):
    texts = [MIXED, EN, ES, "Short mixed text con palabras en dos idiomas here"]
    assert language_probs(texts, lp) == language_probs(texts, lp) == language_probs(list(reversed(texts)), lp)[::-1]


def test_processes_agree_with_one_process(lp, monkeypatch):
    from langdetect import DetectorFactory

    # As in a fresh stage process: nothing seeded yet, so each worker must seed itself.
    monkeypatch.setattr(DetectorFactory, "seed", None)
    rng = random.Random(0)
    pool = [EN, ES, MIXED, "Der Stichprobenumfang hängt von der Basisrate ab und von der Effektgröße.",
            "La taille de l'échantillon dépend du taux de base et de la taille de l'effet.",
            "Use a two-proportion z-test and report the confidence interval for the lift."]
    texts = []
    for _ in range(2100):  # each a sentence of the pool with one word dropped: 2,100 different texts
        words = rng.choice(pool).split()
        del words[rng.randrange(len(words))]
        texts.append(" ".join(words))
    multi = language_probs(texts, dataclasses.replace(lp, workers=2))
    single = language_probs(texts[::30], dataclasses.replace(lp, workers=1))
    assert len(multi) == len(texts)
    assert multi[::30] == single
    assert len({round(kept_prob(p, lp), 2) for p in single}) > 3  # the sample is not all one verdict
