"""`slmforge chat | merge | doctor` with the real embedded base model and real (tiny) LoRA adapters.

Chat is driven through a pseudo-terminal as a user would drive it; the adapters are built here with peft on
the base that conftest materialises, so the tests do not depend on the pipeline's outputs in models/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = b"you> "
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def make_adapter(base_dir: Path, out: Path, model_params, *, random_b: bool, template_sha: str | None = None,
                 load_in_4bit: bool = True, seed: int = 0) -> Path:
    """A LoRA adapter folder as training.save_adapter writes it. random_b=False gives peft's default
    initialisation (B = 0, the base's own answers); True makes the adapter change every logit."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.templates import template_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if tokenizer.pad_token is None:  # as load_base does, so the fingerprint is the one chat computes
        tokenizer.pad_token = tokenizer.eos_token
    config = LoraConfig(r=4, lora_alpha=4, target_modules="all-linear", init_lora_weights=not random_b,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = {"base_model": model_params.hub_id,
            "model": dataclasses.asdict(dataclasses.replace(model_params, load_in_4bit=load_in_4bit)),
            "run_fingerprint": "test" + secrets.token_hex(4),
            "template_sha256": template_sha or template_fingerprint(tokenizer, model_params.chat_template_kwargs)}
    (out / "slmforge_adapter.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def adapters(base_model, model_params, tmp_path_factory):
    base_dir, _ = base_model
    folder = tmp_path_factory.mktemp("adapters")
    zero = make_adapter(base_dir, folder / "zero", model_params, random_b=False)
    stale = folder / "stale"
    shutil.copytree(zero, stale)
    card = json.loads((stale / "slmforge_adapter.json").read_text())
    card["template_sha256"] = "0" * 64
    (stale / "slmforge_adapter.json").write_text(json.dumps(card))
    return {"zero": zero, "stale": stale,
            "random": make_adapter(base_dir, folder / "random", model_params, random_b=True)}


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "APIFY_TOKEN",
                                                             "STACKEXCHANGE_KEY", "HF_TOKEN")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TERM="dumb", **extra)
    return env


class Terminal:
    """The master side of a pseudo-terminal: what the program printed, chunk by chunk, with read times."""

    def __init__(self, fd: int):
        self.fd, self.pending = fd, b""

    def expect(self, marker: bytes, timeout: float) -> list[tuple[float, bytes]]:
        """Chunks read until `marker` appears (the chunk holding it is cut right after it)."""
        chunks: list[tuple[float, bytes]] = [(time.monotonic(), self.pending)] if self.pending else []
        seen, deadline = self.pending, time.monotonic() + timeout
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} within {timeout} s; the program printed: {seen[-3000:]!r}"
            if not select.select([self.fd], [], [], left)[0]:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            assert data, f"the program ended before {marker!r}: {seen[-3000:]!r}"
            chunks.append((time.monotonic(), data))
            seen += data
        cut = seen.index(marker) + len(marker)
        self.pending = seen[cut:]
        kept = len(seen) - len(self.pending)
        out, n = [], 0
        for t, data in chunks:
            if n < kept:
                out.append((t, data[: kept - n]))
            n += len(data)
        return out

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")


