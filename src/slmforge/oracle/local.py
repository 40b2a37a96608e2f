"""The local oracle: a Hugging Face chat model answering by schema-guided decoding, offline and free.

The answer's JSON is written by us, the values by the model: keys and punctuation are forced, a number is the
expectation over the probabilities of the score tokens (as G-Eval does, so even a small model gives a graded
score rather than one token's argmax), and a string is generated greedily up to its closing quote. The
answer is therefore always valid JSON of the schema's shape; only its content is the model's.

The same answer on every machine of a kind, whatever its cores and whatever else runs: on a CPU the oracle
computes in float32 on THREADS threads of its own, one request at a time. Measured on SmolLM2-135M (8 synth
requests of the sample corpus, this project's 2-core AVX512-BF16 machine): in bfloat16, 1 thread and 2 threads
wrote different text for 3 of the 8 documents (for one, other questions: synthesize's de-duplication across
documents then drops other pairs), because a matrix product split over more threads sums in another order and
bfloat16 keeps 8 bits of it; greedy decoding takes another token at a near tie and the string follows it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from slmforge.errors import UserError
from slmforge.modeling import model_fingerprint, resolve_base
from slmforge.oracle.types import Answer, Request
from slmforge.params import OracleParams


# One thread: a result that depends on no core count, and on a shared 2-core machine the fastest too (8 synth
# requests: 281 s on one thread against 1,044 s on two while other processes were busy: OpenMP workers spin-wait
# on each other). A bigger local oracle belongs on a GPU, where this does not apply.
THREADS = 1
# Part of every answer's cache key (with the dtype and threads): bump it when the decoding below changes what it
# writes for a request, so an answer made by another decoder is never taken for this one's.
DECODER_VERSION = 2


@contextlib.contextmanager
def torch_threads(n: int):
    """torch computes on `n` threads inside, on what it had outside afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalBackend:
    name = "local"

    def __init__(self, params: OracleParams, model_dir=None, model_json=None):
        """The oracle's own model, as the oracle_model stage materialised it (models/oracle, models/oracle.json):
        never the model under training, so changing `model` changes no answer."""
        self.params = params
        if not model_dir or not model_json or not Path(model_json).exists() or not Path(model_dir, "config.json").exists():
            raise UserError("the local oracle needs its own model (models/oracle, models/oracle.json): "
                            "run `dvc repro oracle_model`")
        pin = json.loads(Path(model_json).read_text())
        named = {"gguf_package": "embedded", "hub": pin.get("hub_id"), "folder": pin.get("path")}.get(pin["source"])
        if named != params.model:
            raise UserError(f"{model_json} pins {named!r}, not oracle.model={params.model!r}: run `dvc repro oracle_model`")
        self.model_dir = Path(model_dir)
        self.source, revision = resolve_base(model_dir, model_json)
        self.kwargs = {"revision": revision} if revision else {}
        self._id = f"{params.model}@{model_fingerprint(self.model_dir, pin)}"
        self.model = None  # loaded on the first call: a run answered from the cache never loads it
        import torch

        from slmforge.modeling import compute_dtype

        # float32 on a CPU (see the module doc); on a GPU its own half precision, and the same kind of GPU and
        # library gives the same answer.
        self.dtype = compute_dtype("auto") if torch.cuda.is_available() else torch.float32
        self.decoding = {"decoder": DECODER_VERSION, "dtype": str(self.dtype).removeprefix("torch."),
                         "threads": None if torch.cuda.is_available() else THREADS}
        self._lock = threading.Lock()  # one request at a time in this process
        # On a CPU, oracle.concurrency > 1 answers in that many worker processes, each computing on THREADS threads
        # of its own: every request is computed exactly as in one process (same numerics, same text), and a 2-core
        # machine answers twice as fast instead of splitting each small matrix product over threads. On a GPU the
        # model is loaded once, in this process.
        self.workers = 0 if torch.cuda.is_available() else max(0, params.concurrency if params.concurrency > 1 else 0)
        self._pool = None
        self._spec = (params, str(model_dir), str(model_json))

    def _placement(self) -> dict:
        """On a GPU with oracle.load_in_4bit: NF4 weights spread by device_map="auto" (a 7B oracle in about 5 GB)."""
        import torch

        from slmforge.modeling import quantization_config

        if not (torch.cuda.is_available() and self.params.load_in_4bit):
            return {}
        from slmforge.modeling import oracle_model_params

        return {"quantization_config": quantization_config(oracle_model_params(self.params)), "device_map": "auto"}

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        placement = self._placement()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(self.source, dtype=self.dtype, **self.kwargs,
                                                              **placement).eval()
        except OSError as exc:
            raise UserError(f"oracle.model: cannot load {self.source!r} ({str(exc).splitlines()[0]}); offline, only "
                            f"the embedded model or a cached/local model works") from None
        if placement:  # placed by device_map; inputs go where the embeddings are
            self.device = self.model.device
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model.to(self.device)
        self._prefix: dict = {}
        self._digits = {}
        for v in range(10):
            ids = self.tokenizer.encode(str(v), add_special_tokens=False)
            if len(ids) != 1:
                raise UserError(f"oracle.model: the local oracle reads scores from single-digit tokens, and "
                                f"{self.source!r} splits {v!r} into {len(ids)} tokens")
            self._digits[v] = ids[0]

    def model_id(self) -> str:
        return self._id

    def _prompt_ids(self, req: Request):
        """(KV cache of the shared system prefix, the rest of the prompt's ids): the rubric is the same for every
        record, so its keys and values are computed once and copied, not recomputed per call."""
        import copy

        import torch
        from transformers import DynamicCache

        from slmforge.templates import fit_roles

        # A template without a system turn of its own (Gemma, Mistral) gets the rubric in the user turn: no shared head.
        messages = fit_roles([{"role": "system", "content": req.system}, {"role": "user", "content": req.prompt}],
                             self.tokenizer, {})
        full = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        head = self.tokenizer.apply_chat_template(messages[:1], tokenize=False) if len(messages) == 2 else ""
        if not full.startswith(head):  # a template that does not render the system turn on its own
            head = ""
        if head and head not in self._prefix:
            cache = DynamicCache()
            ids = self.tokenizer(head, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
            with torch.inference_mode():
                self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            self._prefix = {head: (cache, ids.shape[1])}  # one shared prefix a stage: keep only the latest
        cache, n_head = (copy.deepcopy(self._prefix[head][0]), self._prefix[head][1]) if head else (DynamicCache(), 0)
        rest = self.tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        return cache, n_head, rest

    def complete(self, req: Request) -> Answer:
        if self.workers:
            if self._pool is None:
                with self._lock:
                    if self._pool is None:
                        import multiprocessing
                        from concurrent.futures import ProcessPoolExecutor

                        # spawn: a fresh interpreter per worker (forking a process that runs torch threads can hang)
                        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                         initializer=_worker_init, initargs=self._spec)
            return self._pool.submit(_worker_complete, req).result()
        return self._complete(req)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _complete(self, req: Request) -> Answer:
        import torch

        with self._lock, torch_threads(self.decoding["threads"] or torch.get_num_threads()):
            if self.model is None:
                self._load()
            cache, n_head, rest = self._prompt_ids(req)
            with torch.inference_mode():
                state = _State(self, cache, rest)
                value = state.value(req.schema)
        text = json.dumps(value, ensure_ascii=False)
        return Answer(text=text, tokens_in=n_head + len(rest), parsed=value,
                      tokens_out=len(self.tokenizer.encode(text, add_special_tokens=False)))


