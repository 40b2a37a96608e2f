"""What the oracle costs the whole pipeline: a forecast of each oracle stage from the data at hand, what each stage's
last run paid and what the cache saved (from the stages' run facts), metrics/runs/cost.json and reports/cost.md.

A forecast is built from the stage's real requests wherever its input exists (synthesize from the kept records,
calibrate and label from the chat rows), so the cache is consulted and a warm re-run forecasts $0; before its
input exists it is built from stand-ins (the kept pair records as chat rows, synthetic pairs of the longest answer
the oracle may write). The judge's answers do not exist before evaluate generates them: its forecast assumes every
answer as long as eval.max_new_tokens allows. Each figure is the upper estimate of slmforge.oracle.client
(every prompt uncached, every answer max_tokens long).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError
from slmforge.oracle.budget import PIPELINE, Budget
from slmforge.oracle.client import CHARS_PER_TOKEN, estimate_usd
from slmforge.oracle.types import Request
from slmforge.params import (CalibrationParams, EvalParams, OracleParams, RubricParams, SplitParams,
                             SynthesizeParams, load_params)
from slmforge.row_identity import stable_hash

ANSWER_CHARS_PER_TOKEN = 4.0  # a judged answer of n tokens, as text: English averages about 4 characters a token


@dataclass(frozen=True)
class CostParams:
    """The sections a forecast reads. A stage loads them to forecast the stages after it, without declaring them
    as DVC params: they decide only whether the stage may start, never what it writes."""
    oracle: OracleParams
    synthesize: SynthesizeParams
    calibration: CalibrationParams
    rubric: RubricParams
    split: SplitParams
    eval: EvalParams


def load_cost_params(path: str | Path = "params.yaml") -> CostParams:
    return CostParams(**{name: load_params(name, path) for name in CostParams.__dataclass_fields__})


@dataclass
class Forecast:
    stage: str
    requests: int
    cached: int
    usd: float  # upper estimate of the requests not cached
    basis: str  # what it was built from

    @property
    def to_ask(self) -> int:
        return self.requests - self.cached


def estimate(stage: str, requests: list[Request], p: OracleParams, has: Callable[[Request], bool] | None,
             basis: str, batch: bool = False, dedupe: bool = True) -> Forecast:
    """Requests asked once each (duplicates share an answer, as in the client); `has` says which are cached."""
    unique = list({(r.system, r.prompt, r.max_tokens, r.repeat): r for r in requests}.values()) if dedupe \
        else requests
    misses = [r for r in unique if has is None or not has(r)]
    return Forecast(stage, len(unique), len(unique) - len(misses), estimate_usd(misses, p, batch), basis)


def pseudo_rows(records: list[dict]) -> list[dict]:
    """Chat rows standing in for the pair records chatml will make (its system prompt and user template aside)."""
    return [{"id": r["id"], "source": r.get("source"), "meta": r.get("meta") or {},
             "messages": [{"role": "user", "content": r.get("prompt") or ""},
                          {"role": "assistant", "content": r.get("response") or ""}]}
            for r in records if r.get("kind") == "pair"]


def synthetic_stand_ins(n: int, p: CostParams) -> list[dict]:
    """n synthetic pairs as long as the oracle's answer allows (a document's max_tokens shared by its pairs)."""
    chars = int(p.oracle.max_tokens * CHARS_PER_TOKEN / max(p.synthesize.pairs_per_document, 1))
    return [{"id": f"synthetic:forecast:{k}", "source": "synthetic", "meta": {"origin": "synthetic"},
             # numbered: alike stand-ins would count as one request (the client asks a repeated text once)
             "messages": [{"role": "user", "content": f"{k} " + "q" * (chars // 3)},
                          {"role": "assistant", "content": "a" * (chars - chars // 3)}]} for k in range(n)]


def synthesize_forecast(records: list[dict], p: CostParams, has=None) -> tuple[Forecast, int]:
    """(synthesize's forecast, the synthetic pairs it may add) from the kept records."""
    from slmforge.synthesis import synth_requests

    requests = synth_requests(records, p.synthesize, p.oracle.max_tokens)
    return (estimate("synthesize", requests, p.oracle, has, f"{len(requests)} documents"),
            len(requests) * p.synthesize.pairs_per_document)


def calibrate_forecast(rows: list[dict], p: CostParams, has=None, basis: str = "chat rows") -> Forecast:
    from slmforge.calibration import calibration_requests

    return estimate("calibrate", calibration_requests(rows, p.rubric, p.calibration), p.oracle, has, basis)


def label_forecast(rows: list[dict], p: CostParams, has=None, basis: str = "chat rows") -> Forecast:
    from slmforge.oracle.prompts import rubric_system, score_request

    system = rubric_system(p.rubric)
    return estimate("label", [score_request(r, p.rubric, system) for r in rows], p.oracle, has, basis,
                    batch=p.oracle.batch)


def judge_forecast(rows: list[dict], p: CostParams, basis: str) -> Forecast:
    """The judge's two orders of each test item; `rows` are the test items (data/split/test.jsonl) or, before the
    split exists, every chat row (the test fraction of them is taken, ranked as the split ranks)."""
    from slmforge.oracle.prompts import judge_request, judge_system

    e = p.eval
    if not e.judge.enabled:
        return Forecast("evaluate", 0, 0, 0.0, "eval.judge.enabled is false")
    if basis != "test split":
        share = round(len(rows) * p.split.fractions.get("test", 0.0))
        rows = sorted(rows, key=lambda r: stable_hash(p.split.salt, r["id"]))[:share]
    caps = [c for c in (e.max_test_items, e.judge.max_items) if c]
    rows = rows[:min(caps)] if caps else rows
    answer = "x" * int(e.max_new_tokens * ANSWER_CHARS_PER_TOKEN)
    system = judge_system(p.rubric.domain)
    requests = []
    for r in rows:
        question = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
        reference = next((m["content"] for m in reversed(r["messages"]) if m["role"] == "assistant"), "")
        requests += [judge_request(f"{r['id']}#{order}", question, reference, answer, answer, system)
                     for order in ("base_first", "tuned_first")]
    # Not deduplicated and not looked up: the stand-in answers are alike, the real ones are not known yet.
    return estimate("evaluate", requests, p.oracle, None,
                    f"{len(rows)} test items x 2 orders, answers of {e.max_new_tokens} tokens ({basis})", dedupe=False)


def forecast_pipeline(p: CostParams, *, records: list[dict] | None = None, rows: list[dict] | None = None,
                      test_rows: list[dict] | None = None, has=None) -> list[Forecast]:
    """Every oracle stage's forecast from the deepest input at hand: kept records, chat rows, the test split."""
    out = []
    if rows is None:
        if records is None:
            raise UserError("cost: no records to forecast from (data/clean/kept.jsonl or data/raw/): run "
                            "`dvc repro clean` first, or collect the sources")
        synth, n_synthetic = synthesize_forecast(records, p, has)
        out.append(synth)
        stand_ins = pseudo_rows(records) + synthetic_stand_ins(n_synthetic, p)
        basis = f"{len(stand_ins)} rows forecast from the records"
        out += [calibrate_forecast(stand_ins, p, has, basis), label_forecast(stand_ins, p, has, basis),
                judge_forecast(stand_ins, p, "forecast rows")]
        return out
    if records is not None:
        out.append(synthesize_forecast(records, p, has)[0])
    out += [calibrate_forecast(rows, p, has), label_forecast(rows, p, has)]
    out.append(judge_forecast(test_rows, p, "test split") if test_rows is not None
               else judge_forecast(rows, p, "chat rows"))
    return out


def read_spent(paths: dict[str, str | Path]) -> dict[str, float]:
    """What each earlier stage's last run paid (`oracle.usd` of its metrics); a stage not run yet paid nothing."""
    spent = {}
    for stage, path in paths.items():
        if stage not in PIPELINE:
            raise UserError(f"--spent {stage}=...: not an oracle stage (the stages are {', '.join(PIPELINE)})")
        path = Path(path)
        spent[stage] = float((json.loads(path.read_text()).get("oracle") or {}).get("usd") or 0.0) \
            if path.exists() else 0.0
    return spent


def stage_budget(stage: str, p: CostParams, spent_paths: dict[str, str | Path], forecasts: list[Forecast]) -> Budget:
    """The budget of `stage`: the earlier stages' spending and the later stages' forecasts against the ceilings."""
    later = PIPELINE[PIPELINE.index(stage) + 1:]
    return Budget.for_stage(stage, p.oracle, read_spent(spent_paths),
                            {f.stage: f.usd for f in forecasts if f.stage in later})


def parse_spent(items: list[str]) -> dict[str, str]:
    """`--spent synthesize=metrics/synthesize.json ...` as {stage: path}."""
    out = {}
    for item in items:
        stage, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--spent {item!r}: expected STAGE=METRICS_FILE, e.g. synthesize=metrics/runs/synthesize.json")
        out[stage] = path
    return out


# --- what was spent: metrics/runs/cost.json and reports/cost.md ----------------------------------------------------

def cost_summary(metrics: dict[str, dict], p: OracleParams) -> dict:
    """Per stage and in total: calls, cache hits, tokens, dollars paid and saved by the cache, from each oracle
    stage's metrics (`oracle` block); the ceilings beside them."""
    keys = ("calls", "cache_hits", "failures", "tokens_in", "tokens_out", "usd", "usd_saved")
    stages = {}
    for stage in PIPELINE:
        o = (metrics.get(stage) or {}).get("oracle") or {}
        stages[stage] = {k: o.get(k, 0) or 0 for k in keys}
        stages[stage]["ceiling_usd"] = p.stage_max_usd.get(stage)
        stages[stage]["within_ceiling"] = stages[stage]["usd"] <= p.stage_max_usd.get(stage, float("inf")) + 1e-9
    total = {k: sum(s[k] for s in stages.values()) for k in keys}
    total["usd"], total["usd_saved"] = round(total["usd"], 6), round(total["usd_saved"], 6)
    return {"backend": p.backend, "model": p.model, "ceiling_usd": p.max_usd, "stages": stages,
            "total": {**total, "within_ceiling": total["usd"] <= p.max_usd + 1e-9}}


def cost_markdown(summary: dict) -> str:
    t = summary["total"]
    lines = ["# Oracle cost", "",
             f"**${t['usd']:.4f} paid, ${t['usd_saved']:.4f} saved by the cache** over {t['calls']} calls and "
             f"{t['cache_hits']} answers from the cache; pipeline ceiling oracle.max_usd=${summary['ceiling_usd']:.2f} "
             f"({'within' if t['within_ceiling'] else 'OVER'}). Oracle: {summary['backend']} / {summary['model']}.",
             "", "| stage | calls | cache hits | failures | tokens in | tokens out | paid | saved by the cache | "
             "ceiling |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for stage, s in [*summary["stages"].items(), ("total", t)]:
        ceiling = summary["ceiling_usd"] if stage == "total" else s["ceiling_usd"]
        lines.append(f"| {stage} | {s['calls']} | {s['cache_hits']} | {s['failures']} | {s['tokens_in']} | "
                     f"{s['tokens_out']} | ${s['usd']:.4f} | ${s['usd_saved']:.4f} | "
                     f"{'n/a' if ceiling is None else f'${ceiling:.2f}'} |")
    lines += ["", "Paid: what each stage's last run was billed (tokens at the prices in conf/oracle/). Saved: what "
              "the answers it took from the cache cost when they were asked, at today's prices. The local oracle "
              "is free: its calls are counted, not priced."]
    return "\n".join(lines) + "\n"


def forecast_table(forecasts: list[Forecast], p: OracleParams, spent: dict[str, float] | None = None) -> list[str]:
    """`slmforge cost`'s lines: each stage's requests, cached answers, estimate and ceiling, then the total."""
    rows = [f"oracle {p.backend}:{p.model}; ${p.price_in_per_mtok:g} / ${p.price_out_per_mtok:g} per million tokens "
            f"in / out; upper estimates (every prompt uncached, every answer max_tokens long)",
            f"{'stage':<11} {'requests':>8} {'cached':>7} {'to ask':>7} {'estimate':>10} {'ceiling':>9}  basis"]
    for f in forecasts:
        ceiling = p.stage_max_usd.get(f.stage)
        over = " OVER" if ceiling is not None and f.usd > ceiling else ""
        rows.append(f"{f.stage:<11} {f.requests:>8} {f.cached:>7} {f.to_ask:>7} {f'${f.usd:.2f}':>10} "
                    f"{'n/a' if ceiling is None else f'${ceiling:.2f}':>9}{over}  {f.basis}")
    total = sum(f.usd for f in forecasts)
    rows.append(f"{'total':<11} {sum(f.requests for f in forecasts):>8} {sum(f.cached for f in forecasts):>7} "
                f"{sum(f.to_ask for f in forecasts):>7} {f'${total:.2f}':>10} {f'${p.max_usd:.2f}':>9}  "
                f"oracle.max_usd: {'within' if total <= p.max_usd else 'OVER: the first paid call would be refused'}")
    if spent and any(spent.values()):
        rows.append("last runs paid: " + ", ".join(f"{s} ${v:.4f}" for s, v in spent.items()))
    return rows


def attach_budget(oracle, stage: str, p: CostParams, spent_paths: dict[str, str | Path], **data) -> list[Forecast]:
    """Give `oracle` the budget of `stage` (forecasting from `data`: records, rows, test_rows, with the oracle's
    own cache keys) and return the forecasts."""
    forecasts = forecast_pipeline(p, has=lambda r: oracle.cache.has(oracle.key(r)), **data)
    oracle.budget = stage_budget(stage, p, spent_paths, forecasts)
    return forecasts
