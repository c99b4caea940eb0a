"""``peftbench run ... --dry-run``: the grid a sweep would run, which runs are done, how long the rest
should take, judged from the results already in the same directory, and each run's memory, predicted.

The estimate of a pending run is the mean ``time.total_s + time.load_s`` of the ok results of the same
(model, method, task, scale) in the directory; without one, of the same (model, method); without that,
none. Early stopping makes that mean depend on how long those runs happened to train, so the line also
gives the time at the run's epoch cap (the same runs' seconds outside training, plus their training
seconds per epoch times the cap): a learning-rate candidate at a tenth of the rate can train to the cap
where the fixed-rate runs stopped after two epochs. Where the earlier runs include some on this kind of
machine (``hardware.instruction_set``: AMX-BF16 trains in bf16 where AVX-512 alone trains in fp32), the
estimate uses only those; where none ran here, the line names the machines they ran on.

Each run's line is followed by its predicted memory peak and breakdown (``recipe/memory_estimate.py``:
from the model's config, the method, the data's widest pass and the settings, on shallow copies of the
model with random weights). Nothing is trained or written, and no model's weights are read.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Estimate:
    """A pending run's expected wall seconds, the seconds if it trains to its epoch cap (None when the
    earlier runs do not record their epochs), and what both are judged from."""

    seconds: float
    at_cap: float | None
    basis: str


@dataclass(frozen=True)
class _Timing:
    """One earlier ok run: its wall seconds, the training seconds among them and the epochs they trained
    (None where not recorded), and its machine kind."""

    seconds: float
    train_s: float | None
    epochs: int | None
    machine: str | None

    @classmethod
    def of(cls, result: dict[str, Any]) -> _Timing | None:
        seconds = run_seconds(result)
        if result.get("status") != "ok" or seconds is None:
            return None
        train_s, epochs = (result.get("time") or {}).get("train_s"), result.get("epochs")
        trained = isinstance(train_s, (int, float)) and isinstance(epochs, int) and epochs > 0
        return cls(seconds, float(train_s) if trained else None, epochs if trained else None,
                   (result.get("hardware") or {}).get("instruction_set"))

    def at_cap(self, cap: int) -> float | None:
        """The run's seconds had it trained ``cap`` epochs: its time outside training (load, test,
        forgetting) plus ``cap`` times its training seconds per epoch."""
        if self.train_s is None or self.epochs is None:
            return None
        return self.seconds - self.train_s + self.train_s / self.epochs * cap


class Estimator:
    """Earlier ok runs' times, by (model, method, task, scale) and by (model, method), judged for a run on
    ``machine`` (this machine's ``instruction_set``): those that ran on it where there are any, else all."""

    def __init__(self, earlier: Iterable[dict[str, Any]], machine: str | None = None) -> None:
        self.machine = machine
        self.by_cell: dict[tuple, list[_Timing]] = {}
        self.by_method: dict[tuple, list[_Timing]] = {}
        for result in earlier:
            if (timing := _Timing.of(result)) is None:
                continue
            cell = _cell(result.get("config") or {})
            self.by_cell.setdefault(cell, []).append(timing)
            self.by_method.setdefault(cell[:2], []).append(timing)

    def estimate(self, run: RunConfig) -> Estimate | None:
        """What ``run`` should take, from the closest earlier runs; None without any."""
        cell = _cell({"model": run.model, "method": run.method, "task": run.task, "scale": run.scale})
        for found, basis in ((self.by_cell.get(cell), "same cell"), (self.by_method.get(cell[:2]), "same method")):
            if found:
                found = [t for t in found if t.machine == self.machine] or found  # this machine's, where any
                return Estimate(statistics.fmean(t.seconds for t in found), _at_cap(found, run.epoch_cap()),
                                f"{basis}, {len(found)} run(s){self._elsewhere(found)}")
        return None

    def _elsewhere(self, timings: list[_Timing]) -> str:
        """"; 2 ran on amx-bf16, this machine is avx512" when some of ``timings`` ran on another kind."""
        other = sorted({t.machine for t in timings if t.machine and self.machine and t.machine != self.machine})
        count = sum(t.machine in other for t in timings)
        return f"; {count} ran on {' and '.join(other)}, this machine is {self.machine}" if other else ""


def _at_cap(timings: list[_Timing], cap: int) -> float | None:
    """Mean seconds of ``timings`` had each trained ``cap`` epochs; None if one does not record its epochs."""
    seconds = [t.at_cap(cap) for t in timings]
    return None if None in seconds else statistics.fmean(seconds)


def _cell(config: dict[str, Any]) -> tuple:
    return (str(config.get("model")), str(config.get("method")), str(config.get("task")), str(config.get("scale")))


def dry_run_report(sweep: SweepConfig) -> str:
    """The plan as text: one line per run (status, estimate), then the totals."""
    results_dir = Path(sweep.results_dir)
    earlier = list(results.iter_results(results_dir, warn=False)) if results_dir.is_dir() else []
    estimator = Estimator(earlier, this_machine())
    lines, estimates, pending = [], [], 0
    runtime = memory.runtime_bytes()  # before any model is built: the runtime every prediction shares
    for run in sweep.expand():
        status = results.load_status(results_dir, run.run_id()) if results_dir.is_dir() else None
        will_run = _will_run(status, sweep.retry_failed)
        state = f"done ({status})"
        if will_run:
            pending += 1
            estimates.append(estimate := estimator.estimate(run))
            state = ("will run" if status is None else f"will run again ({status})") + _estimate_text(estimate)
        lines += [f"{run.run_id()}  {state}", f"    memory: {memory_line(run, runtime)}"]
    total = len(lines) // 2
    summary = f"{total} run(s) in the grid, {total - pending} done, {pending} to run"
    if pending:
        summary += total_text([e for e in estimates if e is not None], pending)
    return "\n".join([*lines, "", summary + f"; results in {results_dir}"])


def this_machine() -> str:
    """The kind of machine a run here would train on (``hardware.instruction_set``)."""
    import torch

    from peftbench.speedups.cpu import instruction_set

    return instruction_set(torch.device("cuda") if torch.cuda.is_available() else None)


def _estimate_text(estimate: Estimate | None) -> str:
    if estimate is None:
        return "  (no earlier run)"
    cap = f", up to ~{_duration(estimate.at_cap)} at its epoch cap" if estimate.at_cap is not None else ""
    return f"  ~{_duration(estimate.seconds)}{cap} ({estimate.basis})"


def total_text(known: list[Estimate], pending: int) -> str:
    """"; estimated 1h27m (up to 2h40m if every run trains to its epoch cap)", or why there is none."""
    if not known:
        return "; no estimate"
    text = f"; estimated {_duration(sum(e.seconds for e in known))}"
    if all(e.at_cap is not None for e in known):
        text += f" (up to {_duration(sum(e.at_cap for e in known))} if every run trains to its epoch cap)"
    if len(known) < pending:
        text += f" for {len(known)} of them ({pending - len(known)} without an earlier run to judge from)"
    return text


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
