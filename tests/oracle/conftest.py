"""Shared by the oracle tests: a fake Anthropic key made for each test."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def key(monkeypatch) -> str:
    value = secrets.token_hex(20)  # made per run: nothing key-like is stored in the repo
    monkeypatch.setenv("ANTHROPIC_API_KEY", value)
    return value
