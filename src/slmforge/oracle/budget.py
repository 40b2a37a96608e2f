"""The oracle's budget inside one stage: the pipeline's ceiling and the stage's own, checked before the first paid
call against an estimate, and a guard that stops the stage before any call that could cross what it may spend.

One ledger runs across synthesize, calibrate, label and evaluate's judge. What the earlier stages paid comes from
their metrics files (`oracle.usd` of their last run), what the later ones will pay from a forecast
(slmforge.cost), so a stage may spend at most

    allowance = min(oracle.stage_max_usd[stage], oracle.max_usd - paid upstream - forecast downstream)

Why the metrics files and not a store outside the repository (as the answers have): the metrics are versioned
with the artifacts they paid for, so the figure is the pipeline's own (a teammate who pulled the run sees what it
cost; an empty store would say nothing was spent). A stage reads them as a gate only, never as a DVC dependency:
they decide whether it may start or go on, and never what it writes (a refusal writes nothing), so its outputs stay
a function of its declared deps and params, and a re-run of synthesize (its metrics carry wall-clock seconds)
does not re-run label. The `cost` stage, whose output is made of them, declares them as deps.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from slmforge.errors import UserError
from slmforge.oracle.types import Request
from slmforge.params import OracleParams

PIPELINE = ("synthesize", "calibrate", "label", "evaluate")  # the oracle stages, in DAG order
FRAMING_TOKENS = 32  # role markers and message framing the API adds around system and user text


def worst_usd(req: Request, p: OracleParams, batch: bool = False) -> float:
    """What one call can cost at most: a token covers at least one byte of UTF-8 (so bytes bound the prompt's
    tokens even for text with a token per character, where the estimate's 3.5 characters a token does not), the
    prompt may be written to the prompt cache (priced above plain input), and the answer is capped by max_tokens."""
    tokens_in = len(req.system.encode()) + len(req.prompt.encode()) + FRAMING_TOKENS
    usd = (tokens_in * p.price_in_per_mtok * max(1.0, p.cache_write_multiplier)
           + req.max_tokens * p.price_out_per_mtok) / 1e6
    return usd * (p.batch_discount if batch else 1.0)


class BudgetStop(UserError):
    """The stage stopped before a call that could cross its allowance (every answer so far is cached)."""


@dataclass
class Budget:
    stage: str
    pipeline_max: float  # oracle.max_usd
    stage_max: float  # oracle.stage_max_usd[stage] (inf when the stage has no ceiling of its own)
    spent: dict[str, float] = field(default_factory=dict)  # earlier stages -> what their last run paid
    forecast: dict[str, float] = field(default_factory=dict)  # later stages -> their estimate
    paid: float = 0.0  # this stage, so far (actual prices of the answers)
    reserved: float = 0.0  # worst cases of the calls in flight
    calls: int = 0  # calls admitted so far
    planned_calls: int = 0  # what the preflight counted (for the stop message)

    def __post_init__(self):
        self._lock = threading.Lock()  # calls complete on the client's worker threads

    @classmethod
    def for_stage(cls, stage: str, params: OracleParams, spent: dict[str, float] | None = None,
                  forecast: dict[str, float] | None = None) -> Budget:
        unknown = sorted(set(params.stage_max_usd) - set(PIPELINE))
        if unknown:
            raise UserError(f"params.yaml: oracle.stage_max_usd.{unknown[0]} is not an oracle stage "
                            f"(the stages are {', '.join(PIPELINE)})")
        if stage not in params.stage_max_usd:
            raise UserError(f"params.yaml: oracle.stage_max_usd has no ceiling for {stage}: add `{stage}: <usd>`")
        return cls(stage, params.max_usd, params.stage_max_usd[stage], dict(spent or {}), dict(forecast or {}))

    def allowance(self) -> float:
        return min(self.stage_max, self.pipeline_max - sum(self.spent.values()) - sum(self.forecast.values()))

    def describe(self) -> str:
        return (f"allowance ${max(self.allowance(), 0):.2f}: oracle.stage_max_usd.{self.stage}=${self.stage_max:.2f}, "
                f"oracle.max_usd=${self.pipeline_max:.2f} less ${sum(self.spent.values()):.2f} spent upstream and "
                f"${sum(self.forecast.values()):.2f} forecast downstream")

    def preflight(self, misses: int, usd: float) -> None:
        """Before the stage's first paid call: its estimate under its own ceiling, and the whole pipeline's under
        oracle.max_usd. A free stage (no miss, or a $0 estimate under a $0 ceiling) always passes."""
        self.planned_calls = max(self.planned_calls, misses)
        if not misses:
            return
        if usd > self.stage_max:
            raise UserError(f"oracle: {self.stage} would ask {misses} calls estimated at ${usd:.2f}, above its "
                            f"ceiling oracle.stage_max_usd.{self.stage}=${self.stage_max:.2f}: raise it "
                            f"(-S oracle.stage_max_usd.{self.stage}=...) or ask fewer records")
        total = sum(self.spent.values()) + self.paid + usd + sum(self.forecast.values())
        if total > self.pipeline_max:
            raise UserError(f"oracle: the pipeline would cost ${total:.2f} with {self.stage}'s {misses} calls "
                            f"(estimated ${usd:.2f}; {_parts('spent', self.spent)}; "
                            f"{_parts('forecast', self.forecast)}), above oracle.max_usd=${self.pipeline_max:.2f}: "
                            f"raise it (-S oracle.max_usd=...) or ask fewer records (`slmforge cost` shows each stage)")

    def admit(self, worst: float) -> None:
        """Before one call: reserve its worst case, or stop when it could take the stage past its allowance."""
        with self._lock:
            allowance = self.allowance()
            if self.paid + self.reserved + worst > allowance + 1e-12:
                raise BudgetStop(
                    f"oracle: {self.stage} stopped before call {self.calls + 1}"
                    f"{f' of {self.planned_calls}' if self.planned_calls else ''}: ${self.paid:.4f} paid so far"
                    f"{f' (${self.reserved:.4f} in flight)' if self.reserved else ''} and the next call could "
                    f"cost up to ${worst:.4f}, past its allowance ${max(allowance, 0):.4f} (the lesser of "
                    f"oracle.stage_max_usd.{self.stage} and oracle.max_usd less the rest of the pipeline); the "
                    f"answers so far are cached: raise the ceiling and run again")
            self.reserved += worst
            self.calls += 1

    def settle(self, worst: float, actual: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - worst)
            self.paid += actual


def unbounded(stage: str, params: OracleParams) -> Budget:
    """A budget of oracle.max_usd alone (no stage ceiling, nothing spent or forecast): for an Oracle made outside
    a pipeline stage (tests, benchmarks), which keeps the ceiling's meaning of one stage's spending."""
    return Budget(stage, params.max_usd, math.inf)


def _parts(what: str, by_stage: dict[str, float]) -> str:
    if not by_stage:
        return f"nothing {what}"
    return f"{what} " + ", ".join(f"{s} ${v:.2f}" for s, v in by_stage.items())
