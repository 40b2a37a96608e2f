"""`slmforge cost`'s look-ups before anything runs: the records at hand and the answers already held. Apart from
slmforge.cost so that the oracle stages, which import that, do not depend on every source's code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slmforge.errors import UserError
from slmforge.oracle.types import Request
from slmforge.params import OracleParams


# --- `slmforge cost`: the forecast before anything runs ---------------------------------------------------------

def cache_lookup(p: OracleParams, base_dir, base_json, answer_dirs: list[Path]) -> Callable[[Request], bool] | None:
    """Whether a request's answer is held (the store or a stage's pulled answers), keyed as the oracle keys it;
    None when the local oracle's model is not materialised yet (its pin is part of the key)."""
    from slmforge.oracle.cache import AnswerCache, request_key, store_dir
    from slmforge.oracle.client import decoding

    if p.backend == "local":
        from slmforge.oracle.local import LocalBackend

        try:
            model = LocalBackend(p, base_dir, base_json).model_id()  # reads the pin; loads no weights
        except UserError:
            return None
    else:
        model = p.model  # no client is made: the forecast needs no key
    roots = [store_dir(), *answer_dirs]
    return lambda r: any((root / AnswerCache._rel(request_key(p.backend, model, decoding(p), r))).exists()
                         for root in roots)


def records_at_hand(kept: Path, raw_dir: Path, sources: dict) -> tuple[list[dict] | None, list[str], str]:
    """(records, sources not counted, where they came from): the kept records, else the raw pulls, else the local
    sources collected in memory (the sample and files sources cost nothing to read)."""
    from slmforge.io import read_jsonl
    from slmforge.sources import COLLECTORS

    if kept.exists():
        return read_jsonl(kept), [], str(kept)
    records, missing = [], []
    for name, sp in sources.items():
        raw = raw_dir / f"{name}.jsonl"
        if raw.exists():
            records += read_jsonl(raw)
        elif sp.kind in ("sample", "files"):
            records += COLLECTORS[sp.kind](sp, run_id="cost-forecast", quarantine=[], stats={})
        else:
            missing.append(name)
    return (records or None), missing, "the sources before cleaning (an upper bound: clean only drops)"