_WORKER: LocalBackend | None = None


def _worker_init(params: OracleParams, model_dir: str, model_json: str) -> None:
    """A worker process's own backend (one process, THREADS threads); its model loads on the first request."""
    import dataclasses

    global _WORKER
    _WORKER = LocalBackend(dataclasses.replace(params, concurrency=1), model_dir, model_json)


def _worker_complete(req: Request) -> Answer:
    return _WORKER._complete(req)


class _State:
    """One decoding: the KV cache of everything fed so far, text written but not yet fed (fed only when the next
    token's probabilities are needed: fewer, larger forward passes), and the next token's logits."""

    def __init__(self, backend: LocalBackend, cache, rest_ids: list[int]):
        self.b, self.cache = backend, cache
        self.pending = ""
        self.logits = self._feed(rest_ids)

    def _feed(self, ids: list[int]):
        import torch

        out = self.b.model(input_ids=torch.tensor([ids], device=self.b.device), past_key_values=self.cache,
                           use_cache=True)
        return out.logits[0, -1].float()

    def rewind(self, length: int) -> None:
        """Forget every token after the first `length` (transformers 5's crop takes how many to remove)."""
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)

    def emit(self, text: str) -> None:
        self.pending += text

    def flush(self) -> None:
        if self.pending:
            self.logits = self._feed(self.b.tokenizer.encode(self.pending, add_special_tokens=False))
            self.pending = ""

    def value(self, schema: dict):
        kind = schema.get("type")
        if kind == "object":
            self.emit("{")
            out = {}
            for i, (name, prop) in enumerate(schema["properties"].items()):
                self.emit(("" if i == 0 else ", ") + json.dumps(name) + ": ")
                out[name] = self.value(prop)
            self.emit("}")
            return out
        if kind == "array":
            n = schema.get("minItems", 1)
            if schema.get("maxItems", n) != n:
                raise UserError("the local oracle writes arrays of a fixed length (minItems = maxItems)")
            self.emit("[")
            items = []
            for k in range(n):
                if k:
                    self.emit(", ")
                items.append(self.value(schema["items"]))
            self.emit("]")
            return items
        if kind in ("number", "integer"):
            return self.score(int(schema["minimum"]), int(schema["maximum"]), kind == "integer")
        if kind == "string":
            return self.string()
        raise UserError(f"the local oracle cannot write a JSON {kind!r}")

    def score(self, lo: int, hi: int, integer: bool):
        import torch

        if not 0 <= lo < hi <= 10:
            raise UserError("the local oracle reads scores 0 to 10 (single digits and 10): set rubric "
                            "min_score/max_score within that range")
        self.flush()
        probs = torch.softmax(self.logits, -1)
        p = {v: probs[self.b._digits[v]].item() for v in range(10)}
        if hi == 10:  # "10" is two tokens: P(10) = P("1") * P("0" | "1"), and "1" keeps the rest of P("1")
            mark = self.cache.get_seq_length()
            after_one = torch.softmax(self._feed([self.b._digits[1]]), -1)
            self.rewind(mark)
            p_zero = after_one[self.b._digits[0]].item()
            p[10], p[1] = p[1] * p_zero, p[1] * (1 - p_zero)
        mass = {v: p.get(v, 0.0) for v in range(lo, hi + 1)}
        total = sum(mass.values())
        if total <= 0:
            expected = (lo + hi) / 2
        else:
            expected = sum(v * m for v, m in mass.items()) / total
        self.emit(str(round(expected)))
        return round(expected) if integer else round(expected, 3)

    def string(self) -> str:
        import torch

        self.emit('"')
        self.flush()
        mark = self.cache.get_seq_length()
        ids: list[int] = []
        text = ""
        eos = set(filter(None, [self.b.tokenizer.eos_token_id]))
        for _ in range(self.b.params.max_field_tokens):
            nxt = int(torch.argmax(self.logits))
            if nxt in eos:
                break
            ids.append(nxt)
            text = self.b.tokenizer.decode(ids)
            end = _closing_quote(text)
            if end is not None or "\n" in text:
                text = text[:end] if end is not None else text[:text.index("\n")]
                break
            self.logits = self._feed([nxt])
        else:  # cut off at max_field_tokens: keep whole sentences rather than a dangling half
            cut = max(text.rfind(". "), text.rfind("? "), text.rfind("! "))
            text = text[:cut + 1] if cut > 0 else text
        try:
            value = json.loads(f'"{text}"')
        except json.JSONDecodeError:
            value = text.replace('\\"', '"')
        value = value.strip()
        # Rewind and write the string as canonical JSON, so what follows is conditioned on well-formed text.
        self.rewind(mark)
        self.emit(json.dumps(value, ensure_ascii=False)[1:])
        return value


def _closing_quote(text: str) -> int | None:
    escaped = False
    for i, ch in enumerate(text):
        if ch == '"' and not escaped:
            return i
        escaped = ch == "\\" and not escaped
    return None
