"""Asking the oracle: cache lookups, a cost estimate and ceiling before any call, bounded concurrency, answers
validated against their JSON schema (trivially broken ones repaired), failures kept, and a cost ledger."""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import jsonschema
import json_repair
from tqdm import tqdm

from slmforge.io import UserError
from slmforge.oracle.batches import BatchJournal
from slmforge.oracle.cache import AnswerCache, request_key
from slmforge.oracle.failures import check_failure_share, first_config_error
from slmforge.oracle.types import Answer, OracleError, Request
from slmforge.params import OracleParams

CHARS_PER_TOKEN = 3.5  # a conservative estimate for English prose: estimates err towards more tokens


def make_backend(params: OracleParams, model_dir=None, model_json=None):
    """The backend named by `oracle.backend` (a plain name -> constructor map, as design.md says)."""
    if params.backend == "claude":
        from slmforge.oracle.claude import ClaudeBackend

        return ClaudeBackend(params)
    if params.backend == "local":
        from slmforge.oracle.local import LocalBackend

        return LocalBackend(params, model_dir, model_json)
    raise UserError(f"params.yaml: oracle.backend must be claude or local, got {params.backend!r}")


@dataclass
class Ledger:
    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0

    def add(self, ans: Answer, params: OracleParams) -> None:
        self.calls += 1
        self.tokens_in += ans.tokens_in
        self.tokens_out += ans.tokens_out
        self.cache_write_tokens += ans.cache_write_tokens
        self.cache_read_tokens += ans.cache_read_tokens
        self.usd += cost(ans, params)

    def metrics(self) -> dict:
        d = asdict(self)
        d["usd"], d["seconds"] = round(self.usd, 6), round(self.seconds, 2)
        return d


def cost(ans: Answer, p: OracleParams) -> float:
    usd = (ans.tokens_in * p.price_in_per_mtok + ans.tokens_out * p.price_out_per_mtok
           + ans.cache_write_tokens * p.price_in_per_mtok * p.cache_write_multiplier
           + ans.cache_read_tokens * p.price_in_per_mtok * p.cache_read_multiplier) / 1e6
    return usd * (p.batch_discount if ans.batch else 1.0)


def estimate_usd(requests: list[Request], p: OracleParams, batch: bool) -> float:
    """An upper estimate: every call pays its whole prompt uncached and writes its whole max_tokens."""
    tokens_in = sum((len(r.system) + len(r.prompt)) / CHARS_PER_TOKEN for r in requests)
    tokens_out = sum(r.max_tokens for r in requests)
    usd = (tokens_in * p.price_in_per_mtok + tokens_out * p.price_out_per_mtok) / 1e6
    return usd * (p.batch_discount if batch else 1.0)


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_answer(text: str, schema: dict) -> tuple[dict | None, str | None]:
    """(answer, None) when the text is, or trivially repairs to, a JSON object valid under schema; else
    (None, reason). Repairs: a code fence around it, prose before/after it, trailing commas, single quotes."""
    body = _FENCE.sub(r"\1", text.strip())
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        obj = json_repair.loads(body)  # returns "" when there is nothing JSON-like to repair
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {text[:120]!r}"
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as exc:
        return None, f"schema: {exc.message[:200]}"
    return obj, None


