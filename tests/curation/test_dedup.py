"""De-duplication: exact on normalised text and semantic with the real MiniLM encoder, the better record kept,
the outcome independent of input order and of how the comparison is cut into blocks."""

import dataclasses
import random

import numpy as np
import pytest

from slmforge.curation import dedup
from slmforge.curation.clean import clean
from tests.curation.conftest import pair


def by_id(records, dups):
    return {records[d]["id"]: records[k]["id"] for d, k in dups.items()}


def test_exact_key_ignores_case_punctuation_spacing_and_composition():
    key = dedup.exact_key("What's the p-value?  Cafe\u0301!")
    assert dedup.exact_key("what s THE p value cafÉ") == key
    assert dedup.exact_key("What's the p-value? Cafe") != key
    assert dedup.exact_key("What's the t-value? Café!") != key


def test_exact_duplicates_keep_the_better_record(params):
    recs = [pair("se:1", "How big a sample?", "About 31,000 per arm.", answer_score=3),
            pair("se:2", "how big a sample", "about 31,000 per arm", answer_score=10),
            pair("se:3", "How  BIG a sample?!", "About 31,000 per arm!!", answer_score=1),
            pair("se:4", "How big a sample?", "About 32,000 per arm.", answer_score=0)]  # a different answer
    assert by_id(recs, dedup.exact_duplicates(recs, params.dedup)) == {"se:1": "se:2", "se:3": "se:2"}


def test_quality_first_present_key_decides(params):
    assert params.dedup.quality_keys[:2] == ["answer_score", "reply_likes"]
    recs = [pair("a", "Same question?", "Same answer.", answer_score=2, reply_likes=0),
            pair("b", "Same question?", "Same answer.", answer_score=1, reply_likes=500),
            pair("c", "Same question?", "Same answer.", origin="tweets", reply_likes=1)]
    # a's answer_score 2 beats b's 1 (b's likes are not looked at) and c's 1 like.
    assert by_id(recs, dedup.exact_duplicates(recs, params.dedup)) == {"b": "a", "c": "a"}


def test_ties_broken_deterministically(params):
    recs = [pair("x:2", "Same question?", "Same answer.", answer_score=5),
            pair("x:1", "same question", "same answer", answer_score=5),
            pair("x:3", "Same question?", "Same answer!!!", answer_score=5)]
    want = by_id(recs, dedup.exact_duplicates(recs, params.dedup))
    assert want == {"x:2": "x:3", "x:1": "x:3"}  # equal quality: the longer text wins
    same_length = [pair("x:2", "Same question?", "Same answer.", answer_score=5),
                   pair("x:10", "same question?", "same answer.", answer_score=5)]
    assert by_id(same_length, dedup.exact_duplicates(same_length, params.dedup)) == {"x:2": "x:10"}  # smaller id
    for seed in range(5):
        for group, expected in ((recs, want), (same_length, {"x:2": "x:10"})):
            shuffled = random.Random(seed).sample(group, len(group))
            assert by_id(shuffled, dedup.exact_duplicates(shuffled, params.dedup)) == expected


PARAPHRASES = [
    pair("se:10", "How many users do I need to detect a 10% lift on a 5% baseline?",
         "At 80% power and alpha 0.05 you need about 31,000 users per variant, so roughly 62,000 in total.",
         answer_score=4),
    pair("se:11", "How many users are needed to detect a 10% relative lift from a 5% baseline conversion rate?",
         "With 80% power and alpha = 0.05 you need roughly 31,000 users in each variant, about 62,000 overall.",
         answer_score=9),
]
SHARED_WORDS = [
    pair("se:20", "What is the sample size for an A/B test on conversion?",
         "It depends on the baseline rate, the minimum detectable effect, alpha and power; use a power calculation.",
         answer_score=3),
    pair("se:21", "What is the conversion rate of the sample in this A/B test?",
         "Divide the number of users who converted by the number of users in the sample: 480 of 10,000 is 4.8%.",
         answer_score=2),
]


def semantic(records, params, encoder, block_size=None):
    emb = dedup.embed([dedup.dedup_text(r) for r in records], encoder, params.dedup.batch_size)
    order = dedup.quality_order(records, params.dedup)
    return dedup.semantic_duplicates(emb, order, params.dedup.threshold, block_size or params.dedup.block_size)