@pytest.mark.timeout(300)
def test_chat_streams_an_answer_and_obeys_reset_and_system_in_a_terminal(base_model, adapters):
    base_dir, pin = base_model
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slmforge.cli", "chat", "--base", str(base_dir), "--pin", str(pin),
         "--adapter", str(adapters["zero"]), "--max-new-tokens", "12"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=cli_env(), start_new_session=True)
    os.close(slave)
    term = Terminal(master)
    try:
        term.expect(PROMPT, 240)  # model loaded
        term.send("What is the capital of France?")
        chunks = term.expect(PROMPT, 120)
        text = ANSI.sub(b"", b"".join(d for _, d in chunks)).decode(errors="replace")
        assert "model> " in text, text
        reply = text.split("model> ", 1)[1].rsplit("you> ", 1)[0].strip()
        assert re.search(r"\w", reply), text
        # Streaming: the answer's words arrive in several reads spread over time, not in one write at the end.
        offsets, n = [], 0
        for t, data in chunks:
            offsets.append((t, n, n + len(data), data))
            n += len(data)
        joined = b"".join(d for _, d in chunks)
        start, end = joined.index(b"model> ") + len(b"model> "), joined.rindex(PROMPT)
        carrying = [t for t, a, b, data in offsets
                    if re.search(rb"\w", joined[max(a, start): min(b, end)]) and b > start and a < end]
        assert len(carrying) >= 2, f"the answer came in one piece: {chunks!r}"
        assert carrying[-1] > carrying[0]

        term.send("/reset")
        text = b"".join(d for _, d in term.expect(PROMPT, 30)).decode(errors="replace")
        assert "conversation reset" in text
        term.send("/system Answer in French.")
        text = b"".join(d for _, d in term.expect(PROMPT, 30)).decode(errors="replace")
        assert "system prompt set" in text
        term.send("/system")
        text = b"".join(d for _, d in term.expect(PROMPT, 30)).decode(errors="replace")
        assert "Answer in French." in text.split("\n", 1)[-1]  # the shown prompt, not the echoed command
        term.send("/exit")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_chat_session_keeps_turns_resets_and_trims(base_model, model_params):
    from slmforge.adapter_chat import ChatSession
    from slmforge.errors import UserError
    from slmforge.modeling import load_base

    base_dir, pin = base_model
    model, tokenizer = load_base(dataclasses.replace(model_params, load_in_4bit=False), base_dir, pin)
    session = ChatSession(model, tokenizer, system="You are terse.", max_new_tokens=6)
    pieces = list(session.send("What is the capital of France?"))
    assert len(pieces) >= 2  # whole words as they are decoded, not one string at the end
    assert [m["role"] for m in session.messages()] == ["system", "user", "assistant"]
    assert session.history[-1]["content"] == "".join(pieces).strip() != ""
    list(session.send("And of Italy?"))
    assert [m["role"] for m in session.history] == ["user", "assistant"] * 2

    reply = session.send("Count from one to twenty.")  # closing the stream early (Ctrl-C) keeps what was shown
    first = next(reply)
    reply.close()
    assert session.history[-1] == {"role": "assistant", "content": first.strip()}

    session.reset()
    assert session.history == [] and session.messages() == [{"role": "system", "content": "You are terse."}]
    list(session.send("Hello"))
    session.set_system("Answer in French.")
    assert session.history == [] and session.system == "Answer in French."

    # Trimming: a context one token too small for the whole history drops the oldest pair, keeps the system.
    list(session.send("What is the capital of France?"))
    list(session.send("And of Italy?"))
    full = session.messages() + [{"role": "user", "content": "And of Spain?"}]
    n = len(tokenizer(tokenizer.apply_chat_template(full, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)["input_ids"])
    session.max_context = n + session.max_new_tokens - 1
    list(session.send("And of Spain?"))
    assert session.dropped_turns == 1
    assert session.last_prompt_tokens + session.max_new_tokens <= session.max_context
    assert session.messages()[0]["role"] == "system"
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["And of Italy?", "And of Spain?"]

    # A message that cannot fit even alone is refused and leaves the history as it was.
    before = list(session.history)
    session.max_context = 16
    with pytest.raises(UserError, match="too long"):
        list(session.send("Tell me everything about " + "Paris " * 50))
    assert session.history == before


def test_chat_refuses_a_stale_or_missing_adapter_in_one_line_before_loading_weights(base_model, adapters,
                                                                                   tmp_path, capsys):
    from slmforge.cli import main

    base_dir, pin = base_model
    params = str(ROOT / "params.yaml")
    for adapter, says in [(adapters["stale"], "template_sha256"), (tmp_path / "none", "no trained adapter")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["chat", "--base", str(base_dir), "--pin", str(pin), "--adapter", str(adapter), "--params", params])
        assert exit_info.value.code == 1
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        assert says in lines[0] and "dvc repro train" in lines[0] and "--no-adapter" in lines[0]
        assert "you> " not in captured.out


def test_merge_equals_base_plus_adapter_and_warns_about_nf4(base_model, adapters, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.merge import merge_warning
    from slmforge.cli import main

    base_dir, pin = base_model
    out = tmp_path / "merged"
    main(["merge", "--base", str(base_dir), "--pin", str(pin), "--adapter", str(adapters["random"]),
          "--out", str(out)])
    err = capsys.readouterr().err
    assert "warning:" in err and "NF4" in err and "4-bit" in err

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        base_logits = base(ids).logits
        expected = PeftModel.from_pretrained(base, str(adapters["random"]))(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)(ids).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter matters, so equality below means something
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)
    info = json.loads((out / "slmforge_merge.json").read_text())
    card = json.loads((adapters["random"] / "slmforge_adapter.json").read_text())
    assert info["run_fingerprint"] == card["run_fingerprint"] and info["dtype"] == "float32"
    assert info["trained_in_4bit"] is True and len(info["adapter_sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left

    card["model"]["load_in_4bit"] = False  # an adapter trained on full-precision weights: nothing to warn about
    assert merge_warning(card) is None


def test_doctor_says_which_keys_are_set_never_their_values(tmp_path, monkeypatch, capsys):
    from slmforge.cli import main
    from slmforge.doctor import dvc_line

    fake = {"ANTHROPIC_API_KEY": "sk-ant-" + secrets.token_hex(16), "APIFY_TOKEN": secrets.token_hex(12),
            "STACKEXCHANGE_KEY": secrets.token_hex(10)}
    for key, value in fake.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # outside a DVC repository on purpose: doctor must not fail there
    main(["doctor"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    for key in fake:
        assert f"{key}: set" in lines
    assert "HF_TOKEN: not set" in lines
    for value in fake.values():
        for part in (value, value[-8:], value[:12]):
            assert part not in captured.out and part not in captured.err
    assert any(line.startswith("torch ") and "CUDA" in line for line in lines)
    assert any(line.startswith("bitsandbytes ") and "backend: " in line for line in lines)
    assert any(line.startswith("dvc ") and "not inside a DVC repository" in line for line in lines)
    assert lines[-1].startswith("can run: ") and "claude oracle: yes" in lines[-1]
    assert "default remote:" in dvc_line(ROOT)
