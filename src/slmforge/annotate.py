"""`slmforge annotate`: a person scores the calibration sample in a terminal, one keystroke per score, and the scores
become a gold file that calibration measures the oracle against.

It walks the rows of data/calibration/sample.jsonl (the main sample, the validation sample, or both), shows each
row's conversation and the oracle's scores, and asks for every rubric dimension in turn. A score is one key: the
score written as one base-36 digit (0-9, then a = 10, b = 11, ...), so a 0-10 scale needs no Enter. Each finished
row is written to the gold file at once (the whole file, atomically), so quitting at any point loses at most the
row in progress and the next run starts at the first row without a gold score.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator

from slmforge.gold import read_gold_rows, write_gold
from slmforge.errors import UserError
from slmforge.oracle.prompts import render_row
from slmforge.params import RubricParams

DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
QUIT, SKIP, BACK = "q", "s", "-"  # none of them is a base-36 digit
WIDTH = 100


def score_keys(rubric: RubricParams) -> dict[str, int]:
    """key -> score for every score on the rubric's scale."""
    if rubric.min_score < 0 or rubric.max_score >= len(DIGITS):
        raise UserError(f"params.yaml: rubric scale {rubric.min_score}..{rubric.max_score}: annotate reads a score "
                        f"as one key (0-9, a-z), so the scale must lie within 0..{len(DIGITS) - 1}")
    return {DIGITS[v]: v for v in range(rubric.min_score, rubric.max_score + 1)}


def to_annotate(sample_rows: list[dict], which: str, done: set[str]) -> list[dict]:
    """The sample's rows in file order, each id once, of the chosen sample(s), without those already in gold."""
    if which not in ("main", "validation", "all"):
        raise UserError(f"annotate: --which must be main, validation or all, got {which!r}")
    seen, out = set(done), []
    for row in sample_rows:
        if (which == "all" or row.get("sample", "main") == which) and row["id"] not in seen:
            seen.add(row["id"])
            out.append(row)
    return out


def show(row: dict, chat: dict | None, k: int, n: int, rubric: RubricParams) -> str:
    head = f"\n[{k}/{n}] {row['id']} ({row.get('sample', 'main')} sample, stratum {row.get('stratum')})"
    if chat is None:
        body = "(this row is not in the chat rows given: only its id and the oracle's scores are known)"
    else:
        body = "\n".join(textwrap.fill(line, WIDTH, replace_whitespace=False) if line else ""
                         for line in render_row(chat).splitlines())
    label = row.get("label") or {}
    scores = label.get("scores") or {}
    oracle = (", ".join(f"{d} {float(scores[d]):.1f}" for d in rubric.dimensions if d in scores)
              + f" (overall {label['overall']:.2f}, tier {label.get('tier')})") if scores else "no answer"
    return f"{head}\n{'-' * WIDTH}\n{body}\n{'-' * WIDTH}\noracle: {oracle}"


def annotate(sample_rows: list[dict], chats: dict[str, dict], gold_path, rubric: RubricParams,
             read_key: Callable[[], str], write: Callable[[str], None], which: str = "all",
             annotator: str | None = None) -> dict:
    """The session: asks for each dimension of each row to do, saves each finished row; returns counts."""
    keys = score_keys(rubric)
    gold = read_gold_rows(gold_path, rubric)
    todo = to_annotate(sample_rows, which, set(gold))
    dims = list(rubric.dimensions)
    scale = f"{DIGITS[rubric.min_score]}-{DIGITS[rubric.max_score]}"
    write(f"slmforge annotate: {len(todo)} row(s) to score, {len(gold)} already in {gold_path}. A score is one key "
          f"({scale}; a = 10); {BACK} goes back a dimension, {SKIP} skips the row, {QUIT} quits (saved rows stay).\n")
    saved = skipped = 0
    for k, row in enumerate(todo, 1):
        write(show(row, chats.get(row["id"]), k, len(todo), rubric) + "\n")
        scores: dict[str, int] = {}
        while len(scores) < len(dims):
            d = dims[len(scores)]
            write(f"{d} ({rubric.dimensions[d].description}) [{scale}]: ")
            key = read_key()
            if key in ("", QUIT, "\x03", "\x04"):  # end of input, q, Ctrl-C, Ctrl-D
                write("quit\n")
                return {"saved": saved, "skipped": skipped, "left": len(todo) - k + 1, "total": len(gold)}
            if key == SKIP:
                write("skipped\n")
                break
            if key == BACK:
                write("back\n")
                if scores:
                    scores.pop(list(scores)[-1])
                continue
            if key not in keys:
                write(f"{key!r} is not a score: type one of {scale}\n")
                continue
            scores[d] = keys[key]
            write(f"{keys[key]}\n")
        if len(scores) < len(dims):
            skipped += 1
            continue
        gold[row["id"]] = {"id": row["id"], "scores": scores, "by": annotator or "annotate",
                           "sample": row.get("sample", "main"), "stratum": row.get("stratum")}
        write_gold(gold_path, gold)  # every finished row at once: quitting loses nothing already scored
        saved += 1
        write(f"saved ({len(gold)} in {gold_path})\n")
    write(f"done: {saved} saved, {skipped} skipped; {len(gold)} rows in {gold_path}\n")
    return {"saved": saved, "skipped": skipped, "left": 0, "total": len(gold)}


@contextlib.contextmanager
def terminal_keys() -> Iterator[Callable[[], str]]:
    """read_key for the session: one keystroke at a time (cbreak mode) on a terminal, one character at a time
    from a pipe (newlines ignored), so scores can also be fed from a file."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        def from_pipe() -> str:
            while True:
                ch = sys.stdin.read(1)
                if ch not in ("\n", "\r"):
                    return ch
        yield from_pipe
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive as typed, without Enter; Ctrl-C still interrupts
        yield lambda: os.read(fd, 1).decode(errors="replace")
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
