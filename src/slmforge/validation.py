"""Every param checked before any stage does work: each section's keys and types (the typed dataclasses of
params/), then ranges and orderings that a type cannot say (learning rate > 0, rank >= 1, fractions in [0, 1],
pass lines below fail lines), and a Hydra composition error turned into one line.

`validate` runs in `slmforge compose` before params.yaml is written and at the start of every stage (through
`check_params_fresh`), so `dvc exp run -S train.lr=-1` stops at the first stage in one line naming the key and
what it may be, instead of a torch traceback after every upstream stage (paid oracle stages included) has run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slmforge.errors import UserError
from slmforge.params import SECTIONS, SOURCE_PARAMS, DomainParams, build

Check = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def above(lo: float) -> tuple[Check, str]:
    return (lambda v: _number(v) and v > lo), f"a number > {lo:g}"


def at_least(lo: float, integer: bool = False) -> tuple[Check, str]:
    kind = "an integer" if integer else "a number"
    return (lambda v: _number(v) and v >= lo and (not integer or v == int(v))), f"{kind} >= {lo:g}"


def within(lo: float, hi: float, hi_open: bool = False) -> tuple[Check, str]:
    return (lambda v: _number(v) and lo <= v and (v < hi if hi_open else v <= hi)), \
        f"a number in [{lo:g}, {hi:g}{')' if hi_open else ']'}"


def one_of(*choices: Any) -> tuple[Check, str]:
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


def steps() -> tuple[Check, str]:
    return (lambda v: v == -1 or (_number(v) and v >= 1)), "-1 (run `epochs`) or an integer >= 1"


def ascending() -> tuple[Check, str]:
    return (lambda v: all(a < b for a, b in zip(v, v[1:]))), "a list in ascending order"


def regex() -> tuple[Check, str]:
    def ok(v):
        try:
            re.compile(v)
            return True
        except re.error:
            return False
    return ok, "a valid regular expression"


FRACTION, POSITIVE, COUNT, AT_LEAST_1 = within(0, 1), above(0), at_least(0, True), at_least(1, True)
# The per-item metrics evaluation.compare.PAIRED can decide a verdict on (a test keeps the two lists equal).
VERDICT_METRICS = ("rouge_l", "nll", "token_accuracy", "judge", "correct", "hallucinated")
TRAINING = {"epochs": POSITIVE, "max_steps": steps(), "batch_size": AT_LEAST_1, "grad_accum": AT_LEAST_1,
            "lr": POSITIVE, "warmup_ratio": FRACTION, "weight_decay": at_least(0), "max_grad_norm": at_least(0),
            "eval_steps": AT_LEAST_1, "logging_steps": AT_LEAST_1, "max_train_examples": COUNT}
LORA = {"r": AT_LEAST_1, "alpha": POSITIVE, "dropout": within(0, 1, hi_open=True)}

# dotted path ("*" matches every key of a mapping or item of a list) -> (check, what is allowed)
RULES: dict[str, tuple[Check, str]] = {
    "model.source": one_of("gguf_package", "hub"),
    "model.compute_dtype": one_of("auto", "bfloat16", "float32", "float16"),
    **{f"lora.{k}": v for k, v in LORA.items()},
    **{f"train.{k}": v for k, v in TRAINING.items()},
    "train.max_seq_len": AT_LEAST_1, "train.early_stopping_patience": COUNT, "train.origin_weights.*": at_least(0),
    "train.gap_threshold": at_least(0),
    "eval.max_new_tokens": AT_LEAST_1, "eval.batch_size": AT_LEAST_1, "eval.max_test_items": COUNT,
    "eval.max_probes": COUNT, "eval.bootstrap": AT_LEAST_1, "eval.examples": COUNT, "eval.judge.max_items": COUNT,
    "eval.judge.tie_margin": within(0, 5), "eval.judge.max_inconsistency": FRACTION,
    "eval.verdict.metric": one_of(*VERDICT_METRICS), "eval.verdict.p_max": within(0, 1),
    **{f"scorer.{k}": v for k, v in TRAINING.items()}, **{f"scorer.lora.{k}": v for k, v in LORA.items()},
    "scorer.head_tokens": AT_LEAST_1, "scorer.tail_tokens": COUNT, "scorer.verdict.*": at_least(0),
    "split.fractions.*": FRACTION, "split.probe_phrasings_per_fact": COUNT, "split.min_tier_rows": AT_LEAST_1,
    "split.score_bins": ascending(), "split.leakage_threshold": FRACTION, "split.encoder_batch_size": AT_LEAST_1,
    "chatml.kinds.*": one_of("pair", "document"), "chatml.histogram_bins": ascending(),
    "eval.verdict.on_overfit": one_of("report", "review", "fail"),
    "clean.max_record_bytes": AT_LEAST_1, "clean.rules.min_prompt_chars": COUNT, "clean.rules.min_chars": COUNT,
    "clean.rules.max_chars": AT_LEAST_1, "clean.rules.max_urls": COUNT, "clean.rules.max_hashtags": COUNT,
    "clean.rules.max_upper_ratio": FRACTION, "clean.rules.spam_patterns.*": regex(),
    "clean.language.min_prob": FRACTION, "clean.language.max_chars": AT_LEAST_1, "clean.language.workers": AT_LEAST_1,
    "clean.toxicity.backend": one_of("detoxify", "profanity"), "clean.toxicity.threshold": FRACTION,
    "clean.toxicity.batch_size": AT_LEAST_1, "clean.dedup.threshold": FRACTION, "clean.dedup.max_tokens": AT_LEAST_1,
    "clean.dedup.dtype": one_of("auto", "bfloat16", "float32"), "clean.dedup.batch_size": AT_LEAST_1,
    "clean.dedup.block_size": AT_LEAST_1,
    "synthesize.pairs_per_document": AT_LEAST_1, "synthesize.max_documents": COUNT,
    "synthesize.max_document_chars": AT_LEAST_1, "synthesize.min_answer_chars": COUNT,
    "oracle.backend": one_of("claude", "local"), "oracle.max_tokens": AT_LEAST_1, "oracle.max_field_tokens": AT_LEAST_1,
    "oracle.concurrency": AT_LEAST_1, "oracle.max_retries": COUNT, "oracle.timeout_s": POSITIVE,
    "oracle.price_in_per_mtok": at_least(0), "oracle.price_out_per_mtok": at_least(0),
    "oracle.cache_write_multiplier": at_least(0), "oracle.cache_read_multiplier": at_least(0),
    "oracle.batch_discount": within(0, 1), "oracle.max_usd": at_least(0), "oracle.batch_poll_s": POSITIVE,
    "oracle.max_failure_share": FRACTION,
    "rubric.dimensions.*.weight": FRACTION,
    "calibration.gate": one_of("auto", "enforce", "warn"), "calibration.strata_by": one_of("keywords", "source"),
    "calibration.strata.*": COUNT, "calibration.on_topic_min_hits": AT_LEAST_1,
    "calibration.self_consistency_n": COUNT, "calibration.bootstrap": AT_LEAST_1,
    **{f"calibration.thresholds.{k}": FRACTION for k in ("pass_fp_max", "pass_fn_max", "pass_parse_fail_max",
                                                         "fail_fp_min", "fail_fn_min")},
    "calibration.thresholds.overfit_points": at_least(0),
    "sources.*.max_records": COUNT, "sources.*.http.timeout_s": POSITIVE, "sources.*.http.max_retries": COUNT,
    "sources.*.http.backoff_s": at_least(0), "sources.*.record_kind": one_of("pair", "document"),
    "sources.*.format": one_of("auto", "csv", "json", "jsonl", "parquet", "txt"),
    "sources.*.txt_unit": one_of("file", "paragraph", "line"), "sources.*.max_record_bytes": AT_LEAST_1,
    "sources.*.page_size": AT_LEAST_1, "sources.*.max_pages": AT_LEAST_1, "sources.*.delay_s": at_least(0),
    "sources.*.timeout_s": POSITIVE, "sources.*.max_retries": COUNT,
}

# (smaller, larger, why): the first may not exceed the second.
ORDERED = [
    ("clean.rules.min_chars", "clean.rules.max_chars", "a record cannot be both long enough and short enough"),
    ("rubric.min_score", "rubric.max_score", "the score scale"),
    ("calibration.thresholds.pass_fp_max", "calibration.thresholds.fail_fp_min", "a PASS line is inside its FAIL line"),
    ("calibration.thresholds.pass_fn_max", "calibration.thresholds.fail_fn_min", "a PASS line is inside its FAIL line"),
    ("calibration.thresholds.off_topic_fp_score", "calibration.thresholds.severe_fp_score",
     "a severe false positive is a false positive"),
    ("scorer.verdict.deploy_mae", "scorer.verdict.fail_mae", "DEPLOY needs a smaller error than FAIL allows"),
]


def values(data: Any, path: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each place `path` names in `data`; a key a section does not have is skipped
    (a source's fields depend on its kind)."""
    head, _, rest = path.partition(".")
    if head == "*":
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    else:
        items = [(head, data[head])] if isinstance(data, dict) and head in data else []
    for key, value in items:
        where = f"{prefix}.{key}" if prefix else str(key)
        yield from (values(value, rest, where) if rest else [(where, value)])


