"""The clean step: every record in comes out kept or rejected, a rejection lists all its reasons, kept records
are normalised and scrubbed, and on the embedded sample corpus exactly the planted noise is rejected."""

import dataclasses
import json

import pytest

from slmforge.curation.clean import clean
from tests.curation.conftest import ANSWER, QUESTION, doc, pair


@pytest.fixture
def run(params, scorer, encoder):
    return lambda records, p=params: clean(records, p, scorer=scorer, encoder=encoder)


def test_accounting_and_metrics(run):
    records = [pair("a", QUESTION, ANSWER), pair("b", QUESTION, "Too short."), doc("c", ANSWER, origin="files"),
               pair("d", QUESTION, ANSWER)]  # d: an exact copy of a
    kept, rejected, metrics = run(records)
    assert metrics["records_in"] == 4 == metrics["kept"] + metrics["rejected"] == len(kept) + len(rejected)
    assert metrics["accounting_ok"] is True
    assert sorted(r["id"] for r in kept) == ["a", "c"] and sorted(r["id"] for r in rejected) == ["b", "d"]
    assert metrics["reasons"] == {"duplicate_exact": 1, "too_short": 1}
    assert metrics["kept_by_origin"] == {"files": 1, "stackexchange": 1}
    assert run([])[2]["records_in"] == 0


def test_a_record_failing_several_filters_lists_every_reason(run):
    spam = pair("t", QUESTION, "FOLLOW ME NOW FOR A FREE CRYPTO GIVEAWAY https://x.co/abc #win #free #crypto #now",
                origin="tweets", media=["p.jpg"])
    kept, rejected, _ = run([spam, pair("a", QUESTION, ANSWER)])
    assert [r["id"] for r in kept] == ["a"]
    assert set(rejected[0]["reasons"]) >= {"url", "media", "hashtags", "shouting", "spam"}
    assert len(rejected[0]["reasons"]) == len(set(rejected[0]["reasons"]))


def test_language_and_toxicity_reasons_alongside_rules(run, params):
    es = pair("es", "¿Cuántos usuarios necesito por variante?",
              "Necesitas unos treinta y un mil usuarios por variante con una potencia del ochenta por ciento.")
    toxic = pair("tox", QUESTION, "You are a fucking idiot and a worthless piece of shit, sample size is 30,000.")
    both = pair("both", QUESTION, "Shut up you fucking moron, dm me")
    es_spam = pair("es_spam", "¿Cuántos usuarios necesito por variante?",
                   "Escríbeme por WhatsApp y te paso la calculadora del tamaño de la muestra gratis.")
    kept, rejected, _ = run([es, toxic, both, es_spam])
    reasons = {r["id"]: r["reasons"] for r in rejected}
    assert kept == []
    assert reasons["es"] == ["language"] and reasons["tox"] == ["toxic"]
    assert set(reasons["both"]) == {"spam", "toxic"}
    assert set(reasons["es_spam"]) == {"spam", "language"}
    signals = {r["id"]: r["signals"] for r in rejected}
    assert signals["es"]["lang"] == "es" and signals["es"]["lang_prob"] < params.language.min_prob
    assert signals["tox"]["toxicity"] >= params.toxicity.threshold


@pytest.mark.parametrize("broken,reason", [
    ({"prompt": ""}, "missing_prompt"),
    ({"response": None}, "missing_response"),
    ({"prompt": "   "}, "missing_prompt"),
    ({"kind": "thread"}, "unknown_kind"),
    ({"id": None}, "missing_id"),
])
def test_required_fields(run, broken, reason):
    kept, rejected, _ = run([{**pair("x", QUESTION, ANSWER), **broken}, pair("ok", QUESTION, ANSWER + " Indeed.")])
    assert [r["id"] for r in kept] == ["ok"]
    assert rejected[0]["reasons"] == [reason]


def test_required_fields_of_documents(run):
    kept, rejected, _ = run([doc("d1", ""), doc("d2", ANSWER * 2)])
    assert [r["id"] for r in kept] == ["d2"] and rejected[0]["reasons"] == ["missing_text"]


def test_too_large_bound_is_inclusive(run, params):
    rec = pair("big", QUESTION, "Café: " + ANSWER)
    size = len(json.dumps(rec, ensure_ascii=False).encode())  # bytes of UTF-8, not characters
    kept, rejected, _ = run([rec], dataclasses.replace(params, max_record_bytes=size))
    assert [r["id"] for r in kept] == ["big"] and rejected == []
    kept, rejected, _ = run([rec], dataclasses.replace(params, max_record_bytes=size - 1))
    assert kept == [] and rejected[0]["reasons"] == ["too_large"]


