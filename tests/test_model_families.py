"""Real architectures and their real chat templates (Llama 3.2, Qwen2.5, Qwen3, Mistral, Gemma 2), as tiny
randomly initialised models in a local hub cache, through the same code as a user's run: the base stage's hub path
(pinned offline), tokenize_chat, packing, training steps, evaluate's scoring and generation, chat, merge and the
student scorer. And the traps of the templates: Qwen3's <think> blocks, Mistral and Gemma without a system turn,
Llama 3.x's date, templates that re-render earlier turns."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from slmforge.errors import UserError
from slmforge.modeling import materialise
from slmforge.params import EvalParams, LoraParams, ScorerParams, TrainParams, build, compose
from slmforge.templates import check_template, fit_roles, render, stop_token_ids, strip_think, template_fingerprint
from slmforge.chat_tokens import tokenize_chat
from tests.conftest import chat_row
from tests.tiny_models import FAMILIES, model_params, use_cache

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(FAMILIES)
SYSTEM = "You are an expert in A/B testing and statistics."
TWO_TURNS = [{"role": "system", "content": SYSTEM},
             {"role": "user", "content": "What is a p-value?"},
             {"role": "assistant", "content": "The chance of data this extreme under the null."},
             {"role": "user", "content": "And the sample size?"},
             {"role": "assistant", "content": "More users give more power."}]


def conf(group: str, name: str, cls, **overrides):
    return build(cls, {**compose(ROOT / "conf", [f"{group}={name}"])[group], **overrides}, group)


@pytest.fixture(scope="module")
def hub(tiny_hub):
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, tiny_hub[0])
        yield tiny_hub


@pytest.fixture(scope="module")
def tokenizers(hub, tmp_path_factory):
    """Each family's tokenizer as the base stage leaves it in models/base (pinned from the hub cache)."""
    from transformers import AutoTokenizer

    out = {}
    for name in NAMES:
        folder = tmp_path_factory.mktemp(name)
        materialise(model_params(name), folder / "base", folder / "base.json")
        out[name] = AutoTokenizer.from_pretrained(str(folder / "base"))
        if out[name].pad_token is None:  # as load_base does
            out[name].pad_token = out[name].eos_token
    return out


def learned_spans(tokenizer, example) -> list[str]:
    """The decoded runs of labelled tokens."""
    spans, run = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != -100:
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


# --- templates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_assistant_turn_is_labelled_with_its_end_of_turn(tokenizers, name):
    """The prefix property, checked turn by turn: each labelled span is exactly one answer and the token that
    ends its turn; no prompt token is learned. Qwen3 re-renders the first answer differently once a later user
    turn follows it, so that turn stays unlabelled context (counted), never mislabelled."""
    tok, family = tokenizers[name], FAMILIES[name]
    stats = Counter()
    ex = tokenize_chat(tok, TWO_TURNS, 512, family.kwargs, stats)
    spans = learned_spans(tok, ex)
    answers = [m["content"] for m in TWO_TURNS if m["role"] == "assistant"]
    expected = answers[1:] if name == "qwen3" else answers
    assert len(spans) == len(expected), spans
    for span, answer in zip(spans, expected):
        assert span.strip().startswith(answer) and family.end_of_turn in span, (span, answer)
        assert span.split(family.end_of_turn)[0].strip() == answer  # nothing of the prompt before it
    assert stats["context_only_turns"] == (1 if name == "qwen3" else 0)
    assert tok.decode(ex["input_ids"]).count("What is a p-value?") == 1


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_a_system_prompt_is_merged_into_the_first_user_turn_where_the_template_has_none(tokenizers, name):
    tok = tokenizers[name]
    messages = fit_roles(TWO_TURNS, tok, FAMILIES[name].kwargs)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == f"{SYSTEM}\n\nWhat is a p-value?"
    # in the prompt and in the prompt followed by its answer alike (Mistral's own template drops it from the latter)
    prompt = render(tok, TWO_TURNS[:2], {}, add_generation_prompt=True)
    full = render(tok, TWO_TURNS[:3], {})
    assert SYSTEM in prompt and SYSTEM in full and full.startswith(prompt.rstrip())


@pytest.mark.parametrize("name", ["llama3", "qwen2_5", "qwen3"])
def test_templates_with_a_system_turn_keep_it_as_its_own_turn(tokenizers, name):
    assert fit_roles(TWO_TURNS, tokenizers[name], FAMILIES[name].kwargs) == TWO_TURNS


