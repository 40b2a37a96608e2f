"""The Claude oracle backend: one Request to Anthropic's Messages API (or many through Message Batches)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import anthropic

from slmforge.errors import UserError
from slmforge.oracle.batches import BatchJournal
from slmforge.oracle.types import Answer, OracleAuthError, OracleConfigError, OracleError, Request
from slmforge.params import OracleParams


BATCH_CHUNK = 5_000  # requests per batch: well under the API's 100,000 requests / 256 MB per batch
# What the SDK itself retries (anthropic._base_client._should_retry): a busy or failing server, not a refusal.
TRANSIENT_STATUS = {408, 409, 429}
# Until the endpoint has answered once, a connection error is retried this often, not oracle.max_retries times:
# a URL that never answered is a wrong oracle.base_url (the SDK's backoff over 6 retries takes ~22 s, and every
# call in flight waits it out), while a drop after answers is a blip worth the full retries.
FIRST_CONTACT_RETRIES = 2
# A batch request that errored with one of these would error the same way for every request: a setting is wrong.
CONFIG_ERROR_TYPES = {"invalid_request_error", "not_found_error", "authentication_error", "permission_error",
                      "billing_error", "request_too_large"}


class ClaudeBackend:
    name = "claude"

    def __init__(self, params: OracleParams):
        self.params = params
        # Strip: a key pasted from a file often ends in a newline, which httpx would refuse (quoting the value).
        key = os.environ.get(params.api_key_env, "").strip()
        if not key:
            raise UserError(f"oracle=claude needs {params.api_key_env} in the environment "
                            f"(export it, or run with -S oracle=local)")
        bad = next((i for i, ch in enumerate(key) if not "!" <= ch <= "~"), None)
        if bad is not None:  # httpx refuses it as a header value, and the SDK would retry that as a connection error
            raise OracleConfigError(f"{params.api_key_env} is malformed: character {bad + 1} of the key is whitespace, a "
                                    "control character or not ASCII; export the key again, exactly as issued")
        self._key = key
        self._answered = False  # whether the endpoint has answered anything yet (see FIRST_CONTACT_RETRIES)
        # Retries (429, 5xx, 529, connection errors, timeouts; retry-after honoured) are the SDK's own.
        # An explicit api_key also stops the SDK from reading other credentials (ANTHROPIC_AUTH_TOKEN, profiles).
        self.client = anthropic.Anthropic(api_key=key, base_url=params.base_url or None,
                                          max_retries=params.max_retries, timeout=params.timeout_s)
        self._first_contact = self.client.with_options(max_retries=min(params.max_retries, FIRST_CONTACT_RETRIES))

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
            message = self._create(self._request_params(req))
        except anthropic.APIError as exc:
            raise self._error(exc) from None  # from None: the SDK's chained error adds nothing to one line
        return _answer(message)

    def _create(self, body: dict):
        if self._answered:
            return self.client.messages.create(**body)
        try:
            message = self._first_contact.messages.create(**body)
        except anthropic.APIStatusError as exc:
            self._answered = True
            left = self.params.max_retries - self._first_contact.max_retries  # attempts still owed to this request
            if left > 0 and (exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500):  # reachable but busy
                return self.client.with_options(max_retries=left - 1).messages.create(**body)
            raise
        self._answered = True
        return message

    def complete_batch(self, items: list[tuple[str, Request]], progress: Callable[[int, int], None] | None = None,
                       journal: BatchJournal | None = None) -> dict[str, Answer | OracleError | OracleConfigError]:
        """Answers keyed by the caller's ids (sha256 hex: valid custom_ids) through the Message Batches API. With a
        journal, a batch an earlier run submitted for any of these requests is polled again instead of asked anew,
        and each new batch is kept in it the moment it exists."""
        requests = {key: req for key, req in items}  # a custom_id must be unique within a batch
        keys = list(requests)
        out: dict[str, Answer | OracleError | OracleConfigError] = {}
        resumed = self._resume(journal, keys) if journal else {}
        batch_ids = list(resumed)
        covered = {k for mine in resumed.values() for k in mine}
        todo = [k for k in keys if k not in covered]
        try:
            for start in range(0, len(todo), BATCH_CHUNK):
                chunk = todo[start:start + BATCH_CHUNK]
                batch = self.client.messages.batches.create(requests=[
                    {"custom_id": key, "params": self._request_params(requests[key])} for key in chunk])
                if journal is not None:
                    journal.add(batch.id, chunk, self.name, self.model_id())
                print(f"claude: submitted batch {batch.id} ({len(chunk)} requests)"
                      + ("; a re-run resumes it instead of asking again" if journal else ""), file=sys.stderr, flush=True)
                batch_ids.append(batch.id)
            self._wait(batch_ids, len(keys), progress)
            for batch_id in batch_ids:
                for line in self.client.messages.batches.results(batch_id):
                    if line.custom_id in requests:
                        out[line.custom_id] = _batch_result(line.result, batch_id)
                if journal is not None:
                    journal.fetched.add(batch_id)
        except anthropic.APIError as exc:
            error = self._error(exc)
            if isinstance(error, OracleConfigError):
                raise error from None
            # The batches live on for 29 days: name them, so their results can be fetched by hand.
            where = f" (batches: {', '.join(batch_ids)})" if batch_ids else ""
            for key in keys:
                out.setdefault(key, OracleError(f"{error}{where}"))
        for key in keys:  # the API answers every request; a missing line is its fault, recorded as a failure
            out.setdefault(key, OracleError("claude batch: no result for this request"))
        return out

    def _resume(self, journal: BatchJournal, keys: list[str]) -> dict[str, list[str]]:
        """batch id -> the keys it carries, for the kept batches carrying any of `keys` that the API still has (one
        it has deleted is forgotten, and its requests are asked again)."""
        resumed = {}
        for batch_id, mine in journal.pending(keys).items():
            try:
                self.client.messages.batches.retrieve(batch_id)
            except anthropic.NotFoundError:
                print(f"claude: batch {batch_id} of an earlier run is gone from the API; asking its requests again",
                      file=sys.stderr, flush=True)
                journal.forget(batch_id)
                continue
            except anthropic.APIError as exc:
                raise self._error(exc) from None
            print(f"claude: resuming batch {batch_id} of an earlier run ({len(mine)} of these requests)",
                  file=sys.stderr, flush=True)
            resumed[batch_id] = mine
        return resumed

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

    def _error(self, exc: anthropic.APIError) -> OracleError | OracleConfigError:
        """One line for an error the SDK gave up on, classified: a transient failure (OracleError: recorded, the
        run goes on) or a setting to fix (OracleConfigError: the run stops). The key is scrubbed in case anything
        ever echoes it."""
        if isinstance(exc, anthropic.APIStatusError):
            detail = f"HTTP {exc.status_code} {exc.type or 'error'}: {exc.api_message or exc.message}"
        else:  # connection error or timeout: no status
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(exc).__name__}: {exc.message}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        detail = " ".join(detail.replace(self._key, "***").split())[:200]
        if isinstance(exc, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
            return OracleAuthError(f"claude: {detail} (check the key in {self.params.api_key_env})")
        if isinstance(exc, anthropic.APITimeoutError):
            return OracleError(f"claude: {detail}")  # slow, not wrong: oracle.timeout_s bounds it
        if isinstance(exc, anthropic.APIConnectionError):
            # The request could not even be written (the SDK's HTTP client raises its LocalProtocolError, by name
            # since that client is vendored under another package name in this SDK version).
            if type(exc.__cause__).__name__ == "LocalProtocolError":
                return OracleConfigError(f"claude: {detail}: check the key in {self.params.api_key_env} "
                                         "(whitespace or control characters in it?)")
            return OracleConfigError(f"claude: cannot reach {self.client.base_url} ({detail}): check oracle.base_url "
                                     "(null: ANTHROPIC_BASE_URL or Anthropic's API) and the network")
        status = exc.status_code if isinstance(exc, anthropic.APIStatusError) else 0
        if 400 <= status < 500 and status not in TRANSIENT_STATUS:
            return OracleConfigError(f"claude: {detail}: {self._setting_for(status)}")
        return OracleError(f"claude: {detail}")

    def _setting_for(self, status: int) -> str:
        """The setting a refused request points at, by status."""
        if status == 404:
            return f"check oracle.model ({self.params.model!r} is not a model this endpoint serves)"
        if status == 402:
            return f"the account of the key in {self.params.api_key_env} cannot pay: check its billing"
        if status == 413:
            return "a request is too large: lower synthesize.max_document_chars or clean.rules.max_chars"
        return f"check oracle.model ({self.params.model!r}) and oracle.max_tokens ({self.params.max_tokens})"


def _answer(message, batch: bool = False, **meta) -> Answer:
    usage = message.usage
    text = "".join(block.text for block in message.content if block.type == "text")
    return Answer(text=text, tokens_in=usage.input_tokens, tokens_out=usage.output_tokens,
                  cache_write_tokens=usage.cache_creation_input_tokens or 0,
                  cache_read_tokens=usage.cache_read_input_tokens or 0, batch=batch,
                  meta={"stop_reason": message.stop_reason, "message_id": message.id, **meta})


def _batch_result(result, batch_id: str) -> Answer | OracleError | OracleConfigError:
    if result.type == "succeeded":
        return _answer(result.message, batch=True, batch_id=batch_id)
    if result.type == "errored":
        error = result.error.error
        line = " ".join(f"claude batch: errored {error.type}: {error.message}".split())[:200]
        if error.type in CONFIG_ERROR_TYPES:  # every request of the batch would say the same: a setting to fix
            return OracleConfigError(f"{line}: check oracle.model and oracle.max_tokens")
        return OracleError(line)
    return OracleError(f"claude batch: request {result.type}")  # expired (24 h passed) or canceled