def test_embeddings_are_unit_length(params, encoder):
    emb = dedup.embed([dedup.dedup_text(r) for r in PARAPHRASES + SHARED_WORDS], encoder, 2)
    assert emb.dtype == np.float32 and emb.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_paraphrase_caught_pointing_to_the_better_record(params, encoder):
    records = PARAPHRASES + SHARED_WORDS
    dups = semantic(records, params, encoder)
    assert set(dups) == {0}  # se:10 (score 4) is the duplicate of se:11 (score 9); nothing else
    keep, sim = dups[0]
    assert records[keep]["id"] == "se:11"
    assert params.dedup.threshold <= sim <= 1.0 + 1e-6


def test_texts_sharing_words_but_not_meaning_are_kept(params, encoder):
    assert semantic(SHARED_WORDS, params, encoder) == {}


def random_unit(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def reference(emb, order, threshold):
    """One record at a time, best first, each against every kept record: what blocking must reproduce."""
    kept, dups = [], {}
    for i in order:
        if kept:
            sims = emb[kept] @ emb[i]
            k = int(sims.argmax())
            if sims[k] >= threshold:
                dups[i] = (kept[k], float(sims[k]))
                continue
        kept.append(i)
    return dups


def planted(seed=0, n=120, dim=64):
    """Random unit vectors, some with near copies, and one record near two kept records that are not near each
    other, the nearer of them in a later block."""
    rng = np.random.default_rng(seed)
    emb = random_unit(rng, n, dim)
    noise = lambda: rng.standard_normal(dim).astype(np.float32) * 0.03  # a copy at cosine about 0.97
    for k, src in enumerate(range(10, 30)):
        emb[60 + k] = emb[src] + noise()
    for k, src in enumerate(range(10, 15)):  # a second copy of some
        emb[90 + k] = emb[src] + noise()
    e1, e2 = np.zeros(dim, np.float32), np.zeros(dim, np.float32)
    e1[0], e2[1] = 1, 1
    theta = np.arccos(0.85)  # A and B: cosine 0.85, both kept
    emb[0] = e1
    emb[3] = np.cos(theta) * e1 + np.sin(theta) * e2
    emb[5] = np.cos(0.6 * theta) * e1 + np.sin(0.6 * theta) * e2  # cosine 0.95 with A, 0.98 with B
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = [0, 1, 2, 3, 4, 5] + [int(i) for i in rng.permutation(np.arange(6, n))]
    return emb, order


def test_block_boundaries_do_not_change_the_outcome():
    emb, order = planted()
    want = reference(emb, order, 0.9)
    assert want[5][0] == 3 and 0 not in want and 3 not in want  # the planted case: the nearer kept record wins
    assert len(want) == 26  # 20 + 5 copies and the planted record
    for block_size in (1, 3, 7, 1000):
        got = dedup.semantic_duplicates(emb, order, 0.9, block_size)
        assert {d: k for d, (k, _) in got.items()} == {d: k for d, (k, _) in want.items()}, block_size
        for d, (_, sim) in got.items():
            assert sim == pytest.approx(want[d][1], abs=1e-5) and sim >= 0.9


def test_no_duplicates_among_random_vectors():
    emb = random_unit(np.random.default_rng(1), 300, 64)
    assert dedup.semantic_duplicates(emb, list(range(300)), 0.9, 16) == {}


def test_clean_excludes_origins_from_semantic_dedup(params, scorer, encoder):
    """One fact asked two ways is deliberate; the same two records from another origin are duplicates."""
    assert "facts" in params.dedup.exclude_origins
    as_facts = [{**r, "meta": {**r["meta"], "origin": "facts"}} for r in PARAPHRASES]
    kept, rejected, _ = clean(as_facts + SHARED_WORDS, params, scorer=scorer, encoder=encoder)
    assert rejected == [] and len(kept) == 4
    kept, rejected, _ = clean(PARAPHRASES + SHARED_WORDS, params, scorer=scorer, encoder=encoder)
    assert [(r["id"], r["reasons"], r["dup_of"]) for r in rejected] == [("se:10", ["duplicate_semantic"], "se:11")]
    off = dataclasses.replace(params, dedup=dataclasses.replace(params.dedup, semantic=False))
    assert clean(PARAPHRASES, off, scorer=scorer, encoder=encoder)[1] == []