def test_qwen3_teaches_no_empty_think_block_and_prompts_with_thinking_off(tokenizers):
    tok, kwargs = tokenizers["qwen3"], FAMILIES["qwen3"].kwargs
    row = chat_row("a", "What is SRM?", "Sample ratio mismatch.")["messages"]
    (span,) = learned_spans(tok, tokenize_chat(tok, row, 256, kwargs))
    assert "<think>" not in span and span.startswith("Sample ratio mismatch.")
    assert render(tok, row[:-1], kwargs, add_generation_prompt=True).endswith("<think>\n\n</think>\n\n")
    # configured on: the template's own behaviour, an (empty) think block the model learns to write
    (span,) = learned_spans(tok, tokenize_chat(tok, row, 256, {"enable_thinking": True}))
    assert span.startswith("<think>")


def test_think_text_is_stripped_from_answers():
    assert strip_think("<think>\nLet me see.\n</think>\n\nAlpha is 0.05.") == "Alpha is 0.05."
    assert strip_think("reasoning opened in the prompt</think>Alpha.") == "Alpha."
    assert strip_think("<think>never finished") == ""
    assert strip_think("Plain answer.") == "Plain answer."


def test_llama_date_is_pinned_so_rows_and_fingerprint_do_not_change_with_the_day(tokenizers, monkeypatch):
    import datetime as dt

    tok, kwargs = tokenizers["llama3"], FAMILIES["llama3"].kwargs
    row = chat_row("a", "What is SRM?", "Sample ratio mismatch.")["messages"]
    today = tokenize_chat(tok, row, 256, kwargs)

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2031, 2, 3, tzinfo=tz)

    monkeypatch.setattr(dt, "datetime", Later)
    assert tokenize_chat(tok, row, 256, kwargs) == today
    assert "Today Date: 26 Jul 2024" in tok.decode(today["input_ids"])
    assert template_fingerprint(tok, kwargs) == template_fingerprint(tok, dict(kwargs))
    with pytest.raises(UserError, match="date_string") as err:
        check_template(tok, {"enable_thinking": False})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["llama3", "gemma2"])
def test_generation_stops_at_the_end_of_turn_token_not_only_the_eos(hub, tokenizers, name, tmp_path):
    """Llama 3.x ends a turn with <|eot_id|>, Gemma with <end_of_turn>: the generation_config names them."""
    from transformers import AutoModelForCausalLM

    from slmforge.evaluation.generate import generate

    tok, family = tokenizers[name], FAMILIES[name]
    model = AutoModelForCausalLM.from_pretrained(family.hub_id, revision=hub[1][name], dtype=torch.float32).eval()
    end = tok.convert_tokens_to_ids(family.end_of_turn)
    assert end in stop_token_ids(model, tok)
    if name == "gemma2":
        assert end != tok.eos_token_id  # the trap: the tokenizer's EOS is <eos>, turns end with <end_of_turn>

    def after(module, args, output):  # the model's first choice is the end-of-turn token
        output[..., end] += 1e4
        return output

    model.get_output_embeddings().register_forward_hook(after)
    (out,) = generate(model, tok, [[{"role": "user", "content": "Hi"}]], 16, 1, store=tmp_path,
                      template_kwargs=family.kwargs)
    assert out["eos"] and out["tokens"] == 0 and out["text"] == ""


# --- a user's run, per family -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=NAMES)
def run(request, hub, tmp_path_factory):
    """base (hub path) -> train (packing, 3 steps) -> evaluate (scoring, generation), as the stages call them."""
    from slmforge.evaluation.compare import compare
    from slmforge.training import train

    name = request.param
    top = tmp_path_factory.mktemp(f"run_{name}")
    params = model_params(name)
    pin = materialise(params, top / "base", top / "base.json")
    rows = [chat_row(f"r{i}", f"What does metric {i} measure in an A/B test?", f"Metric {i} measures lift {i}.")
            for i in range(6)] + [{"id": "multi", "source": "sample", "meta": {"origin": "stackexchange"},
                                   "provenance": {}, "messages": TWO_TURNS}]
    probes = [chat_row(f"p{i}", f"What is Lumen's default alpha {i}?", "0.025", origin="facts", answer="0.025")
              for i in range(2)]
    train_params = conf("train", "tiny", TrainParams, max_steps=3, max_seq_len=384, eval_steps=3,
                        max_train_examples=0)
    lora = conf("lora", "r8", LoraParams)
    summary = train(train_rows=rows, val_rows=rows[:2], data_files=[], model_params=params, lora=lora,
                    params=train_params, base_dir=top / "base", base_json=top / "base.json",
                    adapter_dir=top / "adapter", metrics_dir=top / "metrics", checkpoint_root=top / "ckpt")
    eval_params = conf("eval", "tiny", EvalParams, max_new_tokens=8, bootstrap=50)
    eval_params = dataclasses.replace(eval_params, judge=dataclasses.replace(eval_params.judge, enabled=False))
    result = compare(test_rows=rows[:3] + rows[-1:], probes=probes, model_params=params, params=eval_params,
                     max_len=384, base_dir=top / "base", base_json=top / "base.json", adapter_dir=top / "adapter")
    return {"name": name, "top": top, "params": params, "pin": pin, "summary": summary, "result": result,
            "rows": rows}