class Oracle:
    """One backend behind the cache; `ask` answers a list of requests and keeps the ledger and failures."""

    def __init__(self, params: OracleParams, cache: AnswerCache, backend):
        self.params, self.cache, self.backend = params, cache, backend
        # No temperature: the local backend is greedy (deterministic) and the Messages API of this SDK takes none.
        self.decoding = {"max_field_tokens": params.max_field_tokens,
                         **getattr(backend, "decoding", {})}  # what else shapes a backend's answer (local: numerics)
        self.ledger = Ledger()
        self.failures: list[dict] = []

    def key(self, req: Request) -> str:
        return request_key(self.backend.name, self.backend.model_id(), self.decoding, req)

    def ask(self, requests: list[Request], desc: str, batch: bool = False) -> list[dict | None]:
        """The parsed answer of each request (None where it failed; the failure is in self.failures)."""
        start = time.perf_counter()
        keys = [self.key(r) for r in requests]
        answers: dict[str, dict] = {}
        misses: dict[str, Request] = {}
        for key, req in zip(keys, requests):
            entry = self.cache.get(key)
            if entry is not None and isinstance(entry.get("answer"), dict):
                answers[key] = entry["answer"]
                self.ledger.cache_hits += 1
            else:
                misses.setdefault(key, req)
        usd = estimate_usd(list(misses.values()), self.params, batch)
        print(f"{desc}: {len(requests)} requests, {len(requests) - len(misses)} answered from the cache, "
              f"{len(misses)} to ask {self.backend.name}:{self.backend.model_id()} "
              f"(estimated at most ${usd:.2f}; ceiling oracle.max_usd=${self.params.max_usd:.2f})", file=sys.stderr)
        if misses and usd > self.params.max_usd:
            raise UserError(f"oracle: the estimated cost ${usd:.2f} is above oracle.max_usd=${self.params.max_usd:.2f}: "
                            f"raise it (-S oracle.max_usd=...) or ask fewer records")
        failed_before = len(self.failures)
        if misses:
            if batch and hasattr(self.backend, "complete_batch"):
                self._ask_batch(misses, answers, desc)
            else:
                self._ask_each(misses, answers, desc)
        self.ledger.seconds += time.perf_counter() - start
        check_failure_share(desc, self.failures[failed_before:], len(set(keys)), self.params.max_failure_share)
        return [answers.get(k) for k in keys]

    def _record(self, key: str, req: Request, result: Answer | Exception, answers: dict) -> None:
        if isinstance(result, Exception):
            self.ledger.failures += 1
            self.failures.append({"id": req.id, "key": key, "error": str(result)[:300], "raw": None})
            return
        self.ledger.add(result, self.params)
        obj, why = (result.parsed, None) if result.parsed is not None else parse_answer(result.text, req.schema)
        if obj is not None and result.parsed is not None:
            try:
                jsonschema.validate(obj, req.schema)
            except jsonschema.ValidationError as exc:
                obj, why = None, f"schema: {exc.message[:200]}"
        if obj is None:  # not cached: the next run asks again
            self.ledger.failures += 1
            self.failures.append({"id": req.id, "key": key, "error": why, "raw": result.text})
            return
        answers[key] = obj
        self.cache.put(key, {"key": key, "id": req.id, "backend": self.backend.name, "model": self.backend.model_id(),
                             "answer": obj, "raw": result.text, "tokens_in": result.tokens_in,
                             "tokens_out": result.tokens_out, "batch": result.batch})

    def _ask_each(self, misses: dict[str, Request], answers: dict, desc: str) -> None:
        bar = tqdm(total=len(misses), desc=desc, unit="call", file=sys.stderr)
        if self.params.concurrency <= 1:
            try:
                for key, req in misses.items():
                    self._record(key, req, _call(self.backend, req), answers)
                    bar.update()
            finally:
                bar.close()
            return
        # Bounded: at most `concurrency` calls in flight, submitted as others finish, so a killed run loses
        # only those (every finished answer is already in the cache).
        pending, todo = {}, iter(misses.items())
        pool = ThreadPoolExecutor(self.params.concurrency)
        try:
            while True:
                while len(pending) < self.params.concurrency and (item := next(todo, None)):
                    pending[pool.submit(_call, self.backend, item[1])] = item
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key, req = pending.pop(fut)
                    self._record(key, req, fut.result(), answers)
                    bar.update()
        finally:
            for fut in pending:
                fut.cancel()
            bar.close()
            # Not a `with` block: leaving one waits for the calls still in flight, so a Ctrl-C or a stopping error
            # would wait up to oracle.timeout_s for answers nobody reads.
            pool.shutdown(wait=False, cancel_futures=True)

    def _ask_batch(self, misses: dict[str, Request], answers: dict, desc: str) -> None:
        bar = tqdm(total=len(misses), desc=f"{desc} (batch)", unit="call", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        journal = BatchJournal(self.cache.store / "batches")
        results = self.backend.complete_batch(list(misses.items()), progress=progress, journal=journal)
        for key, req in misses.items():
            self._record(key, req, results.get(key, OracleError("no result in the batch")), answers)
        journal.settle(misses)  # recorded: the answers are in the cache, the batches need not be polled again
        bar.n = len(misses)
        bar.close()
        config_error = first_config_error(results.values())
        if config_error is not None:  # the answered requests are cached above; the rest would fail alike
            raise config_error

    def metrics(self) -> dict:
        return {"oracle": {**self.ledger.metrics(), "backend": self.backend.name, "model": self.backend.model_id()}}


def _call(backend, req: Request) -> Answer | Exception:
    try:
        return backend.complete(req)
    except OracleError as exc:  # one call failed for good: recorded, the run goes on
        return exc


def open_oracle(params: OracleParams, cache_dir, model_dir=None, model_json=None) -> Oracle:
    """The oracle a stage uses: its backend, and its cache folder (a DVC output) seeded with the answers of the
    last locked run, so answers pulled from a remote are never paid for twice. model_dir and model_json: the
    local oracle's own model (the oracle_model stage's models/oracle and models/oracle.json)."""
    from slmforge.oracle.cache import seed_from_dvc

    seeded = seed_from_dvc(cache_dir)
    if seeded:
        print(f"oracle: {seeded} answers restored from DVC's cache of {cache_dir}", file=sys.stderr)
    return Oracle(params, AnswerCache(cache_dir), make_backend(params, model_dir, model_json))


# What a run of an oracle stage did rather than what it made: calls, tokens, dollars and seconds depend on which
# answers the store already held, so they go to the stage's run facts, not to an output DVC tracks.
RUN_FACT_KEYS = ("calls", "cache_hits", "tokens_in", "tokens_out", "cache_write_tokens", "cache_read_tokens", "usd",
                 "seconds")


def split_run_facts(metrics: dict) -> tuple[dict, dict]:
    """(metrics without, run facts with) the ledger's per-run figures of `metrics["oracle"]` (`Oracle.metrics()`):
    what stays (backend, model, failures) is the same on every run of the same inputs."""
    oracle = metrics.get("oracle")
    if not isinstance(oracle, dict):
        return metrics, {}
    run = {k: oracle[k] for k in RUN_FACT_KEYS if k in oracle}
    return {**metrics, "oracle": {k: v for k, v in oracle.items() if k not in run}}, {"oracle": run}
