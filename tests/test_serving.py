"""`slmforge serve` through the official `openai` client against 127.0.0.1: the real embedded base in NF4 with two
tiny adapters made here, streamed and whole answers, and bad requests answered with OpenAI's error body."""

from __future__ import annotations

import json
import threading

import openai
import pytest

from tests.test_cli import make_adapter

QUESTION = [{"role": "system", "content": "You are an expert."},
            {"role": "user", "content": "What is a p-value?"}]


@pytest.fixture(scope="module")
def served(base_model, model_params, tmp_path_factory):
    from slmforge.serving import Server, build_app, load_served_model

    base_dir, base_json = base_model
    folder = tmp_path_factory.mktemp("served")
    adapters = {"stats": make_adapter(base_dir, folder / "stats", model_params, random_b=True, seed=1),
                "tweets": make_adapter(base_dir, folder / "tweets", model_params, random_b=True, seed=2)}
    model, tokenizer = load_served_model(model_params, base_dir, base_json, adapters)
    server = Server(build_app(model, tokenizer, list(adapters)), "127.0.0.1", 0)
    port = server.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    yield client, adapters
    server.stop()


def ask(client, model: str, max_tokens: int = 12, messages=QUESTION) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def reference(base_model, model_params, served):
    """Greedy answers of the NF4 base alone and with each adapter attached on its own (PeftModel.from_pretrained,
    then unloaded), through evaluate's generate() with the training chat template and stop token: what the
    server, switching adapters on one shared base, must reproduce."""
    from peft import PeftModel

    from slmforge.evaluation.generate import generate
    from slmforge.modeling import load_base

    _, adapters = served
    model, tokenizer = load_base(model_params, *base_model)
    answers = {"base": generate(model, tokenizer, [QUESTION], 12, 1)[0]}
    for name, path in adapters.items():
        peft_model = PeftModel.from_pretrained(model, str(path))
        answers[name] = generate(peft_model, tokenizer, [QUESTION], 12, 1)[0]
        model = peft_model.unload()
    return answers


def test_models_lists_the_base_and_every_adapter(served):
    client, _ = served
    assert [m.id for m in client.models.list()] == ["base", "stats", "tweets"]
    assert client.models.retrieve("tweets").id == "tweets"


def test_each_model_answers_as_its_adapter_alone_with_the_training_template(served, reference):
    client, _ = served
    for name in ("base", "stats", "tweets"):
        reply = ask(client, name)
        assert reply.model == name and reply.choices[0].message.role == "assistant"
        assert reply.choices[0].message.content.strip() == reference[name]["text"], name
        assert reply.choices[0].finish_reason == ("stop" if reference[name]["eos"] else "length")
        assert reply.usage.completion_tokens == reference[name]["tokens"] + int(reference[name]["eos"])
    assert len({reference[n]["text"] for n in reference}) == 3  # the three really are different models


def test_streamed_answer_arrives_in_pieces_and_equals_the_whole_one(served):
    client, _ = served
    whole = ask(client, "stats").choices[0].message.content
    chunks = list(client.chat.completions.create(model="stats", messages=QUESTION, max_tokens=12, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3 and "".join(pieces) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_two_adapters_asked_at_once_each_answer_as_their_own(served, reference):
    client, _ = served
    got: dict[str, list[str]] = {"stats": [], "tweets": []}

    def worker(name: str) -> None:
        for _ in range(3):
            got[name].append(ask(client, name).choices[0].message.content.strip())

    threads = [threading.Thread(target=worker, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, answers in got.items():
        assert answers == [reference[name]["text"]] * 3, name


def test_unknown_model_is_a_404_with_an_openai_error_body(served):
    client, _ = served
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "finance")
    body = err.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model" and "finance" in body["message"]


def test_empty_messages_are_a_400(served):
    client, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "stats", messages=[])
    assert err.value.body["param"] == "messages" and err.value.body["type"] == "invalid_request_error"


def test_max_tokens_beyond_the_context_is_a_400_naming_the_context(served):
    client, _ = served
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "base", max_tokens=1_000_000)
    assert err.value.body["code"] == "context_length_exceeded" and "maximum context length" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        ask(client, "base", max_tokens=0)


def test_vllm_command_names_every_adapter(served, base_model):
    from slmforge.serving import vllm_command

    _, adapters = served
    command = vllm_command(*base_model, adapters)
    assert command.startswith("vllm serve ") and "--enable-lora" in command and "--quantization bitsandbytes" in command
    assert f"stats={adapters['stats']}" in command and f"tweets={adapters['tweets']}" in command
    assert "--max-lora-rank 8" in command  # r=4 rounded up to a rank vLLM builds buffers for
    pin = json.loads(base_model[1].read_text())
    assert pin["source"] == "gguf_package" and str(base_model[0]) in command


def test_serve_vllm_finds_every_adapter_of_the_run(served, base_model, tmp_path):
    import shutil
    import subprocess
    import sys

    _, adapters = served
    for name, path in adapters.items():  # models/adapters/<domain>/ as the train stages write them
        shutil.copytree(path, tmp_path / "adapters" / name)
    out = subprocess.run([sys.executable, "-m", "slmforge.cli", "serve", "--vllm", "--base", str(base_model[0]),
                          "--pin", str(base_model[1]), "--adapters-dir", str(tmp_path / "adapters")],
                         capture_output=True, text=True, check=True).stdout
    assert f"--lora-modules stats={tmp_path / 'adapters/stats'} tweets={tmp_path / 'adapters/tweets'}" in out
    bad = subprocess.run([sys.executable, "-m", "slmforge.cli", "serve", "--adapter", "no-path"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --adapter 'no-path': expected NAME=PATH (for example stats=models/adapters/stats)"]
