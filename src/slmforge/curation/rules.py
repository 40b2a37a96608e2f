"""Rule filters: length bounds, URLs, media, hashtags, shouting and spam patterns, per-origin overrides."""

from __future__ import annotations

import dataclasses
import re

from slmforge.curation.normalise import strip_code
from slmforge.io import UserError
from slmforge.params import RuleParams

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
        out[origin] = dataclasses.replace(params, **overrides)
    return out


def compile_patterns(params: RuleParams) -> list[re.Pattern]:
    try:
        return [re.compile(p, re.I) for p in params.spam_patterns]
    except re.error as exc:
        raise UserError(f"params.yaml: clean.rules.spam_patterns: {exc.pattern!r} is not a valid regex: {exc}") from None


def body(rec: dict) -> str:
    """What a record says: the answer of a pair, the text of a document."""
    return (rec.get("response") if rec.get("kind") == "pair" else rec.get("text")) or ""


def rule_reasons(rec: dict, raw: dict, rules: RuleParams, patterns: list[re.Pattern]) -> list[str]:
    """Every rule the normalised record `rec` breaks, as reason names; empty when it passes. Hashtags are
    counted on the `raw` record, since normalisation turns them into words."""
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
    whole = f"{rec.get('prompt') or ''}\n{main}"
    if any(p.search(whole) for p in patterns):
        reasons.append("spam")
    return reasons
