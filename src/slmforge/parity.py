"""Parity of an exported model with what evaluate measured: the same fact probes and test items answered greedily by
the NF4 base + adapter (the training numerics), by the merged model and by the GGUF loaded back with transformers;
for each artifact, the share of answers identical to the reference's, probe accuracy, and whether its tokenizer
renders every prompt to the same token ids (the chat template and end-of-turn token carried over)."""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.evaluation.generate import generate, prompt_messages
from slmforge.evaluation.metrics import probe_match
from slmforge.params import ModelParams


def prompt_ids(tokenizer, rows: list[dict], template_kwargs: dict | None = None) -> list[list[int]]:
    from slmforge.templates import render

    return [render(tokenizer, prompt_messages(r), template_kwargs or {}, add_generation_prompt=True, tokenize=True)
            for r in rows]


def answer(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int, label: str,
           cache_id=None, template_kwargs: dict | None = None) -> list[dict]:
    return generate(model, tokenizer, [prompt_messages(r) for r in rows], max_new_tokens, batch_size,
                    desc=f"{label} generate", cache_id=cache_id, template_kwargs=template_kwargs)


def reference_answers(params: ModelParams, base_dir: Path, base_json: Path, adapter_dir: Path, rows: list[dict],
                      max_new_tokens: int, batch_size: int) -> list[dict]:
    """NF4 base + adapter in the layout training computed with. On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit
    weights for inference into a layout whose kernel rounds differently (on a test adapter, logits up to 1.07 apart
    from the training layout, against 1e-4 for the merge into the dequantised weights), so the repack is disabled
    here as train disables it; the generation key says so, apart from evaluate's answers."""
    import torch
    from peft import PeftModel

    from slmforge.adapter_folder import adapter_sha
    from slmforge.modeling import disable_cpu_repack, load_base, model_fingerprint

    model, tokenizer = load_base(params, base_dir, base_json)
    if params.load_in_4bit:
        disable_cpu_repack(model)
    pin = json.loads(Path(base_json).read_text())
    fingerprint = (f"{model_fingerprint(Path(base_dir), pin)}|4bit={params.load_in_4bit}|{params.compute_dtype}|"
                   f"{'cuda' if torch.cuda.is_available() else 'cpu'}|training-layout")
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    out = answer(model, tokenizer, rows, max_new_tokens, batch_size, "reference (NF4 + adapter)",
                 (fingerprint, adapter_sha(Path(adapter_dir))), template_kwargs=params.chat_template_kwargs)
    del model
    return out


def probe_accuracy(answers: list[dict], rows: list[dict]) -> float | None:
    hits = [probe_match(a["text"], r["meta"]["answer"], r["meta"].get("aliases", []))
            for a, r in zip(answers, rows) if r.get("kind") == "probe"]
    return sum(hits) / len(hits) if hits else None


def compare_artifact(reference: list[dict], answers: list[dict], rows: list[dict], ref_ids: list[list[int]],
                     ids: list[list[int]], eos_token: str, ref_eos: str) -> dict:
    same = [a["text"] == r["text"] for a, r in zip(answers, reference)]
    return {"agreement": sum(same) / len(same) if same else None, "identical_answers": sum(same),
            "prefix_agreement": sum(map(_prefix_share, answers, reference)) / len(same) if same else None,
            "probe_accuracy": probe_accuracy(answers, rows), "eos_rate": sum(a["eos"] for a in answers) / max(1, len(answers)),
            "prompt_ids_identical": sum(a == b for a, b in zip(ids, ref_ids)) / max(1, len(ids)),
            "eos_token": eos_token, "eos_token_matches": eos_token == ref_eos}


def _prefix_share(answer: dict, reference: dict) -> float:
    """The share of the reference's words the answer repeats before it first differs (1.0: identical). Greedy
    decoding amplifies a last-digit difference into another word, after which everything differs: this says
    how far two answers went together."""
    ref, got = reference["text"].split(), answer["text"].split()
    if not ref:
        return float(not got)
    same = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    return same / max(len(ref), len(got))


def parity_rows(test_rows: list[dict], probes: list[dict], n_test: int) -> list[dict]:
    """Every probe and the first n_test test items, each marked with its kind."""
    return ([{**p, "kind": "probe"} for p in probes] + [{**r, "kind": "test"} for r in test_rows[:n_test]])


def summary(rows: list[dict], reference: list[dict], artifacts: dict[str, dict], max_new_tokens: int) -> dict:
    return {"probes": sum(r["kind"] == "probe" for r in rows), "test_items": sum(r["kind"] == "test" for r in rows),
            "max_new_tokens": max_new_tokens, "decoding": "greedy",
            "reference": {"numerics": "NF4 base + adapter (what train learned on and evaluate measured)",
                          "probe_accuracy": probe_accuracy(reference, rows),
                          "eos_rate": sum(a["eos"] for a in reference) / max(1, len(reference))},
            **artifacts}


def items(rows: list[dict], reference: list[dict], answers: dict[str, list[dict]]) -> list[dict]:
    """One line per item: the reference's answer beside each artifact's, for reading a disagreement."""
    return [{"id": r["id"], "kind": r["kind"], "question": prompt_messages(r)[-1]["content"],
             "expected": r["meta"].get("answer"), "reference": ref["text"],
             **{name: a[i]["text"] for name, a in answers.items()}}
            for i, (r, ref) in enumerate(zip(rows, reference))]
