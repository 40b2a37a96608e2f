"""PII scrubbing: e-mails, phone numbers and @handles become placeholders and are counted; numbers that are
statistics, dates or versions are left alone; each kind can be switched off."""

import dataclasses

import pytest

from slmforge.curation.pii import scrub


@pytest.fixture
def pp(params):
    return params.pii


def test_emails_replaced_and_counted(pp):
    out, counts = scrub("Mail jane.doe+ab@example.co.uk or Bob_99@stats.org.", pp)
    assert out == "Mail [email] or [email]."
    assert counts == {"email": 2}


@pytest.mark.parametrize("number", ["+1-555-0142", "(415) 555-2671", "415.555.2671", "+44 20 7946 0958",
                                    "415-555-2671", "1-800-555-0199", "+1 (415) 555-2671"])
def test_phone_numbers_replaced_and_counted(pp, number):
    out, counts = scrub(f"Call me at {number} after five.", pp)
    assert out == "Call me at [phone] after five."
    assert counts == {"phone": 1}


def test_handles_replaced_and_counted(pp):
    out, counts = scrub("Thanks @jane_doe and @Bob123! cc @user", pp)
    assert out == "Thanks @user and @user! cc @user"
    assert counts == {"handle": 2}  # the placeholder itself is not a person


def test_everything_at_once(pp):
    out, counts = scrub("Ask @ana (ana@lab.io, +44 20 7946 0958) or @ben at (415) 555-2671.", pp)
    assert out == "Ask @user ([email], [phone]) or @user at [phone]."
    assert counts == {"handle": 2, "email": 1, "phone": 2}


@pytest.mark.parametrize("text", [
    "n = 30,400 per arm, 49,811 (total 99,622), p = 0.0142, (50412 - 49811)^2/49811",
    "The test ran from 2023-11-24 to 2024-01-05 at 10:30.",
    "Upgrade statsmodels to version 1.2.3.4 or 0.14.1.",
    "| rate | lower | upper |\n| 0.0083 | 0.0167 | 0.0250 |\n| 12.345 | 67.890 | 1234.5678 |",
    "CI (0.0123, 0.0456), totals 1,234,567.89 and 1 000 000 000 rows, seed 20231124.",
    "chi2 = (412 - 398.5)^2 / 398.5 + (388 - 401.5)^2 / 401.5 = 0.9114",
    "see https://stats.stackexchange.com/q/12345 and doi:10.1000/182",
    "R's S4 slots: fit@coef, and email-like text without a domain: user@localhost",
])
def test_statistics_dates_versions_untouched(pp, text):
    assert scrub(text, pp) == (text, {})


def test_decorators_in_code_are_not_handles(pp):
    text = "Thanks @alice!\n```python\n@staticmethod\ndef f(): ...\n```\nIn Java `@Override` marks it."
    out, counts = scrub(text, pp)
    assert out == text.replace("@alice", "@user")
    assert counts == {"handle": 1}


@pytest.mark.parametrize("kind,field", [("email", "emails"), ("phone", "phones"), ("handle", "handles")])
def test_each_kind_switchable_off(pp, kind, field):
    text = "Ask @ana at ana@lab.io or (415) 555-2671."
    out, counts = scrub(text, dataclasses.replace(pp, **{field: False}))
    assert kind not in counts and len(counts) == 2
    original = {"email": "ana@lab.io", "phone": "(415) 555-2671", "handle": "@ana"}
    assert original[kind] in out
    assert all(original[k] not in out for k in original if k != kind)


def test_placeholders_come_from_params(pp):
    mine = dataclasses.replace(pp, placeholders={"email": "<E>", "phone": "<P>", "handle": "@someone"})
    assert scrub("@ana ana@lab.io (415) 555-2671", mine)[0] == "@someone <E> <P>"


def test_phone_region_applies_to_national_numbers(pp):
    uk = "Ring 020 7946 0958 today."
    assert scrub(uk, dataclasses.replace(pp, phone_region="GB")) == ("Ring [phone] today.", {"phone": 1})
