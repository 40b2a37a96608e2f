"""Chat with the base model and its adapter: streamed, greedy replies with a history trimmed to the context.

`slmforge chat` (src/slmforge/cli.py) is the terminal side; everything here works without a terminal, so tests
drive it directly. The merged-model export is slmforge.merge.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from slmforge.adapter_folder import check_card_template, read_adapter_card
from slmforge.errors import UserError
from slmforge.params import ModelParams
from slmforge.templates import render, stop_token_ids

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
        check_card_template(card, load_tokenizer(base_dir), adapter_dir, base_dir)
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
