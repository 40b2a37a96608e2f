"""`slmforge serve`: an OpenAI-compatible endpoint (`/v1/chat/completions`, streamed or whole, and `/v1/models`)
for the base model and every trained adapter, all on ONE loaded base; and the vLLM command for production.

Why a wrapper and not `transformers serve` as it comes: its chat handler (OpenAI request fields to a
GenerationConfig, SSE chunks through a Rust incremental decoder, one inference thread, the `openai` package's
response types) is what we reuse, unchanged. What it lacks we add here: its ModelManager loads one model per
hub id (no PEFT adapters, no NF4 base from a local folder with our pin), and its errors are FastAPI's
`{"detail": ...}` with a 500 for an unknown model, not the OpenAI error body a client parses. So: our manager
hands the handler a view of the one PeftModel per served name, a single inference thread serialises every
request (an adapter is set and its generation runs as one unit, so two adapters never mix), and a thin FastAPI
app validates the request and answers errors as OpenAI does (`{"error": {message, type, param, code}}`).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (request: Request) at run time.
import json
import shlex
import threading
import time
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from slmforge.errors import UserError
from slmforge.params import ModelParams

BASE_NAME = "base"  # the model id under which the base model alone is served


def discover_adapters(adapters_dir: str | Path) -> dict[str, Path]:
    """name -> folder of every trained adapter under adapters_dir (one folder per domain)."""
    root = Path(adapters_dir)
    found = {p.parent.name: p.parent for p in sorted(root.glob("*/slmforge_adapter.json"))} if root.is_dir() else {}
    return found


def parse_adapter_args(values: list[str]) -> dict[str, Path]:
    adapters = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {value!r}: expected NAME=PATH (for example stats=models/adapters/stats)")
        adapters[name] = Path(path)
    return adapters


def load_served_model(params: ModelParams, base_dir: str | Path, base_json: str | Path, adapters: dict[str, Path]):
    """The base (NF4 when params say so, as in training) with every adapter loaded under its name, and the
    tokenizer. Each adapter's chat template is checked against the base's before any weight loads."""
    from transformers import AutoTokenizer

    from slmforge.adapter_folder import check_card_template, read_adapter_card
    from slmforge.modeling import load_base, resolve_base

    if BASE_NAME in adapters:
        raise UserError(f"adapter name `{BASE_NAME}` is reserved for the base model alone: rename that adapter")
    resolve_base(base_dir, base_json)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    for name, path in adapters.items():
        check_card_template(read_adapter_card(path), tokenizer, path, base_dir)
    model, tokenizer = load_base(params, base_dir, base_json)
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval()
    # The stop token and padding of training and evaluate: generation ends at the template's end-of-turn.
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = False, None, None, None
    return model, tokenizer


class AdapterView:
    """The one loaded model as seen through one served name: `generate` activates that adapter (or disables
    adapters, for the base) and generates. Runs on the single inference thread, so the switch and the
    generation are never interleaved with another request's."""

    def __init__(self, model, adapter: str | None):
        self._model, self._adapter = model, adapter

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, **kwargs):
        if not hasattr(self._model, "set_adapter"):  # no adapter loaded at all: the base model itself
            return self._model.generate(**kwargs)
        if self._adapter is None:
            with self._model.disable_adapter():
                return self._model.generate(**kwargs)
        self._model.set_adapter(self._adapter)
        return self._model.generate(**kwargs)


