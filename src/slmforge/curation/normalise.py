"""Text normalisation before the filters: invisible characters out, Unicode NFC, whitespace, elongations,
hashtags; code and emoji kept."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

from slmforge.params import NormaliseParams

# Code spans (fenced blocks and `inline`) and URLs pass through untouched: "aaa" in code is a name.
CODE_SPANS = re.compile(r"```.*?```|`[^`\n]*`", re.S)
_PROTECTED = re.compile(r"```.*?```|`[^`\n]*`|https?://\S+|www\.\S+", re.S)
_ELONGATION = re.compile(r"([^\W\d_])\1{2,}")  # a letter three times or more in a row
_HASHTAG = re.compile(r"(?<![\w&])#([^\W\d_][\w]*)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
# Attributes must look like name="value": "P(X<a and Y>b)" and "a<b and c>d" are inequalities, not tags.
_TAGS = re.compile(r"</?(?:p|br|div|span|b|i|em|strong|a)"
                   r"(?:\s+[\w:-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>]+))*\s*/?>", re.I)


# Characters that change how text reads without being seen (the Trojan Source class, CVE-2021-42574, and
# "ASCII smuggling"): a record that renders as one thing and is another must not reach the filters, the oracle or
# training unnoticed. Removed everywhere, code spans included (code is where Trojan Source hides), and counted.
INVISIBLE = {
    # embeddings, overrides and isolates reorder what is displayed; LRM/RLM/ALM are invisible direction marks
    "bidi_control": "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c",
    # zero-width space/non-joiner/joiner, word joiner, invisible operators, BOM (ZWNBSP), Mongolian vowel
    # separator, soft hyphen: "b\u200buy followers" must not slip past the spam patterns
    "zero_width": "\u200b-\u200d\u2060-\u2064\ufeff\u180e\u00ad",
    # Unicode tag characters spell hidden ASCII that a language model reads and a person does not
    "tag_character": "\U000e0000-\U000e007f",
}
_INVISIBLE = re.compile("|".join(f"(?P<{name}>[{chars}])" for name, chars in INVISIBLE.items()))
# Kept where they are part of what is seen: a ZWJ between two pictographs builds one emoji (woman, ZWJ, laptop), and tag
# characters after a black flag spell a subdivision flag (🏴 + gbeng = England).
_PICTO = "\u2600-\u27bf\ufe0f\U0001f000-\U0001faff"
_EMOJI_ZWJ = re.compile(f"(?<=[{_PICTO}])\u200d(?=[{_PICTO}])")
_FLAG_TAGS = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")


def remove_invisible(text: str, removed: Counter | None = None) -> str:
    """`text` without bidi controls, zero-width and tag characters (emoji sequences kept); how many of each
    class went is added to `removed`."""
    if not _INVISIBLE.search(text):
        return text
    keep = {m.start() for m in _EMOJI_ZWJ.finditer(text)}
    for m in _FLAG_TAGS.finditer(text):
        keep.update(range(m.start() + 1, m.end()))
    out = []
    for i, ch in enumerate(text):
        m = _INVISIBLE.match(ch)
        if m is None or i in keep:
            out.append(ch)
        elif removed is not None:
            removed[m.lastgroup] += 1
    return "".join(out)


def _collapse(match: re.Match) -> str:
    # Upper-case runs stay: Roman numerals and acronyms ("Type III sums of squares", "AAA") are not elongations.
    return match.group(0) if match.group(1).isupper() else match.group(1)


def _hashtag_words(match: re.Match) -> str:
    return _CAMEL.sub(" ", match.group(1)).replace("_", " ")


def _normalise_prose(text: str, params: NormaliseParams) -> str:
    if params.elongations:
        text = _ELONGATION.sub(_collapse, text)
    if params.hashtags_to_words:
        text = _HASHTAG.sub(_hashtag_words, text)
    return text


def _outside(spans: re.Pattern, text: str, fn) -> str:
    """`fn` applied to the text between the matches of `spans`; the matches themselves kept as they are."""
    out, last = [], 0
    for m in spans.finditer(text):
        out.append(fn(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(fn(text[last:]))
    return "".join(out)


def _tidy_whitespace(prose: str) -> str:
    prose = re.sub(r"[ \t\u00a0\u2000-\u200a]+", " ", prose)  # emoji are not whitespace and stay
    prose = re.sub(r" *\n *", "\n", prose)
    return re.sub(r"\n{3,}", "\n\n", prose)


def normalise_text(text: str, params: NormaliseParams, removed: Counter | None = None) -> str:
    """Invisible characters removed (counted in `removed`), NFC, HTML entities and stray tags to text,
    elongations collapsed, hashtags to words, whitespace tidied (line breaks kept: they carry structure in
    answers and code). Code spans are otherwise left exactly as written (indentation is syntax in Python and
    YAML) and URLs are not rewritten."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", remove_invisible(text, removed)).replace("\r\n", "\n").replace("\r", "\n")
    if "&" in text or "<" in text:  # scraped text still carrying HTML; code blocks were fenced by the parser
        text = _outside(CODE_SPANS, text, lambda prose: html.unescape(_TAGS.sub(" ", prose)))
    text = _outside(_PROTECTED, text, lambda prose: _normalise_prose(prose, params))
    return _outside(CODE_SPANS, text, _tidy_whitespace).strip()


def normalise_record(rec: dict, params: NormaliseParams, removed: Counter | None = None) -> dict:
    out = dict(rec)
    for field in ("prompt", "response", "text"):
        if isinstance(rec.get(field), str):
            out[field] = normalise_text(rec[field], params, removed)
    return out


def strip_code(text: str) -> str:
    """Prose only: what language detection and the uppercase check should look at."""
    return _PROTECTED.sub(" ", text)
