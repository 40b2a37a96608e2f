"""Rule filters: each drops what it should and keeps its near miss; per-origin overrides apply."""

import dataclasses

import pytest

from slmforge.curation import rules
from slmforge.curation.normalise import normalise_record
from slmforge.errors import UserError
from tests.curation.conftest import ANSWER, QUESTION, doc, pair


def reasons_of(rec: dict, rule_params) -> list[str]:
    """The reasons clean would give: the record normalised, its origin's rule set, hashtags on the raw record."""
    from slmforge.params import NormaliseParams

    norm = normalise_record(rec, NormaliseParams(elongations=True, hashtags_to_words=True))
    sets = rules.rules_for(rule_params)
    return rules.rule_reasons(norm, rec, sets.get(rec["meta"]["origin"], rule_params), rules.compile_patterns(rule_params))


@pytest.fixture
def r(params):
    return params.rules


def test_the_baseline_pair_passes(r):
    assert reasons_of(pair("a", QUESTION, ANSWER), r) == []


def test_min_chars_bound_is_inclusive(r):
    assert r.min_chars == 20
    assert reasons_of(pair("a", QUESTION, "Use a t-test here: ok"[:20]), r) == []
    assert len("Use a t-test here: ok"[:20]) == 20
    assert reasons_of(pair("a", QUESTION, "Use a t-test here: ok"[:19]), r) == ["too_short"]


def test_min_chars_counts_after_normalisation(r):
    # 21 characters as written, 19 once the spaces are tidied: too short.
    assert reasons_of(pair("a", QUESTION, "Use  a  t-test here:"), r) == ["too_short"]


def test_min_prompt_chars(r):
    assert reasons_of(pair("a", "Why n=30?!", ANSWER), r) == []  # 10 characters
    assert reasons_of(pair("a", "Why n=30?", ANSWER), r) == ["prompt_too_short"]


def test_max_chars_bound_is_inclusive(r):
    at = ((ANSWER + " ") * 100)[: r.max_chars - 1] + "."
    assert len(at) == r.max_chars
    assert reasons_of(pair("a", QUESTION, at), r) == []
    assert reasons_of(pair("a", QUESTION, at + "x"), r) == ["too_long"]


def test_documents_are_measured_on_their_text(r):
    assert reasons_of(doc("d", "A short abstract.", origin="files"), r) == ["too_short"]
    assert reasons_of(doc("d", ANSWER, origin="files"), r) == []


def test_max_urls(r):
    assert r.max_urls == 2
    two = f"{ANSWER} See https://en.wikipedia.org/wiki/Power and www.evanmiller.org/ab-testing/."
    assert reasons_of(pair("a", QUESTION, two), r) == []
    assert reasons_of(pair("a", QUESTION, two + " Also bit.ly/3xYz"), r) == ["url"]


def test_media(r):
    assert reasons_of(pair("a", QUESTION, ANSWER, media=["photo.jpg"]), r) == ["media"]
    assert reasons_of(pair("a", QUESTION, ANSWER, has_media=True), r) == ["media"]
    assert reasons_of(pair("a", QUESTION, ANSWER, media=[], has_media=False), r) == []
    assert reasons_of(pair("a", QUESTION, ANSWER, media=["p.jpg"]), dataclasses.replace(r, drop_media=False)) == []


def test_hashtags_counted_on_the_raw_record(r):
    assert r.max_hashtags == 3
    three = f"{ANSWER} #abtest #SampleSize #stats"
    assert reasons_of(pair("a", QUESTION, three), r) == []
    # Normalisation turns hashtags into words, so only the raw record can tell there were four.
    assert reasons_of(pair("a", QUESTION, three + " #growth"), r) == ["hashtags"]
    # The scraper's own list counts too.
    assert reasons_of(pair("a", QUESTION, ANSWER, hashtags=["a", "b", "c", "d"]), r) == ["hashtags"]
    assert reasons_of(pair("a", QUESTION, ANSWER, hashtags=["a", "b", "c"]), r) == []


def test_shouting_ratio(r):
    assert r.max_upper_ratio == 0.6
    # 20 letters, 12 upper: exactly at the bound is kept; 13 upper is over.
    at = "ABCDEFGHIJKLmnopqrst 2024"
    over = "ABCDEFGHIJKLMnopqrst 2024"
    def ratio(t):
        letters = [c for c in t if c.isalpha()]
        return sum(c.isupper() for c in letters) / len(letters)
    assert ratio(at) <= 0.6 < ratio(over)
    assert reasons_of(pair("a", QUESTION, at), r) == []
    assert reasons_of(pair("a", QUESTION, over), r) == ["shouting"]
    assert reasons_of(pair("a", QUESTION, "THIS IS THE ONLY RIGHT ANSWER, TRUST ME ON THIS"), r) == ["shouting"]


