"""conf/ composed into params.yaml as DVC's Hydra integration does, and the check that params.yaml is fresh."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slmforge.errors import UserError
from slmforge.params.load import read_params_file


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