def test_the_base_stage_pins_the_hub_model_offline(run, hub):
    assert run["pin"]["source"] == "hub" and run["pin"]["commit"] == hub[1][run["name"]]
    base = run["top"] / "base"
    assert (base / "config.json").exists() and not (base / "model.safetensors").exists()  # weights stay in the cache
    assert (base / "chat_template.jinja").read_text() == (Path(__file__).parent / "fixtures/chat_templates" /
                                                           FAMILIES[run["name"]].template).read_text()


def test_training_runs_packed_and_saves_an_adapter_with_the_fingerprint(run):
    s = run["summary"]
    assert s["last_step"] == 3 and torch.isfinite(torch.tensor(s["eval_loss"]))
    assert s["attention"] == ("eager" if run["name"] == "gemma2" else "sdpa") and s["loss_kernel"] == "model"
    assert s["tokenisation"]["train"]["rows"] == len(run["rows"])
    assert s["tokenisation"]["train"]["context_only_turns"] == (1 if run["name"] == "qwen3" else 0)
    card = json.loads((run["top"] / "adapter/slmforge_adapter.json").read_text())
    assert card["model"]["chat_template_kwargs"] == FAMILIES[run["name"]].kwargs
    assert card["template_sha256"] == s["template_sha256"]


def test_evaluate_scores_and_generates_with_the_models_template(run):
    r = run["result"]
    assert r["base"]["items"] == 4 and r["base"]["probes"] == 2
    for side in ("base", "tuned"):
        assert torch.isfinite(torch.tensor(r[side]["perplexity"])) and 0 <= r[side]["rouge_l"] <= 1
        assert r[side]["references"]["truncated"] == 0
    assert all(isinstance(i["tuned"]["generation"], str) for i in r["items"])


def test_chat_merge_and_the_student_scorer_run_on_the_family(run):
    from transformers import AutoModelForCausalLM

    from slmforge.adapter_chat import ChatSession, load_chat_model
    from slmforge.merge import merge_adapter
    from slmforge.params import RubricParams, compose
    from slmforge.student import load_scorer, predict, train_scorer

    top, params = run["top"], run["params"]
    model, tok = load_chat_model(params, top / "base", top / "base.json", top / "adapter")
    session = ChatSession(model, tok, system=SYSTEM, max_new_tokens=4, template_kwargs=params.chat_template_kwargs)
    for question in ("Hello?", "And the sample size?"):
        "".join(session.send(question))
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2

    info = merge_adapter(top / "base", top / "base.json", top / "adapter", top / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(top / "merged"))
    assert info["revision"] == run["pin"]["commit"] and merged.config.model_type == FAMILIES[run["name"]].architecture

    rubric = build(RubricParams, compose(ROOT / "conf")["rubric"], "rubric")
    labels = {r["id"]: {"id": r["id"], "scores": {d: float(k % 10) for d in rubric.dimensions}}
              for k, r in enumerate(run["rows"])}
    scorer = conf("scorer", "tiny", ScorerParams, max_steps=2, eval_steps=2, batch_size=4)
    train_scorer(train_rows=run["rows"], val_rows=run["rows"][:2], labels=labels, rubric=rubric, model_params=params,
                 params=scorer, base_dir=top / "base", base_json=top / "base.json", out_dir=top / "scorer",
                 metrics_dir=top / "scorer_metrics", checkpoint_dir=top / "scorer_ckpt")
    model, tok, card = load_scorer(top / "scorer", top / "base", top / "base.json")
    scores = predict(model, tok, run["rows"][:2], card, 2)
    assert [set(s["scores"]) for s in scores] == [set(rubric.dimensions)] * 2
