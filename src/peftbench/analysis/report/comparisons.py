"""Comparing two cells of a claim, paired by seed: the seeds both ran on the same samples, the test that fits
the measure (``analysis/paired.py``), the Holm-corrected verdict and the text that states it
(docs/statistics.md). ``claims.py`` says which cells each claim compares."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftbench.analysis import paired
from peftbench.analysis.paired import ALPHA, Bounds, Test
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.collect import Cell, CellKey, Collection, Quantity, Stat
from peftbench.analysis.report.examples import example_view, headline
from peftbench.analysis.report.memory import method_bytes

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
LOWER, HIGHER, AT_LEAST = "lower", "higher", "at least"

@dataclass
class Comparison:
    where: str
    """The cell coordinates both sides share, e.g. "smollm2-135m-q4, cola, low"."""
    text: str
    """Both sides' numbers, then the paired difference, its interval, p-value and what it would take."""
    verdict: str
    test: Test | None = None
    """The seed-level test (None: a side is missing or no seed is shared)."""
    expect: str = LOWER
    """The claim's direction for a − b: lower, higher, or at least (non-inferiority)."""
    cells: tuple[CellKey, ...] = ()
    diffs: list[float] = field(default_factory=list)
    """The per-seed differences a − b, in seed order (what ``decide`` extends)."""
    seeds: list[int] = field(default_factory=list)
    discrete: bool = False
    p_below: float = math.nan
    """Non-inferiority: the one-sided p that a is worse than b by more than the margin."""
    margin: float = 0.0
    """Non-inferiority: the metric's smallest effect (the test is of a − b + margin)."""
    p_adjusted: float = math.nan
    sides: str = ""
    view: str = ""
    """The example-level view (test-sample variance only), when both sides kept their outcomes."""
    digits: int = 4
    scale: float = 1.0
    """How the difference is shown: ``digits`` after the point, in the measure's unit × ``scale``."""
    measure: str = ""
    """What is compared, in the unit the difference is shown in: "score", "peak MiB", "best epoch"."""
    notes: list[str] = field(default_factory=list)
    """The seeds left out of the pairing and why, and a machine mismatch (``pair_seeds``)."""
    pairs: list[tuple[dict, dict]] = field(default_factory=list, repr=False)
    """The (a run, b run) of each paired seed, in seed order: the runs ``diffs`` come from."""
    seeds_needed: float = math.nan
    """Undecided: the seeds at which the observed difference would be decided with 80% power at the claim's
    Bonferroni level (inf: none would; nan: nothing to plan from, one seed or no test)."""


# ---- what is compared -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A quantity of a run as claims compare it."""

    what: str
    value: Quantity
    digits: int = 4
    scale: float = 1.0
    discrete: bool = False
    """Few distinct values (the best epoch): compared by the exact sign-flip test."""
    metric: str | None = None
    """The test metric it reads (``metrics.test.<metric>``), whose registered range bounds it."""

    def bounds(self, run: dict[str, Any]) -> Bounds:
        if self is BEST_EPOCH:
            return 1.0, float(run.get("max_epochs") or math.inf)
        if self is SCORE:
            return headline_bounds(run)
        if self.metric is not None:
            return metric_bounds(self.metric)
        return 0.0, math.inf


SCORE = Measure("score", c.score)
BEST_EPOCH = Measure("best epoch", c.best_epoch, 2, discrete=True)
PEAK_MEMORY = Measure("peak MiB", c.peak_bytes, 0, 2**-20)
FORGETTING = Measure("forgetting (nats/token)", c.forgetting, 3)
TIME_TO_BEST = Measure("min to the best epoch", c.train_to_best_seconds, 1, 1 / 60)
METHOD_MEMORY = Measure("method's MiB", method_bytes, 0, 2**-20)
"""Weights, gradients, optimiser state and saved activations (``memory.breakdown``): the peak less the
runtime and the allocator's overhead."""


def headline_bounds(run: dict[str, Any]) -> Bounds:
    return metric_bounds(headline(run))


def metric_bounds(name: str) -> Bounds:
    """The range of the registered test metric ``name``; unbounded for one the registry does not know."""
    from peftbench.catalog.metrics import METRICS

    return METRICS.get(name).bounds if name in METRICS else (-math.inf, math.inf)


def smallest_effect(run: dict[str, Any]) -> float:
    from peftbench.catalog.metrics import METRICS

    name = headline(run)
    return METRICS.get(name).smallest_effect if name in METRICS else 0.02


def fmt(stat: Stat, digits: int = 4, scale: float = 1.0) -> str:
    seeds = "1 seed" if stat.n == 1 else f"{stat.n} seeds"
    half = "" if stat.half_width is None else f" ± {stat.half_width * scale:.{digits}f}"
    return f"{stat.mean * scale:.{digits}f}{half} ({seeds})"


def _seed(run: dict[str, Any]) -> int:
    return int(run.get("seed", (run.get("config") or {}).get("seed", 0)))


