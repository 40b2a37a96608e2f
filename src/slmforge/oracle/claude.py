"""The Claude oracle backend: one Request to Anthropic's Messages API (or many through Message Batches)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import anthropic

from slmforge.io import UserError
from slmforge.oracle.types import Answer, OracleAuthError, OracleError, Request
from slmforge.params import OracleParams

log = logging.getLogger(__name__)

BATCH_CHUNK = 5_000  # requests per batch: well under the API's 100,000 requests / 256 MB per batch


class ClaudeBackend:
    name = "claude"

    def __init__(self, params: OracleParams):
        self.params = params
        # Strip: a key pasted from a file often ends in a newline, which httpx would refuse (quoting the value).
        key = os.environ.get(params.api_key_env, "").strip()
        if not key:
            raise UserError(f"oracle=claude needs {params.api_key_env} in the environment "
                            f"(export it, or run with -S oracle=local)")
        self._key = key
        # Retries (429, 5xx, 529, connection errors, timeouts; retry-after honoured) are the SDK's own.
        # An explicit api_key also stops the SDK from reading other credentials (ANTHROPIC_AUTH_TOKEN, profiles).
        self.client = anthropic.Anthropic(api_key=key, base_url=params.base_url or None,
                                          max_retries=params.max_retries, timeout=params.timeout_s)

    def model_id(self) -> str:
        return self.params.model

    def _request_params(self, req: Request) -> dict:
        # No temperature: SDK 2.x has no sampling parameters, and API version 2026-10-21 answers 400 to any
        # temperature/top_p/top_k. `req.repeat` only changes the caller's cache key; it is not sent.
        system = req.system
        if self.params.prompt_cache:  # the rubric prefix is identical across a stage's calls: cache it
            system = [{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}]
        return {"model": self.params.model, "max_tokens": req.max_tokens, "system": system,
                "messages": [{"role": "user", "content": req.prompt}]}

    def complete(self, req: Request) -> Answer:
        try:
            message = self.client.messages.create(**self._request_params(req))
        except anthropic.APIError as exc:
            raise self._error(exc) from None  # from None: the SDK's chained error adds nothing to one line
        return _answer(message)

    def complete_batch(self, items: list[tuple[str, Request]], progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, Answer | OracleError]:
        """Answers keyed by the caller's ids (sha256 hex: valid custom_ids) through the Message Batches API."""
        requests = {key: req for key, req in items}  # a custom_id must be unique within a batch
        keys = list(requests)
        out: dict[str, Answer | OracleError] = {}
        batch_ids: list[str] = []
        try:
            for start in range(0, len(keys), BATCH_CHUNK):
                chunk = keys[start:start + BATCH_CHUNK]
                batch = self.client.messages.batches.create(requests=[
                    {"custom_id": key, "params": self._request_params(requests[key])} for key in chunk])
                log.info("claude: submitted batch %s (%d requests)", batch.id, len(chunk))
                batch_ids.append(batch.id)
            self._wait(batch_ids, len(keys), progress)
            for batch_id in batch_ids:
                for line in self.client.messages.batches.results(batch_id):
                    out[line.custom_id] = _batch_result(line.result, batch_id)
        except anthropic.APIError as exc:
            error = self._error(exc)
            if isinstance(error, OracleAuthError):
                raise error from None
            # The batches live on for 29 days: name them, so their results can be fetched by hand.
            where = f" (batches: {', '.join(batch_ids)})" if batch_ids else ""
            for key in keys:
                out.setdefault(key, OracleError(f"{error}{where}"))
        for key in keys:  # the API answers every request; a missing line is its fault, recorded as a failure
            out.setdefault(key, OracleError("claude batch: no result for this request"))
        return out

    def _wait(self, batch_ids: list[str], total: int, progress) -> None:
        """Poll until every batch has ended. Counts stay at `processing` until a batch ends, so progress jumps."""
        pending = list(batch_ids)
        done: dict[str, int] = {}
        while pending:
            time.sleep(self.params.batch_poll_s)
            for batch_id in list(pending):
                batch = self.client.messages.batches.retrieve(batch_id)
                counts = batch.request_counts
                done[batch_id] = counts.succeeded + counts.errored + counts.canceled + counts.expired
                if batch.processing_status == "ended":
                    pending.remove(batch_id)
            if progress is not None:
                progress(sum(done.values()), total)

    def _error(self, exc: anthropic.APIError) -> OracleError | OracleAuthError:
        """One line for an error the SDK gave up on; the key is scrubbed in case anything ever echoes it."""
        if isinstance(exc, anthropic.APIStatusError):
            detail = f"HTTP {exc.status_code} {exc.type or 'error'}: {exc.api_message or exc.message}"
        else:  # connection error or timeout: no status
            detail = f"{type(exc).__name__}: {exc.message}"
        detail = " ".join(detail.replace(self._key, "***").split())[:200]
        if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
            return OracleAuthError(f"claude: {detail} (check the key in {self.params.api_key_env})")
        return OracleError(f"claude: {detail}")


def _answer(message, batch: bool = False, **meta) -> Answer:
    usage = message.usage
    text = "".join(block.text for block in message.content if block.type == "text")
    return Answer(text=text, tokens_in=usage.input_tokens, tokens_out=usage.output_tokens,
                  cache_write_tokens=usage.cache_creation_input_tokens or 0,
                  cache_read_tokens=usage.cache_read_input_tokens or 0, batch=batch,
                  meta={"stop_reason": message.stop_reason, "message_id": message.id, **meta})


def _batch_result(result, batch_id: str) -> Answer | OracleError:
    if result.type == "succeeded":
        return _answer(result.message, batch=True, batch_id=batch_id)
    if result.type == "errored":
        error = result.error.error
        return OracleError(" ".join(f"claude batch: errored {error.type}: {error.message}".split())[:200])
    return OracleError(f"claude batch: request {result.type}")  # expired (24 h passed) or canceled
