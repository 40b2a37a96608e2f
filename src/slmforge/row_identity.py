"""Row identity: what names a record or chat row across stages (its origin, its question key, its seeded hash).

Every stage that groups, samples or templates rows asks these four functions, so collect, clean, chatml,
calibrate and split agree on what a row is:

- `origin_of`: meta.origin (what the source says the record is: stackexchange, tweets, facts, synthetic, files
  ...), or the record's source when meta.origin is missing or empty, or "unknown" when it has neither.
- `question_key`: the normalised question (lower case, no punctuation, single spaces) exact duplicates share.
- `user_text`: the user turns of a chat row, joined.
- `stable_hash`: sha256 over a salt and a key, the seeded order samples and splits draw by.
"""

from __future__ import annotations

import hashlib
import re


def stable_hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()


def question_key(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def user_text(row: dict) -> str:
    return " ".join(m["content"] for m in row["messages"] if m["role"] == "user")


def origin_of(row: dict) -> str:
    return (row.get("meta") or {}).get("origin") or row.get("source") or "unknown"
