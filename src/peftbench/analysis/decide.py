"""Seeds added until the claims decide: ``peftbench decide SUITE [key=value ...] --budget 2h``.

It runs the sweep as given (resuming like ``peftbench run``), then, one step at a time, adds the next seed
to the two cells of the undecided comparison that is the most informative per minute of compute (the
fewest seeds still needed to decide it, divided by the minutes one more seed of its cells takes). It stops
when every comparison of the sweep's cells is decided, when every undecided one is futile (it would need
more than ``--max-seeds`` seeds even if the differences went on as observed), or when the next step would
overrun the budget. Run again, it resumes: done runs are skipped and the seeds it added are in the results.

Because it looks at the results between seeds, its verdicts use anytime-valid p-values (``paired.anytime_p``:
1 / the largest e-value over the seeds so far; a t e-value for scores and memory, a sign e-value for the best
epoch), Holm-corrected over each claim's comparisons: the chance that it calls a comparison decided when
the two methods do not differ stays below α however many seeds it adds and whenever it stops
(docs/statistics.md). ``peftbench claims`` prints the fixed-sample tests; on results grown by this loop,
read this command's verdicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peftbench.analysis import paired
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.claims import Comparison, comparisons_of
from peftbench.config import RunConfig, SweepConfig
from peftbench.errors import UserError

if TYPE_CHECKING:
    from peftbench.running.sweep import StopFlag

ALL_DECIDED, FUTILE, BUDGET = "all decided", "futile", "budget"
INTERRUPTED = "interrupted"
"""Also the status of a run stopped by a signal: the loop stops with it."""


@dataclass
class Standing:
    """One comparison under the sequential rule."""

    claim: str
    comparison: Comparison
    p: float
    """Holm-adjusted anytime-valid p-value."""
    needed: float
    """Seeds at which it would be decided if the differences went on as observed (inf: not within max)."""

    @property
    def decided(self) -> bool:
        return self.p < paired.ALPHA

    @property
    def label(self) -> str:
        a, b = self.comparison.cells[:2]
        return f"{self.claim}: {self.comparison.where}: {a.label} vs {b.label}"


@dataclass
class DecideOutcome:
    stopped: str = ""
    added: list[tuple[c.CellKey, int]] = field(default_factory=list)
    """(cell, seed) of every run this loop added beyond the sweep's seeds."""
    standings: list[Standing] = field(default_factory=list)
    elapsed_s: float = 0.0


