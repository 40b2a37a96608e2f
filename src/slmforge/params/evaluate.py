"""Params of the eval section: generation, the pairwise judge, the verdict and the numerics check."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeParams:
    enabled: bool  # the oracle compares base and tuned answers to each test item, in both orders
    max_items: int  # 0: every test item
    tie_margin: float  # a preference within this of the middle of the scale is a tie
    max_inconsistency: float  # a judge whose verdicts change with the order more often says nothing: left out


@dataclass(frozen=True)
class VerdictParams:
    metric: str  # the per-item metric the verdict is made on (rouge_l, nll, token_accuracy, judge)
    p_max: float  # Wilcoxon p below this
    min_effect: float  # Cohen's d above this
    min_improvement: float  # relative improvement above this (0.15 = 15%)
    on_overfit: str  # report (the flag in the report only) | review (DEPLOY becomes REVIEW) | fail


@dataclass(frozen=True)
class NumericsParams:
    enabled: bool  # the probes and a test sample also on the full-precision base, with and without the adapter
    test_items: int  # test items in that sample (every probe is in it)


@dataclass(frozen=True)
class EvalParams:
    max_new_tokens: int
    batch_size: int
    max_test_items: int  # 0: all
    max_probes: int  # 0: all
    seed: int
    abstain_markers: list[str]
    units: list[str]  # a reference with a number in one of these units asks the answer to use the unit too
    bootstrap: int  # resamples for the 95% intervals
    examples: int  # side-by-side examples in reports/eval.md
    strip_think: bool  # drop <think>...</think> reasoning from answers before metrics and the judge
    judge: JudgeParams
    verdict: VerdictParams
    numerics: NumericsParams
    latency_queries: int  # test items timed one at a time for base and tuned (metrics/latency/); 0: none
