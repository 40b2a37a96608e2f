"""How every stage and command ends: a user error is one line on stderr and exit code 1, Ctrl-C one line and
exit code 130, never a traceback; and the one-line stop of a stage left with nothing to pass on."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from slmforge.errors import UserError


def _name() -> str:
    """The stage or command being run: `python -m stages.clean` -> clean, `slmforge` -> slmforge."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    return {"cli": "slmforge", "": "slmforge", "__main__": "slmforge"}.get(stem, stem)


def run(main: Callable[[], None]) -> None:
    # Quieter libraries: their progress bars stay, their advice on unrelated features goes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Outputs are renamed into place only when complete, oracle answers are in the store the moment they
        # arrive and training keeps checkpoints, so a re-run picks up where this one stopped.
        print(f"\n{_name()}: interrupted (Ctrl-C); nothing half-written was left, run it again to resume",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit, not sys.exit: a worker thread still waiting on an oracle call would hold the interpreter's
        # exit for up to oracle.timeout_s. 130 = 128 + SIGINT, what a shell, make and DVC read as interrupted.
        os._exit(130)


def require_records(stage: str, left: int, records_in: int, removed_by: Mapping[str, int], fix: str) -> None:
    """Stop with one line when a stage has nothing left to pass on, naming what removed the records (largest
    first) and the setting to look at: an empty output would let every later stage run on nothing."""
    if left:
        return
    if not records_in:
        raise UserError(f"{stage}: no records came in; {fix}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(removed_by.items(), key=lambda kv: (-kv[1], kv[0])) if v)
    raise UserError(f"{stage}: all {records_in} records were removed ({reasons or 'no reason recorded'}); {fix}")
