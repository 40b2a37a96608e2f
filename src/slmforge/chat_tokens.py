"""Chat tokenisation for training and scoring: a conversation as input_ids with assistant-only labels (any chat
template), cut to a maximum length with what the cut did, and the rounds of an epoch packed so a repeated example
never meets its own copy. chatml.py makes the conversations; this module makes their tokens.
"""

from __future__ import annotations

from collections import Counter

from slmforge.errors import UserError
from slmforge.templates import fit_roles, render


def tokenize_chat(tokenizer, messages: list[dict], max_len: int, template_kwargs: dict | None = None,
                  stats: Counter | None = None) -> dict:
    """input_ids and labels of one conversation, labels -100 everywhere but the assistant turns.

    The row is the whole conversation rendered once with the model's chat template (slmforge.templates.render).
    An assistant turn's tokens are found by rendering the conversation up to it with the generation prompt, and
    up to and including it: both must be prefixes of the whole (the prefix property, checked for every turn),
    and what lies between (content and end-of-turn) is what the model must learn to produce. This works for any
    chat template, with or without {% generation %} markers. A template that re-renders earlier turns (Qwen3
    drops their <think> blocks) breaks the property for those turns: they stay in the row as context, unlabelled
    and counted (`context_only_turns`), never mislabelled; the last turn must satisfy it.
    `stats` counts truncated rows and context-only turns.
    """
    kwargs = template_kwargs or {}
    messages = fit_roles(messages, tokenizer, kwargs)
    full = render(tokenizer, messages, kwargs, tokenize=True)
    labels = [-100] * len(full)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for i in turns:
        start = render(tokenizer, messages[:i], kwargs, add_generation_prompt=True, tokenize=True)
        end = render(tokenizer, messages[: i + 1], kwargs, tokenize=True)
        if full[: len(start)] == start and full[: len(end)] == end and len(end) > len(start):
            labels[len(start): len(end)] = full[len(start): len(end)]
        elif i == turns[-1]:
            raise UserError("chat template renders a prompt differently once the answer follows it; "
                            "assistant-only loss cannot locate the answer tokens")
        elif stats is not None:
            stats["context_only_turns"] += 1
    if stats is not None and len(full) > max_len:
        stats["truncated"] += 1
    return {"input_ids": full[:max_len], "labels": labels[:max_len]}


def tokenize_within(tokenizer, messages: list[dict], max_len: int, template_kwargs: dict | None = None,
                    stats: Counter | None = None) -> tuple[dict, str | None]:
    """tokenize_chat cut to max_len, and what the cut did: None (the conversation fits), "truncated" (answer tokens
    are left) or "answer_truncated_away" (none is left: nothing to learn from, nothing to score). `stats` counts
    the turns kept as context only (tokenize_chat)."""
    turns: Counter = Counter()
    # one token more than fits tells a cut conversation
    example = tokenize_chat(tokenizer, messages, max_len + 1, template_kwargs, turns)
    if stats is not None:
        stats["context_only_turns"] += turns["context_only_turns"]
    if len(example["input_ids"]) <= max_len:
        return example, None
    example = {k: v[:max_len] for k, v in example.items()}
    return example, "truncated" if any(label != -100 for label in example["labels"]) else "answer_truncated_away"


def build_dataset(rows: list[dict], tokenizer, max_len: int, fates: dict[str, set] | None = None, *,
                  template_kwargs: dict | None = None, stats: Counter | None = None):
    """The examples of `rows`; `fates`, when given, collects the ids of rows cut by max_len, by what the cut did
    (a row repeated by origin_weights counts once); `stats` counts rows in, truncated (the end cut by max_len),
    dropped (no answer token left) and context-only turns."""
    from datasets import Dataset

    stats = Counter() if stats is None else stats
    kept = []
    for i, row in enumerate(rows):
        example, fate = tokenize_within(tokenizer, row["messages"], max_len, template_kwargs, stats)
        if fate is None and not any(label != -100 for label in example["labels"]):
            fate = "no_answer_tokens"
        if fate is not None and fates is not None:
            fates.setdefault(fate, set()).add(row.get("id", i))
        stats["rows"] += 1
        stats["truncated"] += fate in ("truncated", "answer_truncated_away")
        # An answer cut off entirely by max_len has nothing to learn from: dropped, and counted above.
        if fate not in ("answer_truncated_away", "no_answer_tokens"):
            kept.append(example)
        else:
            stats["dropped_no_answer_left"] += 1
    return Dataset.from_list(kept)


def epoch_rounds(rows: list[dict], weights: dict[str, float], seed: int) -> list[list[dict]]:
    """The rows of one epoch, as rounds: a weight w for an origin means int(w) full passes over its rows
    plus a seeded random fraction w - int(w) of them (origins not named weigh 1). Round r holds every
    origin's r-th pass, shuffled."""
    import random

    by_origin: dict[str, list[dict]] = {}
    for row in rows:
        by_origin.setdefault(row.get("meta", {}).get("origin", ""), []).append(row)
    rounds: list[list[dict]] = []
    for origin, members in sorted(by_origin.items()):
        weight = weights.get(origin, 1.0)
        passes = [list(members) for _ in range(int(weight))]
        frac = weight - int(weight)
        if frac > 0:
            picked = list(members)
            random.Random(f"{seed}:{origin}").shuffle(picked)
            passes.append(picked[: round(frac * len(picked))])
        for r, chosen in enumerate(passes):
            if r == len(rounds):
                rounds.append([])
            rounds[r].extend(chosen)
    for r, chosen in enumerate(rounds):
        random.Random(seed + r).shuffle(chosen)
    return [r for r in rounds if r]


def pack_rounds(rows: list[dict], tokenizer, max_len: int, weights: dict[str, float], seed: int,
                fates: dict[str, set] | None = None, *, template_kwargs: dict | None = None,
                stats: Counter | None = None):
    """Packed training rows in which a repeated example never meets its own copy.

    Packing all copies at once (best-fit decreasing sorts by length) puts identical copies side by side in
    one row, so a fact would be seen k times in one step and then never again. Instead each round of
    `epoch_rounds` is packed on its own; the Trainer's sampler then spreads the rows over the epoch.
    """
    from datasets import concatenate_datasets
    from trl.data_utils import pack_dataset

    return concatenate_datasets([pack_dataset(build_dataset(chosen, tokenizer, max_len, fates,
                                                            template_kwargs=template_kwargs, stats=stats),
                                              max_len, "bfd")
                                 for chosen in epoch_rounds(rows, weights, seed)])