def _build(cls: type, data: Any, name: str, where: str) -> None:
    try:
        build(cls, data, name)
    except UserError as exc:  # build names params.yaml; `slmforge compose` checks before that file exists
        raise UserError(str(exc).replace("params.yaml: ", f"{where}: ", 1)) from None


def _get(data: dict, path: str) -> Any:
    return next((v for _, v in values(data, path)), None)


def validate(data: dict, where: str = "params.yaml") -> None:
    """One UserError naming the first bad key of params (as composed) and what it may be; nothing when all is well."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - {"sources", "domains"})
    if unknown:
        raise UserError(f"{where}: unknown section `{unknown[0]}` (sections: {', '.join([*SECTIONS, 'sources', 'domains'])})")
    for name, cls in SECTIONS.items():
        if name not in data:
            raise UserError(f"{where}: missing section `{name}`: run `slmforge compose` (or `dvc exp run`)")
        _build(cls, data[name], name, where)  # unknown, missing and mistyped keys
    sources = data.get("sources") or {}
    if not isinstance(sources, dict) or not sources:
        raise UserError(f"{where}: no source configured under `sources` (conf/config.yaml: sources: [sample])")
    for name, src in sources.items():
        kind = src.get("kind") if isinstance(src, dict) else None
        if kind not in SOURCE_PARAMS:
            raise UserError(f"{where}: sources.{name}.kind must be one of {', '.join(SOURCE_PARAMS)}, got {kind!r}")
        _build(SOURCE_PARAMS[kind], src, f"sources.{name}", where)
    domains = data.get("domains") or {}
    if not isinstance(domains, dict) or not domains:
        raise UserError(f"{where}: no domain configured under `domains` (conf/domains/all.yaml: one adapter on every row)")
    for name, domain in domains.items():
        _build(DomainParams, domain, f"domains.{name}", where)
    for path, (ok, allowed) in RULES.items():
        for key, value in values(data, path):
            if not ok(value):
                raise UserError(f"{where}: {key} is {value!r}; it must be {allowed}")
    for small, large, why in ORDERED:
        a, b = _get(data, small), _get(data, large)
        if a is not None and b is not None and a > b:
            raise UserError(f"{where}: {small} ({a!r}) is above {large} ({b!r}): {why}")
    _cross_checks(data, where)


def _cross_checks(data: dict, where: str) -> None:
    fractions = data["split"]["fractions"]
    if set(fractions) != {"train", "val", "test"} or abs(sum(fractions.values()) - 1) > 1e-6:
        raise UserError(f"{where}: split.fractions must be train, val and test summing to 1, got {fractions}")
    rubric = data["rubric"]
    weights = sum(d["weight"] for d in rubric["dimensions"].values())
    if abs(weights - 1) > 1e-6:
        raise UserError(f"{where}: rubric.dimensions weights sum to {weights:g}; they must sum to 1")
    lo, hi = rubric["min_score"], rubric["max_score"]
    for tier, start in rubric["tiers"].items():
        if not lo <= start <= hi:
            raise UserError(f"{where}: rubric.tiers.{tier} is {start!r}; it must be in [{lo}, {hi}] (rubric.min_score, "
                            "rubric.max_score)")
    for i, gate in enumerate(rubric["gatekeepers"]):
        if gate["dimension"] not in rubric["dimensions"]:
            raise UserError(f"{where}: rubric.gatekeepers[{i}].dimension is {gate['dimension']!r}; it must be one of "
                            + ", ".join(rubric["dimensions"]))
    bad = sorted(set(data["label"]["drop_tiers"]) - set(rubric["tiers"]))
    if bad:
        raise UserError(f"{where}: label.drop_tiers names {bad[0]!r}; tiers are " + ", ".join(rubric["tiers"]))
    configured = list(data["sources"])
    if data["clean"]["sources"] != configured:
        # clean reads exactly the raw files of these sources; conf/clean/default.yaml derives the list from
        # `sources`, so a value set by hand would read another set than the one collected.
        raise UserError(f"{where}: clean.sources is {data['clean']['sources']!r} but the configured sources are "
                        f"{configured!r}: leave clean.sources to conf/clean/default.yaml (${{oc.dict.keys:sources}})")


def composition_error(exc: Exception, overrides: list[str], conf_dir: str | Path = "conf") -> str:
    """One line for a Hydra error of composing conf/ with `overrides` (Hydra's own is a long traceback)."""
    text = " ".join(str(exc).split())
    missing = re.search(r"Could not (?:find|load) '([^']+)/([^'/]+)'", text)
    if missing:  # model=nope, sources=[nope]: no such option file
        group, option = missing.groups()
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        return f"{group}={option}: no such option; conf/{group}/ has: {', '.join(options)}"
    if "Key not found: 'sources'" in text:
        options = sorted(p.stem for p in (Path(conf_dir) / "sources").glob("*.yaml"))
        return f"no source configured: `sources` needs at least one of {', '.join(options)}"
    cause = exc.__cause__ or exc.__context__
    key = re.search(r"Could not override '([^']+)'", text)
    if key and cause is not None and "not in struct" in str(cause):
        section, _, leaf = key.group(1).rpartition(".")
        return (f"unknown key {key.group(1)}: no `{leaf}` under `{section or '(top level)'}` in conf/ "
                f"(to add a new key on purpose, write +{key.group(1)}=...)")
    reason = " ".join(str(cause).split()).split(" full_key:")[0] if cause is not None else ""
    return f"cannot compose conf/ with {' '.join(overrides) or 'no overrides'}: {text}" + (f" ({reason})" if reason else "")