def test_duplicate_id_first_wins_and_the_later_is_not_lost(run):
    first = pair("same", QUESTION, ANSWER)
    second = pair("same", "A completely different question about variance?", "Use the pooled variance estimate "
                  "when the two groups have similar spreads; otherwise Welch's correction.")
    kept, rejected, metrics = run([first, second])
    assert kept[0]["response"] == ANSWER
    assert rejected[0]["reasons"] == ["duplicate_id"] and rejected[0]["prompt"] == second["prompt"]
    assert metrics["records_in"] == 2


def test_rejected_duplicates_carry_dup_of_and_similarity(run, params):
    records = [pair("se:10", "How many users do I need to detect a 10% lift on a 5% baseline?",
                    "At 80% power and alpha 0.05 you need about 31,000 users per variant, so roughly 62,000 in total.",
                    answer_score=4),
               pair("se:11", "How many users are needed to detect a 10% relative lift from a 5% baseline conversion "
                    "rate?", "With 80% power and alpha = 0.05 you need roughly 31,000 users in each variant, about "
                    "62,000 overall.", answer_score=9),
               pair("se:12", QUESTION.upper().replace("?", "!!"), ANSWER.lower(), answer_score=1),
               pair("se:13", QUESTION, ANSWER, answer_score=2)]
    kept, rejected, metrics = run(records)
    assert sorted(r["id"] for r in kept) == ["se:11", "se:13"]
    rej = {r["id"]: r for r in rejected}
    assert rej["se:10"]["reasons"] == ["duplicate_semantic"] and rej["se:10"]["dup_of"] == "se:11"
    assert params.dedup.threshold <= rej["se:10"]["similarity"] <= 1.0
    assert rej["se:12"]["reasons"] == ["duplicate_exact"] and rej["se:12"]["dup_of"] == "se:13"
    assert rej["se:12"]["similarity"] == 1.0
    assert metrics["dedup"]["exact"] == 1 and metrics["dedup"]["semantic"] == 1


def test_a_spam_copy_never_displaces_the_good_original(run):
    good = pair("good", QUESTION, ANSWER, answer_score=1)
    spam = pair("spam", QUESTION, ANSWER + " DM me", answer_score=50)
    kept, rejected, _ = run([spam, good])
    assert [r["id"] for r in kept] == ["good"]
    assert rejected[0]["reasons"] == ["spam"] and "dup_of" not in rejected[0]


def test_kept_records_are_normalised_scrubbed_and_carry_signals(run, params):
    raw = pair("k", "Sooo, #SampleSize for my test? Ping @ana_b", "Cafe\u0301 data: mail ana@lab.io or call "
               "(415) 555-2671.  With 80% power you need about 31,000 users per arm &amp; variant.", answer_score=3)
    before = json.dumps(raw, sort_keys=True)
    kept, rejected, metrics = run([raw])
    assert rejected == []
    out = kept[0]
    assert out["prompt"] == "So, Sample Size for my test? Ping @user"
    assert out["response"] == ("Café data: mail [email] or call [phone]. With 80% power you need about 31,000 "
                               "users per arm & variant.")
    signals = out["meta"]["clean"]
    assert signals["lang"] == "en" and signals["lang_prob"] >= params.language.min_prob
    assert 0 <= signals["toxicity"] < params.toxicity.threshold
    assert signals["pii"] == {"handle": 1, "email": 1, "phone": 1}
    assert out["meta"]["answer_score"] == 3 and out["meta"]["origin"] == "stackexchange"
    assert metrics["pii_replaced"] == {"email": 1, "handle": 1, "phone": 1}
    assert json.dumps(raw, sort_keys=True) == before  # the caller's record is not modified


def test_dup_of_names_a_kept_record(run):
    records = [pair("low", "How many users do I need to detect a 10% lift on a 5% baseline?!",
                    "At 80% power and alpha 0.05 you need about 31,000 users per variant, so roughly 62,000 in total.",
                    answer_score=1),
               pair("mid", "How many users do I need to detect a 10% lift on a 5% baseline?",
                    "At 80% power and alpha 0.05 you need about 31,000 users per variant, so roughly 62,000 in total.",
                    answer_score=4),
               pair("top", "How many users are needed to detect a 10% relative lift from a 5% baseline conversion "
                    "rate?", "With 80% power and alpha = 0.05 you need roughly 31,000 users in each variant, about "
                    "62,000 overall.", answer_score=9)]
    kept, rejected, _ = run(records)
    assert [r["id"] for r in kept] == ["top"]
    assert all(r["dup_of"] in {k["id"] for k in kept} for r in rejected)