def pair_seeds(a: Cell, b: Cell, quantity: Quantity) -> tuple[list[int], list[tuple[dict, dict]], list[str]]:
    """The seeds both cells ran (ok, with the quantity) on the same samples, their (a run, b run) pairs,
    and a note for each seed left out: on one side only, without the quantity (a result from before it was
    recorded), or on samples that differ (``data.sample_hash``)."""
    def by_seed(cell: Cell) -> dict[int, dict]:
        return {_seed(r): r for r in cell.ok_runs if quantity(r) is not None}

    runs_a, runs_b = by_seed(a), by_seed(b)
    seeds, pairs, notes = [], [], []
    for cell, kept in ((a, runs_a), (b, runs_b)):
        if lacking := len(cell.ok_runs) - len(kept):
            name = getattr(quantity, "__name__", "the quantity")
            notes.append(f"{lacking} run{'s' * (lacking != 1)} of {cell.key.label} without {name}")
    for side, only in ((a, sorted(set(runs_a) - set(runs_b))), (b, sorted(set(runs_b) - set(runs_a)))):
        if only:
            notes.append(f"seed {', '.join(map(str, only))} only in {side.key.label}")
    for seed in sorted(set(runs_a) & set(runs_b)):
        hash_a = (runs_a[seed].get("data") or {}).get("sample_hash")
        hash_b = (runs_b[seed].get("data") or {}).get("sample_hash")
        if hash_a and hash_b and hash_a != hash_b:
            notes.append(f"seed {seed} refused: the sides' samples differ (data.sample_hash)")
            continue
        seeds.append(seed)
        pairs.append((runs_a[seed], runs_b[seed]))
    mixed = machine_mismatch(pairs)
    if mixed:
        notes.append(mixed)
    return seeds, pairs, notes


def machine_kind(run: dict) -> str | None:
    """"amx-bf16, bf16": the matrix instruction set (``hardware.instruction_set``: the CPU's, or the CUDA
    capability) and the autocast precision the run trained in (``optimizer.precision``; accelerate's "no" is
    fp32); None when the result lacks either."""
    hardware, optimizer = run.get("hardware") or {}, run.get("optimizer") or {}
    where = hardware.get("instruction_set")
    precision = {"no": "fp32"}.get(optimizer.get("precision"), optimizer.get("precision"))
    return f"{where}, {precision}" if where and precision else None


def machine_mismatch(pairs: list[tuple[dict, dict]]) -> str | None:
    """A note when paired runs trained on different machine kinds or in different precisions (bf16 rounds
    differently on each): their difference is not the compared setting's alone."""
    kinds_of_pairs = [(_seed(ra), machine_kind(ra), machine_kind(rb)) for ra, rb in pairs]
    differing = [(seed, a, b) for seed, a, b in kinds_of_pairs if a and b and a != b]
    if not differing:
        return None
    seeds = ", ".join(str(seed) for seed, _, _ in differing)
    kinds = "; ".join(sorted({f"{a} against {b}" for _, a, b in differing}))
    return f"seed {seeds} paired across machine kinds or precisions ({kinds})"


def missing(where: str, cells: tuple[Cell, ...], expect: str) -> Comparison:
    names = ", ".join(f"{cell.key.label} ({cell.state})" for cell in cells if not cell.ok_runs)
    return Comparison(where, f"missing: {names}", INCONCLUSIVE, None, expect, tuple(x.key for x in cells))


def compare_cells(coll: Collection, where: str, a: Cell, b: Cell, measure: Measure, expect: str,
                  extra: Measure | None = None) -> Comparison:
    """``a`` against ``b`` on one measure, paired by seed; the verdict is set by ``decide`` (Holm)."""
    if not a.ok_runs or not b.ok_runs:
        return missing(where, (a, b), expect)
    seeds, pairs, notes = pair_seeds(a, b, measure.value)
    values_a = [measure.value(ra) for ra, _ in pairs]
    values_b = [measure.value(rb) for _, rb in pairs]
    diffs = [x - y for x, y in zip(values_a, values_b, strict=True)]

    def side(cell: Cell, values: list[float]) -> str:
        shown = f"{cell.key.label} {measure.what} {fmt(Stat.of(values), measure.digits, measure.scale)}"
        score = cell.stat(extra.value) if extra else None
        return shown + (f" [score {fmt(score)}]" if score else "")

    if not seeds:
        text = f"{a.key.label} vs {b.key.label}: no seed shared on the same samples ({'; '.join(notes)})"
        return Comparison(where, text, INCONCLUSIVE, None, expect, (a.key, b.key))
    ma, mb = float(np.mean(values_a)), float(np.mean(values_b))
    sign = "<" if ma < mb else (">" if ma > mb else "=")
    sides = f"{side(a, values_a)} {sign} {side(b, values_b)}"
    bounds = paired.difference_bounds(measure.bounds(pairs[0][0]))
    p_below, margin = math.nan, 0.0
    if expect == AT_LEAST:
        margin = smallest_effect(pairs[0][0])
        test, p_below = paired.non_inferiority(diffs, margin, bounds)
    elif measure.discrete:
        test = paired.sign_flip(diffs, bounds)
    else:
        test = paired.paired_t(diffs, bounds)
    if notes:
        sides += f" ({'; '.join(notes)})"
    view = (example_view(coll, pairs) or "") if measure is SCORE else ""
    return Comparison(where, sides, INCONCLUSIVE, test, expect, (a.key, b.key), diffs, seeds, measure.discrete,
                      p_below, margin, sides=sides, view=view, digits=measure.digits, scale=measure.scale,
                      measure=measure.what, notes=notes, pairs=pairs)