def test_shouting_ignores_code_and_short_texts(r):
    code = "Run this:\n```\nSELECT COUNT(DISTINCT USER_ID) FROM EVENTS WHERE VARIANT = 'B' GROUP BY DAY\n```"
    assert reasons_of(pair("a", QUESTION, code), r) == []
    assert reasons_of(pair("a", QUESTION, "USE A T TEST NOW ok"), dataclasses.replace(r, min_chars=5)) == []  # < 20 letters


SPAM = [  # (one default pattern's spam example, a legitimate answer sharing its words)
    ("Want reach? Buy cheap followers here, best prices!", "Users who buy twice have more followers in the panel."),
    ("Guaranteed returns $$$ just for signing up today", "The cost was $5 per user and $10 per order in the test."),
    ("Loans approved in minutes, call now +1 800 555 0199", "The API call now returns 200 after 3 retries."),
    ("Message me on WhatsApp for the full dataset please", "What's the app's conversion rate compared with the web?"),
    ("Great thread on power analysis, follow me for more", "I will follow back up with the team after the test."),
    ("Learn how I earn $500 per day with this trick", "Users earn 5 points per purchase in the loyalty arm."),
    ("Claim your free crypto airdrop before it ends", "Crypto returns are not free of autocorrelation in this sample."),
    ("Send a DM me for the spreadsheet template", "The DM messages channel had a lower open rate than email."),
    ("Use coupon code SAVE20 at checkout", "The bond's coupon rate does not enter the A/B comparison."),
    ("win win win win win big prizes today", "It is a win win win win situation for both variants."),
]


def test_every_default_pattern_has_a_spam_example(r):
    patterns = rules.compile_patterns(r)
    assert len(SPAM) == len(patterns)
    for pattern, (spam, _) in zip(patterns, SPAM):
        assert pattern.search(spam), (pattern.pattern, spam)


@pytest.mark.parametrize("spam,legit", SPAM)
def test_spam_dropped_and_legitimate_text_sharing_words_kept(r, spam, legit):
    assert reasons_of(pair("a", QUESTION, spam), r) == ["spam"]
    assert reasons_of(pair("a", QUESTION, legit), r) == []


def test_code_is_not_read_for_spam(r):
    output = f"{ANSWER}\n```\n> table(x)\n[1] 0 0 0 0 0 1 1 1\n```"
    assert reasons_of(pair("a", QUESTION, output), r) == []
    assert reasons_of(pair("a", QUESTION, f"{ANSWER} 0 0 0 0 0 1"), r) == ["spam"]


def test_spam_in_the_prompt_counts(r):
    assert reasons_of(pair("a", "DM me for cheap stats homework help", ANSWER), r) == ["spam"]


def test_invalid_spam_pattern_is_one_line_user_error(r):
    with pytest.raises(UserError, match=r"spam_patterns") as err:
        rules.compile_patterns(dataclasses.replace(r, spam_patterns=["(unclosed"]))
    assert "\n" not in str(err.value)


def test_by_origin_overrides_apply(r):
    assert r.by_origin["tweets"]["max_urls"] == 0
    with_url = f"{ANSWER[:200]} https://x.com/a"
    assert reasons_of(pair("s", QUESTION, with_url, origin="stackexchange"), r) == []
    assert reasons_of(pair("t", QUESTION, with_url, origin="tweets"), r) == ["url"]
    long_reply = ANSWER + " " + ANSWER  # over the tweets' 280 characters
    assert len(long_reply) > 280
    assert reasons_of(pair("s", QUESTION, long_reply), r) == []
    assert reasons_of(pair("t", QUESTION, long_reply, origin="tweets"), r) == ["too_long"]
    # tweets lower min_chars to 15: a 16-character reply is fine there, too short elsewhere
    assert reasons_of(pair("t", QUESTION, "Yes, use Welch.!", origin="tweets"), r) == []
    assert reasons_of(pair("s", QUESTION, "Yes, use Welch.!"), r) == ["too_short"]
    # arxiv documents need 200 characters
    assert reasons_of(doc("x", ANSWER, origin="arxiv"), r) == ["too_short"]
    assert reasons_of(doc("x", ANSWER, origin="files"), r) == []


def test_by_origin_spam_patterns_override_applies(r):
    mine = dataclasses.replace(r, by_origin={"tweets": {"spam_patterns": [r"\bgiveaway\b"]}})
    assert reasons_of(pair("t", QUESTION, "Join the giveaway thread today!", origin="tweets"), mine) == ["spam"]
    assert reasons_of(pair("s", QUESTION, "Join the giveaway thread today!"), mine) == []


def test_unknown_by_origin_key_is_one_line_user_error(r):
    bad = dataclasses.replace(r, by_origin={"tweets": {"max_url": 0}})
    with pytest.raises(UserError, match=r"clean\.rules\.by_origin\.tweets\.max_url\b") as err:
        rules.rules_for(bad)
    assert "\n" not in str(err.value)


def test_wrongly_typed_by_origin_value_is_one_line_user_error(r):
    with pytest.raises(UserError, match=r"by_origin\.tweets\.max_urls") as err:
        rules.rules_for(dataclasses.replace(r, by_origin={"tweets": {"max_urls": "none"}}))
    assert "\n" not in str(err.value)
