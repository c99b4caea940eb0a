"""Errors the user can fix. The CLI prints these as one line and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: a config, a name, a file or a directory the user gave us. Never a bug of ours."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """The error for a failed lookup: names the bad value, the closest match and every valid choice."""
    choices = sorted(str(c) for c in choices)
    return UserError(f"unknown {kind} {name!r}{did_you_mean(name, choices)}; valid: {', '.join(choices)}")
