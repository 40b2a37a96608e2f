"""Text normalisation before the filters: Unicode NFC, whitespace, elongations, hashtags; code and emoji kept."""

from __future__ import annotations

import html
import re
import unicodedata

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
    prose = re.sub(r"[ \t\u00a0\u2000-\u200b]+", " ", prose)  # emoji are not whitespace and stay
    prose = re.sub(r" *\n *", "\n", prose)
    return re.sub(r"\n{3,}", "\n\n", prose)


def normalise_text(text: str, params: NormaliseParams) -> str:
    """NFC, HTML entities and stray tags to text, elongations collapsed, hashtags to words, whitespace
    tidied (line breaks kept: they carry structure in answers and code). Code spans are left exactly as
    written (indentation is syntax in Python and YAML) and URLs are not rewritten."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    if "&" in text or "<" in text:  # scraped text still carrying HTML; code blocks were fenced by the parser
        text = _outside(CODE_SPANS, text, lambda prose: html.unescape(_TAGS.sub(" ", prose)))
    text = _outside(_PROTECTED, text, lambda prose: _normalise_prose(prose, params))
    return _outside(CODE_SPANS, text, _tidy_whitespace).strip()


def normalise_record(rec: dict, params: NormaliseParams) -> dict:
    out = dict(rec)
    for field in ("prompt", "response", "text"):
        if isinstance(rec.get(field), str):
            out[field] = normalise_text(rec[field], params)
    return out


def strip_code(text: str) -> str:
    """Prose only: what language detection and the uppercase check should look at."""
    return _PROTECTED.sub(" ", text)
