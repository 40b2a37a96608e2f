"""Curation fixtures: the clean params composed from conf/, and the real backends loaded once per session."""

from __future__ import annotations

import pytest


def pair(id_: str, prompt: str, response: str, origin: str = "stackexchange", **meta) -> dict:
    return {"id": id_, "source": "test", "kind": "pair", "prompt": prompt, "response": response, "text": None,
            "meta": {"origin": origin, **meta}, "provenance": {}}


def doc(id_: str, text: str, origin: str = "arxiv", **meta) -> dict:
    return {"id": id_, "source": "test", "kind": "document", "prompt": None, "response": None, "text": text,
            "meta": {"origin": origin, **meta}, "provenance": {}}


# A question and answer every filter keeps, to vary one thing at a time.
QUESTION = "How many users do I need per variant for my A/B test?"
ANSWER = ("With a 5% baseline and a 10% relative lift you need about 31,000 users per variant at 80% power "
          "and alpha 0.05; run the test for full weeks so weekday effects average out.")


@pytest.fixture(scope="session")
def params(root):
    from slmforge.params import CleanParams, build, compose

    return build(CleanParams, compose(root / "conf")["clean"], "clean")


@pytest.fixture(scope="session")
def scorer(params):
    from slmforge.curation.toxicity import load_scorer

    return load_scorer(params.toxicity)


@pytest.fixture(scope="session")
def encoder(params):
    from slmforge.curation.dedup import load_encoder

    return load_encoder(params.dedup)
