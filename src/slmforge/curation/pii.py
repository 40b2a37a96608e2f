"""PII scrubbing: e-mail addresses, phone numbers (Google's libphonenumber) and @handles to placeholders."""

from __future__ import annotations

import re
from collections import Counter

import phonenumbers

from slmforge.curation.normalise import CODE_SPANS
from slmforge.params import PiiParams

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.I)
HANDLE = re.compile(r"(?<![\w.@/])@\w{1,15}\b")
_DIGITS = re.compile(r"\d[\d\s().-]{6,}\d")  # cheap gate: libphonenumber runs only where a number could be
# libphonenumber's POSSIBLE leniency also matches arithmetic ("0.0083  0.0167", "(50412 - 49811)"), which
# statistics answers are full of; a match must also be written the way people write phone numbers.
# A US trunk prefix ("1-800-555-0199", "1 (800) ...") counts too, but not "1 000 000 000" (a spaced thousand).
_PHONE_SHAPE = re.compile(r"(?:\+\d{1,3}[\s.-]?|1[.-]|1 (?=\())?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,3}")


def _phone_like(raw: str) -> bool:
    digits = sum(c.isdigit() for c in raw)
    return bool(_PHONE_SHAPE.fullmatch(raw)) and (digits >= 10 or (raw.startswith("+") and digits >= 8))


def scrub(text: str, params: PiiParams) -> tuple[str, Counter]:
    """The text with each PII item replaced by its placeholder, and the count of each kind replaced."""
    counts: Counter = Counter()
    if not text:
        return text, counts
    if params.emails:
        text, n = EMAIL.subn(params.placeholders["email"], text)
        if n:
            counts["email"] += n
    if params.phones and _DIGITS.search(text):
        # POSSIBLE leniency: fictional 555 numbers are not "valid" but are still someone's number format.
        matches = [m for m in phonenumbers.PhoneNumberMatcher(text, params.phone_region, leniency=phonenumbers.Leniency.POSSIBLE)
                   if _phone_like(m.raw_string)]
        for m in reversed(matches):
            text = text[:m.start] + params.placeholders["phone"] + text[m.end:]
        if matches:
            counts["phone"] += len(matches)
    if params.handles:
        # Not inside code: "@staticmethod", "@Override" and roxygen's "@param" are code, not people.
        placeholder = params.placeholders["handle"]
        out, last = [], 0
        for code in [*CODE_SPANS.finditer(text), None]:
            prose = text[last:code.start() if code else len(text)]
            counts["handle"] += sum(1 for m in HANDLE.finditer(prose) if m.group(0) != placeholder)
            out += [HANDLE.sub(placeholder, prose), code.group(0) if code else ""]
            last = code.end() if code else len(text)
        text = "".join(out)
        if not counts["handle"]:
            del counts["handle"]
    return text, counts
