"""What every oracle backend takes and gives back: a request, an answer, and the errors that stop a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from slmforge.errors import UserError


@dataclass(frozen=True)
class Request:
    id: str  # the record the request is about (failures and logs name it)
    system: str  # the shared prefix (rubric, task instructions): identical across a stage's calls, cacheable
    prompt: str  # the user turn: the record's text inside a delimited block, and what to answer
    schema: dict  # JSON schema the answer must satisfy (flat objects of numbers/strings, fixed-length arrays)
    max_tokens: int
    repeat: int = 0  # 0: the answer; k > 0: the k-th further sample of the same request (self-consistency)


@dataclass
class Answer:
    text: str  # the raw text the model returned
    tokens_in: int
    tokens_out: int
    cache_write_tokens: int = 0  # prompt-caching tokens written / read (claude), priced apart
    cache_read_tokens: int = 0
    batch: bool = False  # answered through the Message Batches API (discounted)
    parsed: dict | None = None  # set by a backend that builds the answer itself (local, schema-guided)
    meta: dict = field(default_factory=dict)


class OracleError(Exception):
    """One call failed for good (after the backend's retries): recorded as a failure, the run goes on."""


class OracleConfigError(UserError):
    """A failure every other request would share (a wrong model id, a request the API refuses, billing, a malformed
    key, an endpoint that never answers): the run stops at the first one with one line naming the setting."""


class OracleAuthError(OracleConfigError):
    """The credentials were refused (401/403): nothing else will work, so the run stops with one line."""
