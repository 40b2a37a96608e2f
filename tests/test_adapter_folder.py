"""The adapter folder's contract: its card is found or the error says what to run, and an adapter is used only with
the chat template it was trained with (the real embedded tokenizer)."""

import json

import pytest

from slmforge.adapter_folder import (ADAPTER_CARD, canonical_adapter_config, check_card_template,
                                     read_adapter_card)
from slmforge.errors import UserError
from slmforge.templates import template_fingerprint


def card_for(tokenizer, kwargs=None) -> dict:
    return {"template_sha256": template_fingerprint(tokenizer, kwargs), "model": {"chat_template_kwargs": kwargs}}


def test_a_folder_without_a_card_names_the_command_that_makes_one(tmp_path):
    with pytest.raises(UserError, match="no trained adapter.*dvc repro train. first"):
        read_adapter_card(tmp_path / "none", "run `dvc repro train` first")


def test_the_card_is_read_back_as_written(tmp_path):
    (tmp_path / ADAPTER_CARD).write_text(json.dumps({"template_sha256": "ab", "model": {}}))
    assert read_adapter_card(tmp_path) == {"template_sha256": "ab", "model": {}}


def test_the_template_it_was_trained_with_passes(tokenizer, tmp_path):
    check_card_template(card_for(tokenizer), tokenizer, tmp_path, "models/base")


def test_another_template_stops_with_the_hint(tokenizer, tmp_path):
    card = card_for(tokenizer) | {"template_sha256": "0" * 64}
    with pytest.raises(UserError, match="another chat template than models/base.*template_sha256 differs.*retrain"):
        check_card_template(card, tokenizer, tmp_path, "models/base", "retrain")


def test_the_callers_template_kwargs_are_checked_against_the_card(tokenizer, tmp_path):
    card = card_for(tokenizer)  # trained without kwargs
    with pytest.raises(UserError, match="template_sha256 differs"):
        check_card_template(card, tokenizer, tmp_path, "models/base", kwargs={"enable_thinking": False})
    check_card_template(card_for(tokenizer, {"enable_thinking": False}), tokenizer, tmp_path, "models/base")


def test_the_saved_module_lists_are_sorted(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "k_proj"],
                                                              "r": 8}))
    canonical_adapter_config(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["k_proj", "q_proj",
                                                                                             "v_proj"]
