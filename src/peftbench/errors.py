"""Errors the user can fix. The CLI prints these as one line and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a config, a name, a file or a directory the user gave us. Never a bug of ours."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when nothing is close.

    Closest is the fewest typing edits (a swap of two neighbours counts as one, so "lroa" is "lora", not
    "road"), then the nearest in length ("modles" is "models", not "modules"), then the most similar by
    difflib. A name is close when difflib rates it 0.6 or more, or when it is at most two edits away (one
    for names under five characters).
    """
    name, choices = str(name), [str(c) for c in choices]
    close = set(difflib.get_close_matches(name, choices, n=5, cutoff=0.6))
    close |= {c for c in choices if edit_distance(name, c) <= (1 if len(name) < 5 else 2)}
    if not close:
        return ""
    best = min(close, key=lambda c: (edit_distance(name, c), abs(len(c) - len(name)),
                                     -difflib.SequenceMatcher(None, name, c).ratio(), c))
    return f" (did you mean {best!r}?)"


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


MAX_CHOICES = 10
"""An error line lists at most this many valid choices: the ones closest to the bad value."""
LIST_COMMANDS = {"method": "methods", "task": "tasks", "model": "models", "ablation": "ablations", "suite": "suites"}
"""What ``peftbench list WHAT`` lists, by the kind of name ``unknown`` was given."""


def choices_text(name: str, choices: Iterable[str], rest: str | None = None) -> str:
    """'valid: a, b, c'; of more than ``MAX_CHOICES``, the closest to ``name`` (by difflib, shown sorted) and
    where to find all of them (``rest``, e.g. "peftbench list methods"), so the line stays short."""
    choices = sorted({str(c) for c in choices})
    if len(choices) <= MAX_CHOICES:
        return f"valid: {', '.join(choices)}"
    closest = sorted(choices, key=lambda c: (-difflib.SequenceMatcher(None, str(name), c).ratio(), c))
    where = f": {rest}" if rest else ""
    return f"valid: {', '.join(sorted(closest[:MAX_CHOICES]))}, … ({len(choices)} in all{where})"


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The error for a failed lookup: names the bad value, the closest match and a few valid choices (all of
    them where they are few; else where to list them)."""
    choices = [str(c) for c in choices]
    rest = f"peftbench list {LIST_COMMANDS[kind]}" if kind in LIST_COMMANDS else None
    return UserError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; {choices_text(name, choices, rest)}")
