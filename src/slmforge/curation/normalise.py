"""Text normalisation before the filters: Unicode NFC, whitespace, elongations, hashtags; code and emoji kept."""

from __future__ import annotations

import html
import re
import unicodedata

from slmforge.params import NormaliseParams

# Code spans (fenced blocks and `inline`) and URLs pass through untouched: "aaa" in code is a name.
_PROTECTED = re.compile(r"```.*?```|`[^`\n]*`|https?://\S+|www\.\S+", re.S)
_ELONGATION = re.compile(r"([^\W\d_])\1{2,}")  # a letter three times or more in a row
_HASHTAG = re.compile(r"(?<![\w&])#([^\W\d_][\w]*)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_TAGS = re.compile(r"</?(?:p|br|div|span|b|i|em|strong|a)(?:\s[^<>]*)?/?>", re.I)


def _hashtag_words(match: re.Match) -> str:
    return _CAMEL.sub(" ", match.group(1)).replace("_", " ")


def _normalise_prose(text: str, params: NormaliseParams) -> str:
    if params.elongations:
        text = _ELONGATION.sub(r"\1", text)
    if params.hashtags_to_words:
        text = _HASHTAG.sub(_hashtag_words, text)
    return text


def normalise_text(text: str, params: NormaliseParams) -> str:
    """NFC, HTML entities and stray tags to text, elongations collapsed, hashtags to words, whitespace
    tidied (line breaks kept: they carry structure in answers and code)."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text)
    if "&" in text or "<" in text:  # scraped text still carrying HTML; code blocks were fenced by the parser
        text = html.unescape(_TAGS.sub(" ", text))
    out, last = [], 0
    for m in _PROTECTED.finditer(text):
        out.append(_normalise_prose(text[last:m.start()], params))
        out.append(m.group(0))
        last = m.end()
    out.append(_normalise_prose(text[last:], params))
    text = "".join(out).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\u00a0\u2000-\u200b]+", " ", text)  # emoji are not whitespace and stay
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def normalise_record(rec: dict, params: NormaliseParams) -> dict:
    out = dict(rec)
    for field in ("prompt", "response", "text"):
        if isinstance(rec.get(field), str):
            out[field] = normalise_text(rec[field], params)
    return out


def strip_code(text: str) -> str:
    """Prose only: what language detection and the uppercase check should look at."""
    return _PROTECTED.sub(" ", text)
