"""Asking the oracle: cache lookups, a cost estimate and ceiling before any call, bounded concurrency, answers
validated against their JSON schema (trivially broken ones repaired), failures kept, and a cost ledger."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass

import jsonschema
import json_repair
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.oracle.batches import BatchJournal
from slmforge.oracle.budget import Budget, BudgetStop, unbounded, worst_usd
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
    usd_saved: float = 0.0  # what the answers taken from the cache cost when they were asked, at today's prices
    seconds: float = 0.0

    def add(self, ans: Answer, params: OracleParams) -> None:
        self.calls += 1
        self.tokens_in += ans.tokens_in
        self.tokens_out += ans.tokens_out
        self.cache_write_tokens += ans.cache_write_tokens
        self.cache_read_tokens += ans.cache_read_tokens
        self.usd += cost(ans, params)

    def hit(self, entry: dict, params: OracleParams) -> None:
        self.cache_hits += 1
        self.usd_saved += cost(Answer(text="", tokens_in=entry.get("tokens_in") or 0,
                                      tokens_out=entry.get("tokens_out") or 0, batch=bool(entry.get("batch"))), params)

    def metrics(self) -> dict:
        d = asdict(self)
        d["usd"], d["usd_saved"], d["seconds"] = round(self.usd, 6), round(self.usd_saved, 6), round(self.seconds, 2)
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
    """One backend behind the cache; `ask` answers a list of requests and keeps the ledger and failures.
    `budget` (slmforge.oracle.budget) is the stage's share of the pipeline's ceiling; without one, oracle.max_usd
    bounds what this object spends."""

    def __init__(self, params: OracleParams, cache: AnswerCache, backend, budget: Budget | None = None):
        self.params, self.cache, self.backend = params, cache, backend
        self.decoding = decoding(params, backend)
        self.ledger = Ledger()
        self.failures: list[dict] = []
        self.budget = budget or unbounded("oracle", params)
        self._planned = False

    def key(self, req: Request) -> str:
        return request_key(self.backend.name, self.backend.model_id(), self.decoding, req)

    def plan(self, requests: list[Request], batch: bool = False) -> None:
        """The budget's preflight over every request the stage will make (a stage that asks in several rounds,
        as calibrate does, is checked once on all of them before its first call rather than round by round)."""
        misses = {k: r for k, r in ((self.key(r), r) for r in requests) if not self.cache.has(k)}
        self.budget.preflight(len(misses), estimate_usd(list(misses.values()), self.params, batch))
        self._planned = True

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
                self.ledger.hit(entry, self.params)
            else:
                misses.setdefault(key, req)
        usd = estimate_usd(list(misses.values()), self.params, batch)
        print(f"{desc}: {len(requests)} requests, {len(requests) - len(misses)} answered from the cache, "
              f"{len(misses)} to ask {self.backend.name}:{self.backend.model_id()} "
              f"(estimated at most ${usd:.2f}; {self._ceiling()})", file=sys.stderr)
        if misses and not self._planned:
            self.budget.preflight(len(misses), usd)
        failed_before = len(self.failures)
        if misses:
            if batch and hasattr(self.backend, "complete_batch"):
                self._ask_batch(misses, answers, desc)
            else:
                self._ask_each(misses, answers, desc)
        self.ledger.seconds += time.perf_counter() - start
        check_failure_share(desc, self.failures[failed_before:], len(set(keys)), self.params.max_failure_share)
        return [answers.get(k) for k in keys]

    def _ceiling(self) -> str:
        if math.isinf(self.budget.stage_max) and not (self.budget.spent or self.budget.forecast):
            return f"ceiling oracle.max_usd=${self.params.max_usd:.2f}"
        return self.budget.describe()

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
                    worst = worst_usd(req, self.params)
                    self.budget.admit(worst)  # stops before a call that could cross the allowance, not after
                    result = _call(self.backend, req)
                    self._settle(worst, result)
                    self._record(key, req, result, answers)
                    bar.update()
            finally:
                bar.close()
            return
        # Bounded: at most `concurrency` calls in flight, submitted as others finish, so a killed run loses
        # only those (every finished answer is already in the cache). Each submission reserves its worst case
        # in the budget; a refused one stops the submitting, and the calls in flight are still recorded.
        pending, todo, stop = {}, iter(misses.items()), None
        pool = ThreadPoolExecutor(self.params.concurrency)
        try:
            while True:
                while stop is None and len(pending) < self.params.concurrency and (item := next(todo, None)):
                    worst = worst_usd(item[1], self.params)
                    try:
                        self.budget.admit(worst)
                    except BudgetStop as exc:
                        stop = exc
                        break
                    pending[pool.submit(_call, self.backend, item[1])] = (*item, worst)
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key, req, worst = pending.pop(fut)
                    self._settle(worst, fut.result())
                    self._record(key, req, fut.result(), answers)
                    bar.update()
        finally:
            for fut in pending:
                fut.cancel()
            bar.close()
            # Not a `with` block: leaving one waits for the calls still in flight, so a Ctrl-C or a stopping error
            # would wait up to oracle.timeout_s for answers nobody reads.
            pool.shutdown(wait=False, cancel_futures=True)
        if stop is not None:
            raise stop

    def _settle(self, worst: float, result: Answer | Exception) -> None:
        self.budget.settle(worst, cost(result, self.params) if isinstance(result, Answer) else 0.0)

    def _ask_batch(self, misses: dict[str, Request], answers: dict, desc: str) -> None:
        bar = tqdm(total=len(misses), desc=f"{desc} (batch)", unit="call", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        # The batch is sent whole: its requests are admitted in order until the next could cross the allowance,
        # the admitted prefix is sent, and the stage stops after recording it.
        admitted, stop = {}, None
        for key, req in misses.items():
            worst = worst_usd(req, self.params, batch=True)
            try:
                self.budget.admit(worst)
            except BudgetStop as exc:
                stop = exc
                break
            admitted[key] = (req, worst)
        journal = BatchJournal(self.cache.store / "batches")
        results = self.backend.complete_batch([(k, r) for k, (r, _) in admitted.items()], progress=progress,
                                              journal=journal) if admitted else {}
        for key, (req, worst) in admitted.items():
            result = results.get(key, OracleError("no result in the batch"))
            self._settle(worst, result)
            self._record(key, req, result, answers)
        journal.settle({k: r for k, (r, _) in admitted.items()})  # recorded: the batches need not be polled again
        bar.n = len(admitted)
        bar.close()
        config_error = first_config_error(results.values())
        if config_error is not None:  # the answered requests are cached above; the rest would fail alike
            raise config_error
        if stop is not None:
            raise stop

    def metrics(self) -> dict:
        return {"oracle": {**self.ledger.metrics(), "backend": self.backend.name, "model": self.backend.model_id()}}


def decoding(params: OracleParams, backend=None) -> dict:
    """The decoding parameters in every cache key. No temperature: the local backend is greedy (deterministic)
    and the Messages API of this SDK takes none. A backend's own `decoding` (local: its numerics) joins them."""
    return {"max_field_tokens": params.max_field_tokens, **getattr(backend, "decoding", {})}


