"""A conversation rendered with the model's own chat template, the quirks of real templates handled in one place.

Every place that renders a conversation (tokenisation for training and scoring, evaluation's prompts, chat, the
local oracle) goes through `render`, so they all see the same tokens:
- `model.chat_template_kwargs` reach the template (Qwen3's `enable_thinking`, Llama 3.x's `date_string`);
- a template that rejects a system turn (Gemma) or moves it to the last user turn (Mistral, so a prompt and
  the same prompt followed by its answer render differently) gets the system prompt merged into the first user
  turn instead;
- a template that writes today's date (Llama 3.x) must be given one, or the training rows would change with the
  day they were made.
"""

from __future__ import annotations

import hashlib
import json

from slmforge.errors import UserError

_PROBE = ("slmforge-system-probe", "slmforge-user-probe", "slmforge-answer-probe")
_KEEPS_SYSTEM: dict[str, bool] = {}


def _key(tokenizer, kwargs: dict) -> str:
    return json.dumps([tokenizer.chat_template, tokenizer.bos_token, tokenizer.eos_token, kwargs], sort_keys=True,
                      default=str)


def check_template(tokenizer, kwargs: dict, where: str = "model") -> None:
    """One line when the tokenizer has no chat template, or its rendering would depend on the wall clock."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise UserError(f"{where}: the tokenizer has no (single) chat template: pick an instruct/chat model")
    if "strftime_now" in template and "date_string" not in kwargs:
        raise UserError(f"{where}.chat_template_kwargs: this chat template writes today's date into every "
                        "conversation (Llama 3.x), so rows rendered on two days would differ: set date_string, "
                        "e.g. {date_string: '26 Jul 2024'} (the template's own fallback)")


def keeps_system(tokenizer, kwargs: dict) -> bool:
    """Whether the template renders a system turn both before a generation prompt and before an answer.

    Gemma raises on it; Mistral renders it only when the user turn after it is the last message, so the prompt
    has it and the prompt followed by its answer does not."""
    key = _key(tokenizer, kwargs)
    if key not in _KEEPS_SYSTEM:
        head = [{"role": "system", "content": _PROBE[0]}, {"role": "user", "content": _PROBE[1]}]
        try:
            prompt = tokenizer.apply_chat_template(head, add_generation_prompt=True, tokenize=False, **kwargs)
            full = tokenizer.apply_chat_template(head + [{"role": "assistant", "content": _PROBE[2]}],
                                                 tokenize=False, **kwargs)
            _KEEPS_SYSTEM[key] = _PROBE[0] in prompt and _PROBE[0] in full
        except Exception:  # jinja2's TemplateError from raise_exception(...): the template refuses the role
            _KEEPS_SYSTEM[key] = False
    return _KEEPS_SYSTEM[key]


def fit_roles(messages: list[dict], tokenizer, kwargs: dict) -> list[dict]:
    """The messages as this template can render them: a leading system turn merged into the first user turn
    (system text, a blank line, the user's text) when the template drops or rejects system turns."""
    if not messages or messages[0]["role"] != "system" or keeps_system(tokenizer, kwargs):
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0]["role"] == "user":
        return [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}" if system else rest[0]["content"]},
                *rest[1:]]
    return [{"role": "user", "content": system}, *rest] if system else rest


def render(tokenizer, messages: list[dict], kwargs: dict, *, add_generation_prompt: bool = False,
           tokenize: bool = False):
    """The conversation as text (or token ids with tokenize=True), with the template's quirks handled."""
    return tokenizer.apply_chat_template(fit_roles(messages, tokenizer, kwargs), add_generation_prompt=add_generation_prompt,
                                         tokenize=tokenize, return_dict=False, **kwargs)


def strip_think(text: str) -> str:
    """The answer without its reasoning: what follows the last </think> (Qwen3, DeepSeek-R1; some templates open
    <think> in the prompt, so only the closing tag is in the answer), or nothing when thinking never ended."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    if "<think>" in text:
        return text.split("<think>", 1)[0].strip()
    return text


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation_config.eos_token_id, which
    for Llama 3.x (<|eot_id|>) and Gemma (<end_of_turn>) names the end-of-turn token the tokenizer's EOS is not."""
    ids: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(token, int) and token not in ids:
                ids.append(token)
    return ids


def template_fingerprint(tokenizer, kwargs: dict | None = None) -> str:
    """sha256 of the chat template, its kwargs, EOS and pad tokens: rows, adapter and evaluation must agree on it.
    The template's text, not a rendering: a template that writes a date is pinned by its kwargs, not the clock."""
    blob = {"template": tokenizer.chat_template, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token}
    if kwargs:  # absent when empty, so the fingerprint of a model without kwargs is what it always was
        blob["kwargs"] = kwargs
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
