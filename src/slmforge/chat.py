"""Chat with the base model and its adapter (streamed, greedy, with history), and the merged-model export.

`slmforge chat` and `slmforge merge` (src/slmforge/cli.py) are the terminal side; everything here works
without a terminal, so tests drive it directly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

from slmforge.io import UserError, atomic_dir, atomic_write_json
from slmforge.params import ModelParams
from slmforge.templates import render, stop_token_ids

NO_ADAPTER_HINT = "run `dvc repro train` or pass --no-adapter"


def read_adapter_card(adapter_dir: str | Path, hint: str = NO_ADAPTER_HINT) -> dict:
    """slmforge_adapter.json of a trained adapter (written by training.save_adapter)."""
    card = Path(adapter_dir) / "slmforge_adapter.json"
    if not card.exists():
        raise UserError(f"{adapter_dir}: no trained adapter (no {card.name}): {hint}")
    return json.loads(card.read_text(encoding="utf-8"))


def check_template(card: dict, tokenizer, adapter_dir: str | Path, base_dir: str | Path,
                   hint: str = NO_ADAPTER_HINT) -> None:
    """The base's template, rendered with the kwargs the adapter was trained with, must be the adapter's."""
    from slmforge.templates import template_fingerprint

    kwargs = card["model"].get("chat_template_kwargs") or {}
    if card["template_sha256"] != template_fingerprint(tokenizer, kwargs):
        raise UserError(f"{adapter_dir} was trained with another chat template than {base_dir} has "
                        f"(template_sha256 differs): {hint}")


def load_chat_model(params: ModelParams, base_dir: str | Path, base_json: str | Path,
                    adapter_dir: str | Path | None):
    """The base (4-bit NF4 when params say so) with the adapter attached, and the tokenizer.

    The adapter and template are checked before the weights load, so a stale adapter fails in a second.
    No disable_cpu_repack here: chat never trains, so bitsandbytes' CPU inference layout is what we want.
    """
    from slmforge.modeling import load_base, load_tokenizer, resolve_base

    resolve_base(base_dir, base_json)  # a missing base is a one-line error before anything loads
    if adapter_dir is not None:
        card = read_adapter_card(adapter_dir)
        check_template(card, load_tokenizer(base_dir), adapter_dir, base_dir)
    model, tokenizer = load_base(params, base_dir, base_json)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


class ChatSession:
    """One conversation: an optional system prompt, the user/assistant turns, greedy streamed replies.

    The history is trimmed from its oldest turn pair when the prompt plus `max_new_tokens` would not fit
    in the model's context; the system prompt always stays.
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 256,
                 max_context: int | None = None, template_kwargs: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.template_kwargs = template_kwargs or {}  # model.chat_template_kwargs: Qwen3's thinking off by default
        self.system = system or None
        self.max_new_tokens = max_new_tokens
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 2048
        self.history: list[dict] = []
        self.dropped_turns = 0  # turn pairs trimmed since the last reset
        self.last_prompt_tokens = 0

    def head(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def messages(self) -> list[dict]:
        return self.head() + self.history

    def reset(self) -> None:
        self.history, self.dropped_turns = [], 0

    def set_system(self, text: str | None) -> None:
        """A new system prompt starts a new conversation: earlier answers were made under the old one."""
        self.system = text or None
        self.reset()

    def _encode(self):
        """The prompt's token ids, after dropping the oldest turn pairs that do not fit. A message that
        cannot fit even alone is refused and leaves the history as it was."""
        drop = 0
        while True:
            text = render(self.tokenizer, self.head() + self.history[2 * drop:], self.template_kwargs,
                          add_generation_prompt=True)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            n = enc["input_ids"].shape[1]
            if n + self.max_new_tokens <= self.max_context or len(self.history) - 2 * drop <= 1:
                break
            drop += 1
        if n + self.max_new_tokens > self.max_context:
            self.history.pop()
            raise UserError(f"message too long: {n} prompt tokens + {self.max_new_tokens} new tokens exceed "
                            f"the model's context of {self.max_context}: shorten it or lower --max-new-tokens")
        del self.history[: 2 * drop]
        self.dropped_turns += drop
        self.last_prompt_tokens = n
        return enc

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to `text` piece by piece (whole words, as TextIteratorStreamer emits them) and
        record both turns. Closing the iterator early stops generation and keeps what was shown."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.history.append({"role": "user", "content": text})
        enc = {k: v.to(self.model.device) for k, v in self._encode().items()}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failure: list[BaseException] = []

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        def work() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                        streamer=streamer, pad_token_id=self.tokenizer.pad_token_id,
                                        eos_token_id=stop_token_ids(self.model, self.tokenizer),
                                        stopping_criteria=StoppingCriteriaList([Stop()]))
            except BaseException as exc:  # re-raised in the caller's thread; end() unblocks the reader
                failure.append(exc)
                streamer.end()

        # generate() runs in a thread and pushes decoded text into the streamer's queue as it goes.
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            stop.set()
            thread.join()
            if failure:
                self.history.pop()
            else:
                self.history.append({"role": "assistant", "content": "".join(pieces).strip()})
        if failure:
            raise failure[0]


# --- merge -------------------------------------------------------------------------------------

MERGE_HINT = "run `dvc repro train` first"


def merge_warning(card: dict) -> str | None:
    """Why the merged model is not quite the model `evaluate` measured, when the adapter was trained on NF4."""
    if not card["model"]["load_in_4bit"]:
        return None
    return ("the adapter was trained against NF4-quantised (4-bit) base weights; the merged model adds it to "
            "the full-precision weights, so its outputs differ from what `evaluate` measured by about the "
            "quantisation error. Merging into 4-bit weights is not offered: re-quantising the merged weights "
            "would round away most of the LoRA update. For the exact evaluated model, load the 4-bit base "
            "with the adapter (`slmforge chat`).")


def merge_adapter(base_dir: str | Path, base_json: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  dtype: str = "float32") -> dict:
    """Fold the LoRA update into full-precision base weights and save model, tokenizer and
    slmforge_merge.json into out_dir, atomically. Returns what slmforge_merge.json records."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from slmforge.modeling import load_tokenizer, resolve_base
    from slmforge.training import file_sha256

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    where, revision = resolve_base(base_dir, base_json)
    card = read_adapter_card(adapter_dir, MERGE_HINT)
    tokenizer = load_tokenizer(base_dir)
    check_template(card, tokenizer, adapter_dir, base_dir, MERGE_HINT)
    kwargs = {"revision": revision} if revision else {}
    # Merge in float32 whatever the output dtype, so the sum W + BA is not rounded twice.
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, device_map={"": "cpu"}, **kwargs)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model = model.to(torch_dtype)
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    info = {
        "base": json.loads(Path(base_json).read_text(encoding="utf-8")), "base_weights": where,
        "revision": revision, "adapter": str(adapter_dir),
        "adapter_sha256": file_sha256(weights) if weights.exists() else None,
        "run_fingerprint": card["run_fingerprint"], "template_sha256": card["template_sha256"],
        "trained_in_4bit": card["model"]["load_in_4bit"], "dtype": dtype,
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(Path(tmp) / "slmforge_merge.json", info)
    return info
