"""Rule filters: length bounds, URLs, media, hashtags, shouting and spam patterns, per-origin overrides."""

from __future__ import annotations

import dataclasses
import functools
import re

from slmforge.curation.normalise import CODE_SPANS, strip_code
from slmforge.errors import UserError
from slmforge.params import RuleParams, build

URL = re.compile(r"https?://\S+|\bwww\.\S+|\b[\w-]+\.(?:com|net|org|io|biz|ly|co)/\S*", re.I)
HASHTAG = re.compile(r"(?<![\w&])#\w+")


def rules_for(params: RuleParams) -> dict[str, RuleParams]:
    """The rule set of each origin in by_origin (with its overrides applied) plus `default`."""
    names = {f.name for f in dataclasses.fields(RuleParams)} - {"by_origin"}
    out = {"default": params}
    for origin, overrides in params.by_origin.items():
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UserError(f"params.yaml: clean.rules.by_origin.{origin}.{unknown[0]} is not a rule "
                            f"(rules: {', '.join(sorted(names))})")
        # Built like the section itself, so a wrong type ({max_urls: "0"}) is a one-line error, not a TypeError later.
        merged = {name: getattr(params, name) for name in names | {"by_origin"}} | overrides
        out[origin] = build(RuleParams, merged, f"clean.rules.by_origin.{origin}")
        compile_patterns(out[origin])  # a bad per-origin pattern fails here, before any record is read
    return out


def compile_patterns(params: RuleParams) -> list[re.Pattern]:
    return list(_compiled(tuple(params.spam_patterns)))


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    try:
        return tuple(re.compile(p, re.I) for p in patterns)
    except re.error as exc:
        raise UserError(f"params.yaml: clean.rules.spam_patterns: {exc.pattern!r} is not a valid regex: {exc}") from None


def body(rec: dict) -> str:
    """What a record says: the answer of a pair, the text of a document."""
    return (rec.get("response") if rec.get("kind") == "pair" else rec.get("text")) or ""


def rule_reasons(rec: dict, raw: dict, rules: RuleParams, patterns: list[re.Pattern]) -> list[str]:
    """Every rule the normalised record `rec` breaks, as reason names; empty when it passes. Hashtags are
    counted on the `raw` record, since normalisation turns them into words."""
    if [p.pattern for p in patterns] != list(rules.spam_patterns):
        patterns = compile_patterns(rules)  # by_origin overrides spam_patterns: its own list applies, not the default's
    reasons = []
    main = body(rec)
    if rec.get("kind") == "pair" and len(rec.get("prompt") or "") < rules.min_prompt_chars:
        reasons.append("prompt_too_short")
    if len(main) < rules.min_chars:
        reasons.append("too_short")
    if len(main) > rules.max_chars:
        reasons.append("too_long")
    if len(URL.findall(main)) > rules.max_urls:
        reasons.append("url")
    meta = rec.get("meta") or {}
    if rules.drop_media and (meta.get("media") or meta.get("has_media")):
        reasons.append("media")
    if max(len(HASHTAG.findall(body(raw))), len(meta.get("hashtags") or [])) > rules.max_hashtags:
        reasons.append("hashtags")
    letters = [c for c in strip_code(main) if c.isalpha()]
    if len(letters) >= 20 and sum(c.isupper() for c in letters) / len(letters) > rules.max_upper_ratio:
        reasons.append("shouting")
    # Code is not read for spam: R prints "[1] 0 0 0 0 0 1", which is not a word repeated by a spammer.
    whole = CODE_SPANS.sub(" ", f"{rec.get('prompt') or ''}\n{main}")
    if any(p.search(whole) for p in patterns):
        reasons.append("spam")
    return reasons
