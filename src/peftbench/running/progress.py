"""Progress output that suits where it goes: a tqdm bar on a terminal, one plain line per step otherwise.

A log file or a CI log has no use for a bar's carriage returns and control characters; there each finished
step (a run of a sweep, an epoch of a run) is one line on stderr, with the same figures the bar shows.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def sweep_title(name: str) -> str:
    """``sweep NAME``, or ``sweep`` alone for the unnamed default sweep (not "sweep sweep")."""
    return "sweep" if name == "sweep" else f"sweep {name}"


class PlainProgress:
    """The part of tqdm's interface peftbench uses, writing one line per ``update`` to ``stream``."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, stream=None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        figures = "".join(f" {key}={value}" for key, value in self.postfix.items())
        print(f"{self.desc}: {self.unit} {self.n}/{self.total}{figures}", file=self.stream, flush=True)

    def set_postfix(self, **figures: Any) -> None:
        """Shown with the next ``update`` (tqdm shows them at once; a plain line waits for the step)."""
        self.postfix = figures

    def close(self) -> None:
        self.postfix = {}


class _Silent(PlainProgress):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool = True, initial: int = 0,
                 leave: bool = True, stream=None):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, plain lines when it is not, nothing when
    ``enabled`` is false. Bars and plain lines both offer ``update``, ``set_postfix`` and ``close``."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Silent(total, desc, unit, initial, stream)
    if _is_terminal(stream):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream)
    return PlainProgress(total, desc, unit, initial, stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
