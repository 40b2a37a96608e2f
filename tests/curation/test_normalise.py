"""Normalisation: what the filters and the model see is tidy prose, while code, URLs and emoji survive as written."""

import dataclasses
import unicodedata
from collections import Counter

import pytest

from slmforge.curation.normalise import normalise_record, normalise_text, strip_code


@pytest.fixture
def norm(params):
    return lambda text: normalise_text(text, params.normalise)


def test_decomposed_accents_become_composed(norm):
    decomposed = "Cafe\u0301 re\u0301sume\u0301"
    out = norm(decomposed)
    assert out == "Café résumé" and out == unicodedata.normalize("NFC", out)
    assert len(out) == len(decomposed) - 3


def test_whitespace_tidied_but_paragraphs_kept(norm):
    assert norm("  a  b\t\tc\u00a0d \n\n\n\n  e  \r\nf  ") == "a b c d\n\ne\nf"


def test_elongations_collapse_in_prose(norm):
    assert norm("sooo good, Greaaaat!!") == "so good, Great!!"
    assert norm("a normal sentence with cool, bookkeeping and 1000 ideas") == \
        "a normal sentence with cool, bookkeeping and 1000 ideas"


def test_roman_numerals_and_acronyms_are_not_elongations(norm):
    # "Type III" collapsed to "Type I" would be a different statistical method.
    assert norm("Use Type III sums of squares, not Type II; AAA bonds") == \
        "Use Type III sums of squares, not Type II; AAA bonds"


def test_elongations_switchable_off(params):
    off = dataclasses.replace(params.normalise, elongations=False)
    assert normalise_text("sooo good", off) == "sooo good"


def test_hashtags_become_words(norm):
    assert norm("#SampleSize matters for #ab_test design") == "Sample Size matters for ab test design"
    # Not hashtags: a programming language, an issue number, an HTML entity.
    assert norm("C# and F# code, see issue #123") == "C# and F# code, see issue #123"


def test_hashtags_switchable_off(params):
    off = dataclasses.replace(params.normalise, hashtags_to_words=False)
    assert normalise_text("#SampleSize matters", off) == "#SampleSize matters"


def test_html_entities_and_tags_become_text(norm):
    assert norm("x &amp; y &lt; z caf&eacute; &#233;") == "x & y < z café é"
    assert norm("<p>First</p><p>second <b>bold</b> <a href=\"http://x.com/q\">link</a><br/>end</p>") == \
        "First second bold link end"


def test_inequalities_are_not_tags(norm):
    # "<a and Y>" looks like the start of an <a ...> tag; removing it would change the maths.
    assert norm("P(X<a and Y>b) is small & positive") == "P(X<a and Y>b) is small & positive"
    assert norm("if a<b and c>d then") == "if a<b and c>d then"


def test_emoji_kept(norm):
    assert norm("I \u2764\ufe0f stats 🎉👍🏽") == "I \u2764\ufe0f stats 🎉👍🏽"


@pytest.mark.parametrize("code", [
    "```\naaa = 1\n```",
    "```python\ndef f(x):\n    if x:\n        return  1  # sooo\n```",  # indentation is syntax
    "```r\nx <- c(1, 2)  &amp;\n#SampleSize <b and c>\n```",
])
def test_code_blocks_untouched(norm, code):
    assert norm(f"Try this:\n\n{code}\n\nsooo easy") == f"Try this:\n\n{code}\n\nso easy"


def test_inline_code_and_urls_untouched(norm):
    text = "Call `aaa_bbb(#x, a<b and c>d)` then see http://x.com/aaaa#Section and www.xxx.org/SoOOo_page"
    assert norm(text) == text


def test_record_fields_normalised_and_others_kept(params):
    rec = {"id": "x", "kind": "pair", "prompt": "sooo  #SampleSize?", "response": "Cafe\u0301", "text": None,
           "meta": {"hashtags": ["SampleSize"]}}
    out = normalise_record(rec, params.normalise)
    assert out["prompt"] == "so Sample Size?" and out["response"] == "Café" and out["text"] is None
    assert out["meta"] == rec["meta"] and rec["prompt"] == "sooo  #SampleSize?"  # the raw record is untouched


def test_strip_code_leaves_prose_only():
    out = strip_code("prose ```\nCODE HERE\n``` more `INLINE` http://x.com/PATH end")
    assert "CODE" not in out and "INLINE" not in out and "PATH" not in out
    assert out.split() == ["prose", "more", "end"]


# The Trojan Source characters (CVE-2021-42574): embeddings, overrides, isolates and their terminators.
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad"


@pytest.mark.parametrize("ch", list(BIDI + ZERO_WIDTH) + ["\U000e0001", "\U000e0041", "\U000e007f"])
def test_every_invisible_character_is_removed_in_prose_and_in_code(norm, ch):
    assert norm(f"the{ch} p-value{ch} is small") == "the p-value is small"
    assert norm(f"use `x{ch} = 1` here") == "use `x = 1` here"  # code is where Trojan Source hides


def test_the_trojan_source_early_return_reads_as_what_it_is(params):
    # From the paper: a comment that visually closes the string and an `if` that is really inside it.
    attack = 'access_level = "user\u202e \u2066// Check if admin\u2069 \u2066"\nif access_level != "user":'
    removed = Counter()
    out = normalise_text(f"```python\n{attack}\n```", params.normalise, removed)
    assert out == '```python\naccess_level = "user // Check if admin "\nif access_level != "user":\n```'
    assert removed == {"bidi_control": 4}


def test_emoji_sequences_keep_their_joiners_and_tags(norm):
    technologist = "\U0001f469\u200d\U0001f4bb"  # woman, ZWJ, laptop: one emoji
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"  # flag tag sequence
    heart_on_fire = "\u2764\ufe0f\u200d\U0001f525"
    text = f"ship it {technologist} {england} {heart_on_fire}"
    assert norm(text) == text


def test_nothing_to_remove_leaves_text_and_counts_alone(params):
    removed = Counter()
    assert normalise_text("plain text", params.normalise, removed) == "plain text" and not removed