# ---- deciding a claim's comparisons ---------------------------------------------------------------------


def decide(comparisons: list[Comparison], alpha: float = ALPHA,
           p_of: Callable[[Comparison], float] | None = None) -> list[Comparison]:
    """Set each comparison's verdict from its Holm-adjusted p-value over the claim (``p_of``: which p, the
    test's by default) and append the difference, interval, p-values and, when undecided, what would decide it."""
    p_of = p_of or (lambda x: x.test.p if x.test else math.nan)
    tests = sum(1 for x in comparisons if x.test is not None)
    adjusted = paired.holm([p_of(x) for x in comparisons])
    adjusted_below = paired.holm([x.p_below for x in comparisons])
    for x, p, below in zip(comparisons, adjusted, adjusted_below, strict=True):
        if x.test is None:
            continue
        x.p_adjusted = p
        if x.expect == AT_LEAST:
            x.verdict = HOLDS if p < alpha else (FAILS if below < alpha else INCONCLUSIVE)
        elif p < alpha:
            x.verdict = HOLDS if (x.test.estimate < 0) == (x.expect == LOWER) else FAILS
        else:
            x.verdict = INCONCLUSIVE
        x.text = f"{x.sides}; {describe(x, tests, alpha)}" + (f"; {x.view}" if x.view else "")
    return comparisons


def describe(x: Comparison, tests: int, alpha: float = ALPHA) -> str:
    """"difference +0.3300 [+0.0200, +0.6400], paired t p 0.041 (Holm 0.082), 3 seeds; ..."; when undecided,
    what the data can detect and the seeds that would decide the observed difference, both planned at the
    claim's Bonferroni level α / comparisons (which Holm's first step uses)."""
    t, digits = x.test, x.digits

    def number(value: float) -> str:
        return f"{value * x.scale:+.{digits}f}"

    holm = f" (Holm {x.p_adjusted:.3f})" if tests > 1 and not math.isnan(x.p_adjusted) else ""
    p = "p n/a" if math.isnan(t.p) else f"p {t.p:.3f}{holm}"
    text = f"difference {number(t.estimate)} [{number(t.low)}, {number(t.high)}], {t.name} {p}, {_n(t.n, t.unit)}"
    if x.verdict != INCONCLUSIVE:
        return text
    level = alpha / max(tests, 1)
    detectable, needed = paired.plan(x.diffs, x.discrete, level) if x.diffs else (t.detectable, t.needed)
    x.seeds_needed = needed if (t.n >= 2 or x.discrete) else math.nan
    if t.n < 2 and not x.discrete:
        return text + "; one seed: no interval over seeds"
    if t.estimate == 0:
        return text + "; no number of seeds decides a difference of zero"
    if t.p_floor > level:
        return text + (f"; cannot reach p < {level:.3g} with {_n(t.n, 'seeds')} (smallest p "
                       f"{paired.sign_flip_floor(t.n):.3g}): needs at least {seeds_text(needed)} seeds")
    return text + (f"; detects ±{abs(detectable * x.scale):.{digits}f} at 80% power with {_n(t.n, t.unit)}; "
                   f"the observed difference needs {seeds_text(needed)} seeds")


def _n(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if n == 1 else unit}"


def seeds_text(n: float) -> str:
    return "more than 1000" if math.isinf(n) else ("?" if math.isnan(n) else str(int(n)))


def combine(verdicts: list[str]) -> str:
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def order_between(coll: Collection, first: list[Cell], other: list[Cell], measure: Measure,
                  expect: str) -> tuple[str, bool]:
    """Whether the measurements decide that ``first`` beats ``other``: their cells of the same model and task
    compared pair by pair (by seed), Holm-corrected over the tasks. Returns "ahead on cola (difference ...);
    undecided on ag_news (difference ...)" and whether ``first`` is decided ahead on every shared task."""
    by_panel = {(cell.key.model, cell.key.task): cell for cell in other}
    found = [compare_cells(coll, cell.key.task, cell, by_panel[(cell.key.model, cell.key.task)], measure, expect)
             for cell in first if (cell.key.model, cell.key.task) in by_panel]
    decide(found)
    words = {HOLDS: "ahead", FAILS: "behind", INCONCLUSIVE: "undecided"}
    tests = sum(1 for x in found if x.test is not None)
    parts = [f"{words[x.verdict]} on {x.where} ({'; '.join([describe(x, tests), *x.notes]) if x.test else x.text})"
             for x in found]
    return "; ".join(parts) or "no task measured by both", bool(found) and all(x.verdict == HOLDS for x in found)
