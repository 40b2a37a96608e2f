"""When oracle failures stop a stage, apart from what they cost: a failure every request would share (an
OracleConfigError, raised by the backend) stops at the first occurrence; transient failures are recorded, and a
stage stops when more than `oracle.max_failure_share` of its requests end as one."""

from __future__ import annotations

from slmforge.errors import UserError
from slmforge.oracle.types import OracleConfigError


def check_failure_share(desc: str, failures: list[dict], asked: int, max_share: float) -> None:
    """One line when the failures of `asked` requests are above the allowed share: a stage whose rows mostly went
    unanswered must not pass as a success (every row dropped as unlabelled, and the pipeline going on)."""
    if not asked or not failures or len(failures) / asked <= max_share:
        return
    share = len(failures) / asked
    raise UserError(f"{desc}: {len(failures)} of {asked} oracle requests failed ({share:.0%} > "
                    f"oracle.max_failure_share={max_share:g}; first: {failures[0]['error']}); the answers received are "
                    "kept, so a re-run asks only the failed ones again; raise oracle.max_failure_share to go on without them")


def first_config_error(results) -> OracleConfigError | None:
    """The first result that is a setting to fix (a batch returns them among its answers)."""
    return next((r for r in results if isinstance(r, OracleConfigError)), None)
