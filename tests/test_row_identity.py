"""Row identity: the origin, question key, user text and seeded hash every stage names a row by."""

from __future__ import annotations

import hashlib

import pytest

from slmforge.row_identity import origin_of, question_key, stable_hash, user_text


@pytest.mark.parametrize(("row", "origin"), [
    ({"source": "sample", "meta": {"origin": "facts"}}, "facts"),  # meta.origin wins over the source
    ({"source": "files", "meta": {}}, "files"),  # no origin: the configured source name
    ({"source": "files", "meta": {"origin": None}}, "files"),
    ({"source": "files", "meta": {"origin": ""}}, "files"),
    ({"source": "files"}, "files"),  # no meta at all
    ({"source": "files", "meta": None}, "files"),
    ({"meta": {}}, "unknown"),  # a malformed raw record (clean rejects it, and still counts it by origin)
])
def test_origin_is_meta_origin_else_the_source_else_unknown(row, origin):
    assert origin_of(row) == origin


def test_question_key_ignores_case_punctuation_and_spacing():
    assert question_key("  What is a p-value?\n") == question_key("what is a pvalue") == "what is a pvalue"
    assert question_key("What is a p-value?") != question_key("What is a t-value?")


def test_question_key_keeps_non_ascii_letters():
    assert question_key("Qu'est-ce qu'une Moyenne ?") == "questce quune moyenne"


def test_user_text_joins_the_user_turns_only():
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]}
    assert user_text(row) == "Q1 Q2"


def test_stable_hash_is_sha256_of_salt_and_key_and_depends_on_both():
    assert stable_hash("s", "k") == hashlib.sha256(b"s\x00k").hexdigest()
    assert stable_hash("s", "k") == stable_hash("s", "k")
    assert len({stable_hash("s", "k"), stable_hash("t", "k"), stable_hash("s", "j")}) == 3
    # the separator keeps a salt/key boundary from sliding: ("ab", "c") and ("a", "bc") draw differently
    assert stable_hash("ab", "c") != stable_hash("a", "bc")
