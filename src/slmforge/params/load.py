"""Reading params.yaml: a section as its typed dataclass (build checks every key and type), the domains and the
sources."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from slmforge.errors import UserError
from slmforge.params.data import ChatmlParams, CleanParams, LabelParams, SplitParams, SynthesizeParams
from slmforge.params.evaluate import EvalParams
from slmforge.params.oracle import CalibrationParams, OracleParams, RubricParams
from slmforge.params.sources import (ApifySourceParams, ArxivSourceParams, FilesSourceParams, HfSourceParams,
                                     SampleSourceParams, StackExchangeSourceParams)
from slmforge.params.train import DomainParams, LoraParams, ModelParams, ScorerParams, TrainParams


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


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)
