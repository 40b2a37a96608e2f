"""Normalisation: what the filters and the model see is tidy prose, while code, URLs and emoji survive as written."""

import dataclasses
import unicodedata

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
