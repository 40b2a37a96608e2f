"""How the tuned model runs, beside how well: the probes and a sample of test items on the full-precision base, with
and without the adapter (a gain that exists only on the NF4 weights the adapter was trained against shows here),
and generation latency per query (median, p95) and tokens/s for base and tuned."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from slmforge.evaluation.generate import generate, prompt_messages, reference
from slmforge.evaluation.metrics import probe_match, rouge_l
from slmforge.params import EvalParams, ModelParams


def _side(gen: list[dict], rows: list[dict]) -> dict:
    probes = [probe_match(g["text"], r["meta"]["answer"], r["meta"].get("aliases", []))
              for g, r in zip(gen, rows) if r["meta"].get("origin") == "facts" and "answer" in r["meta"]]
    tests = [rouge_l(g["text"], reference(r)) for g, r in zip(gen, rows)
             if not (r["meta"].get("origin") == "facts" and "answer" in r["meta"])]
    return {"probe_accuracy": sum(probes) / len(probes) if probes else None,
            "rouge_l": sum(tests) / len(tests) if tests else None}


def numerics_rows(test_rows: list[dict], probes: list[dict], params: EvalParams) -> list[dict]:
    return [*probes, *test_rows[: params.numerics.test_items]]


def full_precision(model_params: ModelParams, base_dir: Path, base_json: Path, adapter_dir: Path, rows: list[dict],
                   params: EvalParams, fingerprint: str, adapter_key: str) -> dict[str, dict]:
    """{'full': ..., 'full+adapter': ...}: the same rows answered on the original float32 weights (what a merge
    into them, lm-eval with peft=, or vLLM on the unquantised base would run)."""
    from peft import PeftModel

    from slmforge.modeling import load_base

    full_params = dataclasses.replace(model_params, load_in_4bit=False, compute_dtype="float32")
    model, tokenizer = load_base(full_params, base_dir, base_json)
    key = fingerprint.replace(f"4bit={model_params.load_in_4bit}|{model_params.compute_dtype}", "4bit=False|float32")
    convs = [prompt_messages(r) for r in rows]
    kwargs = model_params.chat_template_kwargs
    base = generate(model, tokenizer, convs, params.max_new_tokens, params.batch_size, "full-precision base",
                    cache_id=(key, None), template_kwargs=kwargs)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    tuned = generate(model, tokenizer, convs, params.max_new_tokens, params.batch_size, "full-precision tuned",
                     cache_id=(key, adapter_key), template_kwargs=kwargs)
    return {"full": _side(base, rows), "full+adapter": _side(tuned, rows)}


def numerics_summary(rows: list[dict], items: list[dict], full: dict[str, dict]) -> dict:
    """The four sides on the same rows; NF4's from evaluate's own answers."""
    by_id = {i["id"]: i for i in items}
    nf4 = {side: _side([{"text": by_id[r["id"]][side]["generation"]} for r in rows], rows) for side in ("base", "tuned")}
    sides = {"nf4": nf4["base"], "nf4+adapter": nf4["tuned"], **full}

    def gain(a: str, b: str, key: str):
        x, y = sides[a][key], sides[b][key]
        return None if x is None or y is None else y - x

    return {"probes": sum(r["meta"].get("origin") == "facts" for r in rows), "test_items": len(rows) -
            sum(r["meta"].get("origin") == "facts" for r in rows), "sides": sides,
            "probe_gain": {"nf4": gain("nf4", "nf4+adapter", "probe_accuracy"),
                           "full": gain("full", "full+adapter", "probe_accuracy")},
            "rouge_l_gain": {"nf4": gain("nf4", "nf4+adapter", "rouge_l"),
                             "full": gain("full", "full+adapter", "rouge_l")}}


def render(numerics: dict | None) -> list[str]:
    if not numerics:
        return []
    fmt = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"  # noqa: E731
    lines = ["", "## Numerics: the NF4 weights it was trained on, and the full-precision ones", "",
             f"{numerics['probes']} probes and {numerics['test_items']} test items, greedy, on each side. A gain only "
             "on NF4 is lost by a merge into the original weights (`slmforge export --from full`, lm-eval's `peft=`, "
             "vLLM on the unquantised base): `slmforge export` merges into the dequantised NF4 weights instead.", "",
             "| weights | probe accuracy | ROUGE-L | probe gain | ROUGE-L gain |", "|---|---:|---:|---:|---:|"]
    s = numerics["sides"]
    for name, label in (("nf4", "NF4 (as trained)"), ("full", "full precision")):
        lines.append(f"| {label}: base | {fmt(s[name]['probe_accuracy'])} | {fmt(s[name]['rouge_l'])} | | |")
        tuned = s[f"{name}+adapter"]
        lines.append(f"| {label}: + adapter | {fmt(tuned['probe_accuracy'])} | {fmt(tuned['rouge_l'])} | "
                     f"{fmt(numerics['probe_gain'][name])} | {fmt(numerics['rouge_l_gain'][name])} |")
    return lines


def latency(model, tokenizer, rows: list[dict], max_new_tokens: int, n: int, template_kwargs: dict | None = None) -> dict:
    """Wall-clock generation of n queries one at a time, as a server answers them (batch 1, greedy, KV cache, no
    generation cache), after one untimed warm-up query (one-time costs: kernels, 4-bit layouts, allocations)."""
    import numpy as np
    import torch

    from slmforge.templates import render, stop_token_ids

    kwargs = template_kwargs or {}
    stops = stop_token_ids(model, tokenizer)  # an answer ends at its end-of-turn token, as generate's do
    convs = [prompt_messages(r) for r in rows[:n]]
    seconds, tokens = [], []
    with torch.no_grad():
        for i, conv in enumerate([*convs[:1], *convs]):
            ids = render(tokenizer, conv, kwargs, add_generation_prompt=True, tokenize=True)
            enc = {"input_ids": torch.tensor([ids], device=model.device)}
            enc["attention_mask"] = torch.ones_like(enc["input_ids"])
            start = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            if i:  # the first is the warm-up
                seconds.append(time.perf_counter() - start)
                tokens.append(int(out.shape[1] - enc["input_ids"].shape[1]))
    if not seconds:
        return {"queries": 0}
    return {"queries": len(seconds), "median_s": float(np.median(seconds)),
            "p95_s": float(np.percentile(seconds, 95)), "tokens_per_s": sum(tokens) / sum(seconds),
            "mean_new_tokens": sum(tokens) / len(tokens), "max_new_tokens": max_new_tokens}


def write_latency(path: str | Path, base: dict, tuned: dict) -> None:
    """metrics/runs/latency/<domain>.json: wall-clock facts of this machine, a run fact no stage reads."""
    from slmforge.io import atomic_write_text

    ratio = (tuned["median_s"] / base["median_s"]) if base.get("median_s") and tuned.get("median_s") else None
    atomic_write_text(path, json.dumps({"base": base, "tuned": tuned, "tuned_over_base_median": ratio},
                                       indent=1) + "\n")