# --- the embedded sample corpus ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(root, params, scorer, encoder):
    from slmforge.params import load_source_params
    from slmforge.sources.sample import collect

    source = load_source_params("sample", root / "params.yaml")
    source = dataclasses.replace(source, path=str(root / source.path))
    quarantine = []
    records = collect(source, run_id="t", quarantine=quarantine, stats={})
    assert quarantine == []
    kept, rejected, metrics = clean(records, params, scorer=scorer, encoder=encoder)
    expected = [json.loads(line) for name in ("stackexchange_expected_drops.jsonl",
                                              "tweets_arxiv_expected_drops.jsonl")
                for line in (root / "data" / "sample" / name).read_text().splitlines() if line.strip()]
    return records, kept, rejected, metrics, expected


def quality(rec, params):
    meta = rec.get("meta") or {}
    return next((float(meta[k]) for k in params.dedup.quality_keys if isinstance(meta.get(k), (int, float))), 0.0)


def test_sample_accounting(sample):
    records, kept, rejected, metrics, _ = sample
    assert len(records) == metrics["records_in"] == len(kept) + len(rejected)
    assert {r["id"] for r in kept}.isdisjoint(r["id"] for r in rejected)


def test_sample_spam_and_foreign_language_rejected(sample):
    _, _, rejected, _, expected = sample
    rejected_ids = {r["id"] for r in rejected}
    planted = [e["id"] for e in expected if e["reason"] in {"spam", "non_english"}]
    assert len(planted) >= 15
    assert [i for i in planted if i not in rejected_ids] == []


def test_sample_planted_duplicates_caught_keeping_the_better(sample, params):
    records, kept, rejected, _, expected = sample
    by_id = {r["id"]: r for r in records}
    rej = {r["id"]: r for r in rejected}
    dup_pairs = [(e["id"], e["dup_of"]) for e in expected if e["reason"] == "duplicate"]
    assert len(dup_pairs) >= 10
    for a, b in dup_pairs:
        dropped = [x for x in (a, b) if x in rej]
        assert len(dropped) == 1, (a, b, dropped)
        loser, winner = dropped[0], ({a, b} - {dropped[0]}).pop()
        assert rej[loser]["dup_of"] == winner
        assert set(rej[loser]["reasons"]) & {"duplicate_exact", "duplicate_semantic"}
        assert params.dedup.threshold <= rej[loser]["similarity"] <= 1.0
        assert quality(by_id[winner], params) >= quality(by_id[loser], params)


def test_sample_no_false_positives(sample):
    _, _, rejected, _, expected = sample
    allowed = {e["id"] for e in expected if e["reason"] in {"spam", "non_english"}}
    allowed |= {x for e in expected if e["reason"] == "duplicate" for x in (e["id"], e["dup_of"])}
    wrongly = [(r["id"], r["reasons"]) for r in rejected if r["id"] not in allowed]
    assert wrongly == []


def test_sample_kept_records_carry_clean_signals(sample):
    _, kept, _, _, _ = sample
    assert all({"lang", "lang_prob", "toxicity", "pii"} <= set(r["meta"]["clean"]) for r in kept)
    facts = [r for r in kept if r["meta"]["origin"] == "facts"]
    assert len(facts) >= 150  # phrasings of one fact are deliberate near-duplicates and all stay


def test_invisible_characters_are_removed_counted_and_cannot_hide_spam(run):
    hidden = ANSWER + " \u202eevil\u202c done\u200b here\U000e0041\U000e0042"
    spam = "Great answer! b\u200buy fol\u00adlowers today, cheap and fast, at my site"  # spam_patterns: buy followers
    kept, rejected, metrics = run([pair("a", QUESTION, hidden), pair("s", QUESTION, spam)])
    (a,) = kept
    assert a["response"] == ANSWER + " evil done here" and a["meta"]["clean"]["invisible_removed"] == 5
    assert [r["id"] for r in rejected] == ["s"] and "spam" in rejected[0]["reasons"]
    assert metrics["invisible_removed"] == {"records": 2, "bidi_control": 2, "zero_width": 3, "tag_character": 2}
    assert run([pair("b", QUESTION, ANSWER)])[2]["invisible_removed"] == {
        "records": 0, "bidi_control": 0, "zero_width": 0, "tag_character": 0}
