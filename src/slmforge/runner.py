"""How every stage and command ends: a user error is one line on stderr and exit code 1, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from slmforge.io import UserError


def run(main: Callable[[], None]) -> None:
    # Quieter libraries: their progress bars stay, their advice on unrelated features goes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
