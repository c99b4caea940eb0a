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


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The error for a failed lookup: names the bad value, the closest match and every valid choice."""
    choices = sorted(str(c) for c in choices)
    return UserError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; valid: {', '.join(choices)}")
