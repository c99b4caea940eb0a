"""``peftbench run ... --dry-run``: the grid a sweep would run, which runs are done, how long the rest
should take, judged from the results already in the same directory, and each run's memory, predicted.

The estimate of a pending run is the mean ``time.total_s + time.load_s`` of the ok results of the same
(model, method, task, scale) in the directory; without one, of the same (model, method); without that,
none. Each run's line is followed by its predicted memory peak and breakdown
(``recipe/memory_estimate.py``: from the model's config, the method, the data's widest pass and the
settings, on shallow copies of the model with random weights). Nothing is trained or written, and no
model's weights are read.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig, SweepConfig
from peftbench.recipe import memory
from peftbench.running import results


def run_seconds(result: dict[str, Any]) -> float | None:
    """Wall time of a finished run: its measured time plus its one-time model load (when recorded)."""
    times = result.get("time") or {}
    total = times.get("total_s")
    if not isinstance(total, (int, float)):
        return None
    load = times.get("load_s")
    return float(total) + (float(load) if isinstance(load, (int, float)) else 0.0)


class Estimator:
    """Mean seconds of earlier ok runs, by (model, method, task, scale) and by (model, method)."""

    def __init__(self, earlier: Iterable[dict[str, Any]]) -> None:
        self.by_cell: dict[tuple, list[float]] = {}
        self.by_method: dict[tuple, list[float]] = {}
        for result in earlier:
            config, seconds = result.get("config") or {}, run_seconds(result)
            if result.get("status") != "ok" or seconds is None:
                continue
            self.by_cell.setdefault(_cell(config), []).append(seconds)
            self.by_method.setdefault(_cell(config)[:2], []).append(seconds)

    def seconds(self, run: RunConfig) -> tuple[float | None, str]:
        """(estimated seconds, what it is based on) for ``run``."""
        cell = _cell({"model": run.model, "method": run.method, "task": run.task, "scale": run.scale})
        for found, basis in ((self.by_cell.get(cell), "same cell"), (self.by_method.get(cell[:2]), "same method")):
            if found:
                return statistics.fmean(found), f"{basis}, {len(found)} run(s)"
        return None, "no earlier run"


def _cell(config: dict[str, Any]) -> tuple:
    return (str(config.get("model")), str(config.get("method")), str(config.get("task")), str(config.get("scale")))


def dry_run_report(sweep: SweepConfig) -> str:
    """The plan as text: one line per run (status, estimate), then the totals."""
    results_dir = Path(sweep.results_dir)
    earlier = list(results.iter_results(results_dir, warn=False)) if results_dir.is_dir() else []
    estimator = Estimator(earlier)
    lines, pending, known, unknown = [], 0, 0.0, 0
    runtime = memory.runtime_bytes()  # before any model is built: the runtime every prediction shares
    for run in sweep.expand():
        status = results.load_status(results_dir, run.run_id()) if results_dir.is_dir() else None
        will_run = _will_run(status, sweep.retry_failed)
        seconds, basis = estimator.seconds(run) if will_run else (None, "")
        if will_run:
            pending += 1
            known += seconds or 0.0
            unknown += seconds is None
        state = ("will run" if status is None else f"will run again ({status})") if will_run else f"done ({status})"
        estimate = f"  ~{_duration(seconds)} ({basis})" if seconds is not None else (f"  ({basis})" if basis else "")
        lines += [f"{run.run_id()}  {state}{estimate}", f"    memory: {memory_line(run, runtime)}"]
    total = len(lines) // 2
    summary = f"{total} run(s) in the grid, {total - pending} done, {pending} to run"
    if pending:
        summary += f"; estimated {_duration(known)}" if known else "; no estimate"
        if unknown and known:
            summary += f" for {pending - unknown} of them ({unknown} without an earlier run to judge from)"
    return "\n".join([*lines, "", summary + f"; results in {results_dir}"])


def memory_line(run: RunConfig, runtime: int | None) -> str:
    """The run's predicted peak and breakdown, or why there is none."""
    from peftbench.catalog.methods import get_method
    from peftbench.errors import UserError
    from peftbench.recipe.memory_estimate import describe, predict_run

    if get_method(run.method).is_reference:
        return "nothing trains (a reference row)"
    try:
        return describe(predict_run(run, runtime))
    except (UserError, OSError, ValueError) as exc:  # no data, no config: the plan still prints
        return f"not predicted ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _will_run(status: str | None, retry_failed: bool) -> bool:
    from peftbench.running.sweep import should_run

    return should_run(status, retry_failed)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if seconds < 10:
        return f"{seconds:.1f}s"
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