def context_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
            422: "invalid_request_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def build_app(model, tokenizer, adapter_names: list[str], default_max_tokens: int = 512,
              template_kwargs: dict | None = None):
    """The FastAPI app: transformers' ChatCompletionHandler behind our validation and model registry."""
    from fastapi import FastAPI
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.utils import GenerateManager, GenerationState

    views = {BASE_NAME: AdapterView(model, None), **{n: AdapterView(model, n) for n in adapter_names}}
    created = int(time.time())

    class Registry(ModelManager):
        """Every served name maps to a view of the one loaded model; nothing is loaded or unloaded per request.
        (ModelManager.__init__ is not called: it sets up hub loading, which we replace.)"""

        force_model = None

        def __init__(self):
            self.loaded_models = {}

        @staticmethod
        def process_model_name(model_id: str) -> str:
            return model_id  # our names are not hub ids: no `@main` revision

        def load_model_and_processor(self, model_id, progress_callback=None, tqdm_class=None, gguf_file=None):
            return views[model_id], tokenizer

        def shutdown(self) -> None:
            pass

    class OneThread(GenerationState):
        """One inference thread for all names: they share one set of weights (transformers makes one per model
        id, which here would run two adapters' generations on the same modules at once)."""

        def __init__(self):
            super().__init__(continuous_batching=False)
            self._manager = GenerateManager()

        def get_manager(self, model_id: str, use_cb: bool = False):
            return self._manager

    class Handler(ChatCompletionHandler):
        def _build_generation_config(self, body, model_generation_config, use_cb=False):
            config = super()._build_generation_config(body, model_generation_config, use_cb=use_cb)
            # Greedy unless the request asks for sampling (evaluate measured greedy answers); OpenAI's
            # temperature > 0 means sampling, which transformers' handler leaves to the model's default.
            temperature = body.get("temperature")
            config.do_sample = temperature is not None and float(temperature) > 0
            if not config.do_sample:
                config.temperature, config.top_p, config.top_k = None, None, None
            return config

    handler = Handler(model_manager=Registry(), generation_state=OneThread())
    max_context = context_length(model)

    def validate(body) -> None:
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise RequestError(400, "you must provide a model parameter", "model")
        if name not in views:
            raise RequestError(404, f"The model `{name}` does not exist (served: {', '.join(views)})", "model",
                               "model_not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` must be a non-empty list of {role, content}", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                raise RequestError(400, f"messages[{i}] needs a role of system, user or assistant", "messages")
        if body.get("n") not in (None, 1):
            raise RequestError(400, "only n=1 is supported", "n")
        # rendered as training rendered it: model.chat_template_kwargs, a system turn merged where the template has
        # none (Gemma, Mistral), for the handler too
        from slmforge.templates import fit_roles, render

        body["messages"] = messages = fit_roles(messages, tokenizer, template_kwargs or {})
        prompt = render(tokenizer, handler.get_processor_inputs_from_messages(messages, _llm()), template_kwargs or {},
                        add_generation_prompt=True, tokenize=True)
        room = max_context - len(prompt)
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        asked = body.get(key)
        if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool) or asked < 1):
            raise RequestError(400, f"`{key}` must be a positive integer", key)
        if room < 1 or (asked is not None and asked > room):
            raise RequestError(400, f"This model's maximum context length is {max_context} tokens. However, you "
                                    f"requested {len(prompt) + (asked or 0)} tokens ({len(prompt)} in the messages, "
                                    f"{asked or 0} in the completion). Please reduce the length of the messages "
                                    f"or completion.", key, "context_length_exceeded")
        if asked is None:  # as vLLM: what fits, up to the server's default
            body["max_tokens"] = min(default_max_tokens, room)

    app = FastAPI(title="slmforge serve")

    @app.exception_handler(RequestError)
    async def _request_error(_request, exc: RequestError):
        return openai_error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc: HTTPException):  # the handler's own checks (unexpected fields: 422)
        return openai_error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        return openai_error(400, str(exc.errors()[:1]))

    @app.exception_handler(Exception)
    async def _server_error(_request, exc: Exception):  # still an OpenAI body, never a bare 500 page
        return openai_error(500, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @app.get("/health")
    def health():
        return JSONResponse({"status": "ok"})

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "slmforge",
                "parent": None if name == BASE_NAME else BASE_NAME}

    @app.get("/v1/models")
    def list_models():
        return JSONResponse({"object": "list", "data": [card(n) for n in views]})

    @app.get("/v1/models/{name}")
    def get_model(name: str):
        if name not in views:
            raise RequestError(404, f"The model `{name}` does not exist", "model", "model_not_found")
        return JSONResponse(card(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        validate(body)
        request_id = request.headers.get("x-request-id") or f"chatcmpl-{time.time_ns():x}"
        response = await handler.handle_request(body, request_id)
        response.headers["x-request-id"] = request_id
        return response

    return app


def _llm():
    from transformers.cli.serving.utils import Modality

    return Modality.LLM


class Server:
    """uvicorn running the app in a background thread (tests, and `serve` in the foreground via run())."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> int:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


# --- vLLM, for production ------------------------------------------------------------------------

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

def vllm_command(base_dir: str | Path, base_json: str | Path, adapters: dict[str, Path], *,
                 merged: str | Path | None = None, nf4: bool = True, host: str = "0.0.0.0", port: int = 8000) -> str:
    """The `vllm serve` command for what this run trained: the base with every domain's adapter as a LoRA module
    (`--enable-lora --lora-modules name=path ...`), or one merged export.

    With `nf4` the base is quantised in flight by bitsandbytes (`--quantization bitsandbytes`, NF4): the adapters
    were trained against NF4 weights, and on the full-precision base their gain can vanish (see docs/serving.md).
    """
    if merged is not None:
        info = Path(merged) / "slmforge_export.json"
        name = json.loads(info.read_text())["name"] if info.exists() else Path(merged).name
        parts = ["vllm", "serve", str(merged), "--served-model-name", name, "--dtype", "auto"]
        return " ".join(shlex.quote(p) for p in [*parts, "--host", host, "--port", str(port)])
    pin = json.loads(Path(base_json).read_text())
    if pin["source"] == "hub":
        parts = ["vllm", "serve", pin["hub_id"], "--revision", pin["commit"]]
    else:  # the embedded GGUF base, materialised as safetensors by the base stage
        parts = ["vllm", "serve", str(base_dir)]
    parts += ["--served-model-name", BASE_NAME, "--dtype", "auto"]
    if nf4:
        parts += ["--quantization", "bitsandbytes"]
    if adapters:
        rank = max(json.loads((Path(p) / "adapter_config.json").read_text())["r"] for p in adapters.values())
        # vLLM accepts only these ranks for --max-lora-rank: the smallest that holds every adapter
        rank = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
        parts += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters)),
                  "--lora-modules", *[f"{n}={p}" for n, p in adapters.items()]]
    return " ".join(shlex.quote(p) for p in [*parts, "--host", host, "--port", str(port)])