def _call(backend, req: Request) -> Answer | Exception:
    try:
        return backend.complete(req)
    except OracleError as exc:  # one call failed for good: recorded, the run goes on
        return exc


def open_oracle(params: OracleParams, cache_dir, model_dir=None, model_json=None, budget: Budget | None = None) -> Oracle:
    """The oracle a stage uses: its backend, and its cache folder (a DVC output) seeded with the answers of the
    last locked run, so answers pulled from a remote are never paid for twice. model_dir and model_json: the
    local oracle's own model (the oracle_model stage's models/oracle and models/oracle.json)."""
    from slmforge.oracle.cache import seed_from_dvc

    seeded = seed_from_dvc(cache_dir)
    if seeded:
        print(f"oracle: {seeded} answers restored from DVC's cache of {cache_dir}", file=sys.stderr)
    return Oracle(params, AnswerCache(cache_dir), make_backend(params, model_dir, model_json), budget)


# What a run of an oracle stage did rather than what it made: calls, tokens, dollars and seconds depend on which
# answers the store already held, so they go to the stage's run facts, not to an output DVC tracks.
RUN_FACT_KEYS = ("calls", "cache_hits", "tokens_in", "tokens_out", "cache_write_tokens", "cache_read_tokens", "usd",
                 "usd_saved", "seconds")


def split_run_facts(metrics: dict) -> tuple[dict, dict]:
    """(metrics without, run facts with) the ledger's per-run figures of `metrics["oracle"]` (`Oracle.metrics()`):
    what stays (backend, model, failures) is the same on every run of the same inputs."""
    oracle = metrics.get("oracle")
    if not isinstance(oracle, dict):
        return metrics, {}
    run = {k: oracle[k] for k in RUN_FACT_KEYS if k in oracle}
    return {**metrics, "oracle": {k: v for k, v in oracle.items() if k not in run}}, {"oracle": run}