def parse_duration(text: str) -> float:
    """Seconds of "2h", "90m", "1h30m", "45s" or a plain number of seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UserError(f"--budget: {text!r} is not a duration such as 2h, 90m, 1h30m or 3600")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def standings(coll: c.Collection, keys: set[c.CellKey], max_seeds: int, alpha: float = paired.ALPHA) -> list[Standing]:
    """Every paired seed-level comparison between cells of ``keys``, under the sequential rule."""
    found = []
    for claim, comparisons in comparisons_of(coll):
        ours = [x for x in comparisons if x.diffs and set(x.cells) <= keys]
        # "at least as good as": the evidence is about a − b + margin (above 0: holds; below: fails)
        shifted = [[d + x.margin for d in x.diffs] for x in ours]
        ps = paired.holm([paired.anytime_p(d, x.discrete) for x, d in zip(ours, shifted, strict=True)])
        for x, d, p in zip(ours, shifted, ps, strict=True):
            needed = paired.seeds_to_decide(d, alpha / len(ours), max_seeds, x.discrete)
            found.append(Standing(claim.id, x, p, needed))
    return found


def _minutes_per_seed(coll: c.Collection, cells: tuple[c.CellKey, ...]) -> float:
    """Minutes one more seed of ``cells`` takes: the mean ``time.total_s`` of their ok runs (1 min unknown)."""
    seconds = 0.0
    for key in cells:
        stat = coll.cell(key.model, key.task, key.scale, key.method, key.ablation).stat(c.total_seconds)
        seconds += stat.mean if stat else 60.0
    return max(seconds / 60.0, 1e-3)


def next_step(coll: c.Collection, found: list[Standing]) -> Standing | None:
    """The undecided, not futile comparison with the most value per minute: 1 / (seeds still needed) over
    the minutes one more seed of its cells takes."""
    live = [s for s in found if not s.decided and math.isfinite(s.needed)]
    if not live:
        return None

    def value(s: Standing) -> float:
        remaining = max(s.needed - len(s.comparison.diffs), 1.0)
        return 1.0 / remaining / _minutes_per_seed(coll, s.comparison.cells[:2])

    return max(live, key=value)


def _run_config(sweep: SweepConfig, key: c.CellKey, seed: int) -> RunConfig:
    for run in dataclasses.replace(sweep, seeds=[seed]).expand():
        if c.cell_key({"config": run.to_dict()}) == key:
            return run
    raise UserError(f"cell {key} is not in the sweep")


def decide(sweep: SweepConfig, budget_s: float, max_seeds: int = 10, *, progress: bool = True,
           run: Callable[..., str] | None = None, clock: Callable[[], float] = time.monotonic,
           say: Callable[[str], None] = lambda _text: None) -> DecideOutcome:
    """Run ``sweep``, then add seeds as the module says until decided, futile, or ``budget_s`` is spent.
    ``run(config, results_dir, retry_failed, progress=...)`` runs one pending run and returns its status
    (default: as ``peftbench run``'s local executor does, each in a worker process of its own)."""
    if sweep.executor != "local":
        raise UserError("decide adds seeds one run at a time: it runs with the local executor (executor=local)")
    from peftbench.running.sweep import StopFlag, stop_on_signals  # the training stack: only to run

    flag = StopFlag()
    with stop_on_signals(flag):
        return _decide(sweep, budget_s, max_seeds, progress, run or _local_runner(sweep, flag), clock, say)


def _local_runner(sweep: SweepConfig, stop: StopFlag) -> Callable[..., str]:
    from peftbench.running.sweep import run_if_pending

    def run(config: RunConfig, results_dir, retry_failed: bool, progress: bool = True) -> str:
        if stop():
            return INTERRUPTED
        return run_if_pending(config, results_dir, retry_failed, progress=progress, stop_requested=stop,
                              device_map=sweep.device_map, isolate=sweep.isolate_runs)
    return run


def _decide(sweep: SweepConfig, budget_s: float, max_seeds: int, progress: bool, run: Callable[..., str],
            clock: Callable[[], float], say: Callable[[str], None]) -> DecideOutcome:
    from peftbench.running.sweep import check_results_dir

    start, outcome = clock(), DecideOutcome()
    results_dir = sweep.results_dir
    check_results_dir(results_dir)
    planned = sweep.expand()
    keys = {c.cell_key({"config": r.to_dict()}) for r in planned}
    for config in planned:
        if run(config, results_dir, sweep.retry_failed, progress=progress) == INTERRUPTED:
            outcome.stopped = INTERRUPTED
            break
    while not outcome.stopped:
        coll = c.collect(results_dir)
        outcome.standings = standings(coll, keys, max_seeds)
        step = next_step(coll, outcome.standings)
        if all(s.decided for s in outcome.standings):
            outcome.stopped = ALL_DECIDED
        elif clock() - start >= budget_s:
            outcome.stopped = BUDGET
        elif step is None:
            outcome.stopped = FUTILE
        elif clock() - start + 60 * _minutes_per_seed(coll, step.comparison.cells[:2]) > budget_s:
            outcome.stopped = BUDGET
        else:
            cells = step.comparison.cells[:2]
            seed = 1 + max(int(r.get("seed", 0)) for key in cells for r in coll.cells[key].runs)
            say(f"decide: seed {seed} for {step.label} (anytime p {step.p:.3f}, needs ~{step.needed:g} seeds)")
            for key in cells:
                status = run(_run_config(sweep, key, seed), results_dir, True, progress=progress)
                outcome.added.append((key, seed))
                if status == INTERRUPTED:
                    outcome.stopped = INTERRUPTED
    outcome.elapsed_s = clock() - start
    return outcome


def format_outcome(outcome: DecideOutcome) -> str:
    lines = [f"{'decided' if s.decided else ('futile' if math.isinf(s.needed) else 'undecided')}: {s.label}: "
             f"anytime p {s.p:.3f} (Holm), {len(s.comparison.diffs)} seeds, difference "
             f"{s.comparison.test.estimate:+.4g}" for s in outcome.standings]
    lines.append(f"stopped: {outcome.stopped}; {len(outcome.added)} run(s) added in {outcome.elapsed_s / 60:.1f} min")
    return "\n".join(lines)


def cmd_decide(args: argparse.Namespace) -> int:
    from peftbench.cli import resolve_config_path
    from peftbench.config import load_sweep

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:
        sweep = load_sweep(None, [config, *overrides])
    else:
        sweep = load_sweep(resolve_config_path(config), overrides)
    outcome = decide(sweep, parse_duration(args.budget), args.max_seeds, progress=not args.quiet,
                     say=lambda text: print(text, file=sys.stderr))
    print(format_outcome(outcome))
    return 0


def add_commands(subparsers) -> None:
    """``peftbench decide``, for ``peftbench.cli`` to mount."""
    parser = subparsers.add_parser("decide", help="run a sweep, then add seeds until its comparisons are decided")
    parser.add_argument("config", nargs="?", help="a suite name or a YAML file, as for `run`")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for `run`")
    parser.add_argument("--budget", required=True, help="wall time to spend, e.g. 2h, 90m, 1h30m")
    parser.add_argument("--max-seeds", type=int, default=10,
                        help="a comparison needing more seeds than this is futile (default 10)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=cmd_decide)
