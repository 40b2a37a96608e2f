"""Tuned against base on the same test items and probes: scores, generations, per-item records."""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.evaluation.generate import generate, prompt_messages, reference, score_references
from slmforge.evaluation.metrics import aggregate, delta, hallucinated, probe_match, rouge_l
from slmforge.io import UserError
from slmforge.params import EvalParams, ModelParams


def evaluate_model(model, tokenizer, test_rows: list[dict], probes: list[dict], params: EvalParams,
                   max_len: int, label: str) -> tuple[dict, list[dict]]:
    scores = score_references(model, tokenizer, test_rows, max_len, params.batch_size, desc=f"{label} ppl")
    test_gen = generate(model, tokenizer, [prompt_messages(r) for r in test_rows], params.max_new_tokens,
                        params.batch_size, desc=f"{label} test")
    probe_gen = generate(model, tokenizer, [prompt_messages(r) for r in probes], params.max_new_tokens,
                         params.batch_size, desc=f"{label} probes")
    rouge = [rouge_l(g, reference(r)) for g, r in zip(test_gen, test_rows)]
    ok = [probe_match(g, p["meta"]["answer"], p["meta"].get("aliases", [])) for g, p in zip(probe_gen, probes)]
    bad = [hallucinated(g, p["meta"]["answer"], p["meta"].get("aliases", []), params.abstain_markers)
           for g, p in zip(probe_gen, probes)]
    items = [{"id": r["id"], "kind": "test", "source": r["source"], "origin": r["meta"].get("origin"),
              "generation": g, "rouge_l": x, **s} for r, g, x, s in zip(test_rows, test_gen, rouge, scores)]
    items += [{"id": p["id"], "kind": "probe", "source": p["source"], "origin": "facts", "generation": g,
               "correct": c, "hallucinated": h} for p, g, c, h in zip(probes, probe_gen, ok, bad)]
    return aggregate(scores, rouge, ok, bad), items


def compare(*, test_rows: list[dict], probes: list[dict], model_params: ModelParams, params: EvalParams,
            max_len: int, base_dir: Path, base_json: Path, adapter_dir: Path) -> dict:
    """Evaluate the base, then the same weights with the adapter attached, on identical inputs."""
    import torch
    from peft import PeftModel
    from transformers import set_seed

    from slmforge.modeling import load_base, set_threads, template_fingerprint

    set_threads()
    set_seed(params.seed)
    card = json.loads((adapter_dir / "slmforge_adapter.json").read_text())
    if params.max_test_items:
        test_rows = test_rows[: params.max_test_items]
    if params.max_probes:
        probes = probes[: params.max_probes]
    model, tokenizer = load_base(model_params, base_dir, base_json)
    if template_fingerprint(tokenizer) != card["template_sha256"]:
        raise UserError(f"{adapter_dir} was trained with another chat template than models/base has: "
                        "run `dvc repro train`")
    base, base_items = evaluate_model(model, tokenizer, test_rows, probes, params, max_len, "base")
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    tuned, tuned_items = evaluate_model(model, tokenizer, test_rows, probes, params, max_len, "tuned")
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    items = []
    refs = {r["id"]: r for r in [*test_rows, *probes]}
    for b, t in zip(base_items, tuned_items):
        row = refs[b["id"]]
        items.append({"id": b["id"], "kind": b["kind"], "source": b["source"], "origin": b["origin"],
                      "question": prompt_messages(row)[-1]["content"], "reference": reference(row),
                      "expected": row["meta"].get("answer"), "base": b, "tuned": t})
    return {"base": base, "tuned": tuned, "delta": delta(base, tuned),
            "template_sha256": card["template_sha256"], "items": items}
