"""The paper's findings as checks on a set of results: each answers ``holds``, ``does not hold`` or
``inconclusive``, quoting our numbers on both sides of every comparison it makes (docs/statistics.md).

A claim compares cells two by two (e.g. full tuning's best epoch against LoRA's, on one task and scale).
Both sides of a comparison share seeds, training samples and test samples, so it is paired: the per-seed
differences get a paired t (a sign-flip test for the best epoch, or for differences that do not vary), and
a claim's comparisons are Holm-corrected. A comparison holds (or fails) when its corrected p-value is below
0.05 and the difference points the claim's way (or the other way); "at least as good as" is a
non-inferiority test against the metric's smallest effect. A claim holds only when every comparison it
needs exists and holds: a cell missing from the grid makes it inconclusive, by name. It does not hold when
any comparison fails. Seeds that only one side has, or whose samples differ (``data.sample_hash``), are
named and left out. Reference rows (majority, zero_shot, in_context) are never a side of a comparison;
ablations only of the ablation claim. Scores are each task's headline metric (``metrics.score``).

    peftbench claims results/findings-smollm2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from peftbench.analysis import paired
from peftbench.analysis.paired import ALPHA, Bounds, Test
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.collect import Cell, CellKey, Collection, Quantity, Stat
from peftbench.analysis.report.examples import example_view, headline
from peftbench.analysis.report.references import reference_methods

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
LOWER, HIGHER, AT_LEAST = "lower", "higher", "at least"
METHOD_NOTE = ("Each comparison is paired by seed: the difference of its two sides, its 95% interval and its "
               "p-value (paired t over seeds; sign-flip for the best epoch), Holm-corrected over the claim's "
               "comparisons; a claim holds only when every comparison it needs exists and is decided its way "
               "(docs/statistics.md).")


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


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    """Where the paper says it."""
    paper: str
    """The paper's own numbers for it (FLAN-T5-XL)."""
    compare: Callable[[Collection], list[Comparison]]


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparisons: list[Comparison]


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

    def bounds(self, run: dict[str, Any]) -> Bounds:
        if self is BEST_EPOCH:
            return 1.0, float(run.get("max_epochs") or math.inf)
        if self is SCORE:
            return headline_bounds(run)
        return 0.0, math.inf


SCORE = Measure("score", c.score)
BEST_EPOCH = Measure("best epoch", c.best_epoch, 2, discrete=True)
PEAK_MEMORY = Measure("peak MiB", c.peak_bytes, 0, 2**-20)


def headline_bounds(run: dict[str, Any]) -> Bounds:
    from peftbench.catalog.metrics import METRICS

    name = headline(run)
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
    and a note for each seed left out: on one side only, or on samples that differ (``data.sample_hash``)."""
    def by_seed(cell: Cell) -> dict[int, dict]:
        return {_seed(r): r for r in cell.ok_runs if quantity(r) is not None}

    runs_a, runs_b = by_seed(a), by_seed(b)
    seeds, pairs, notes = [], [], []
    for side, only in ((a, sorted(set(runs_a) - set(runs_b))), (b, sorted(set(runs_b) - set(runs_a)))):
        if only:
            notes.append(f"seed {', '.join(map(str, only))} only in {_label(side.key)}")
    for seed in sorted(set(runs_a) & set(runs_b)):
        hash_a = (runs_a[seed].get("data") or {}).get("sample_hash")
        hash_b = (runs_b[seed].get("data") or {}).get("sample_hash")
        if hash_a and hash_b and hash_a != hash_b:
            notes.append(f"seed {seed} refused: the sides' samples differ (data.sample_hash)")
            continue
        seeds.append(seed)
        pairs.append((runs_a[seed], runs_b[seed]))
    return seeds, pairs, notes


def _label(key: CellKey) -> str:
    return key.method + (f" ({key.ablation})" if key.ablation else "")


def _missing(where: str, cells: tuple[Cell, ...], expect: str) -> Comparison:
    names = ", ".join(f"{_label(cell.key)} ({cell.state})" for cell in cells if not cell.ok_runs)
    return Comparison(where, f"missing: {names}", INCONCLUSIVE, None, expect, tuple(x.key for x in cells))


def compare_cells(coll: Collection, where: str, a: Cell, b: Cell, measure: Measure, expect: str,
                  extra: Measure | None = None) -> Comparison:
    """``a`` against ``b`` on one measure, paired by seed; the verdict is set by ``decide`` (Holm)."""
    if not a.ok_runs or not b.ok_runs:
        return _missing(where, (a, b), expect)
    seeds, pairs, notes = pair_seeds(a, b, measure.value)
    values_a = [measure.value(ra) for ra, _ in pairs]
    values_b = [measure.value(rb) for _, rb in pairs]
    diffs = [x - y for x, y in zip(values_a, values_b, strict=True)]

    def side(cell: Cell, values: list[float]) -> str:
        shown = f"{_label(cell.key)} {measure.what} {fmt(Stat.of(values), measure.digits, measure.scale)}"
        score = cell.stat(extra.value) if extra else None
        return shown + (f" [score {fmt(score)}]" if score else "")

    if not seeds:
        text = f"{_label(a.key)} vs {_label(b.key)}: no seed shared on the same samples ({'; '.join(notes)})"
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
                      p_below, margin, sides=sides, view=view, digits=measure.digits, scale=measure.scale)


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
    if t.n < 2 and not x.discrete:
        return text + "; one seed: no interval over seeds"
    if paired.sign_flip_floor(t.n) > level and x.discrete:
        return text + (f"; cannot reach p < {level:.3g} with {_n(t.n, 'seeds')} (smallest p "
                       f"{paired.sign_flip_floor(t.n):.3g}): needs at least {_count(needed)} seeds")
    return text + (f"; detects ±{abs(detectable * x.scale):.{digits}f} at 80% power with {_n(t.n, t.unit)}; "
                   f"the observed difference needs {_count(needed)} seeds")


def _n(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if n == 1 else unit}"


def _count(n: float) -> str:
    return "more than 1000" if math.isinf(n) else ("?" if math.isnan(n) else str(int(n)))


def combine(verdicts: list[str]) -> str:
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# ---- where comparisons are made ------------------------------------------------------------------------


def _fine_tuned(coll: Collection, model: str, baseline_only: bool = True) -> list[str]:
    """The methods that trained (not reference rows); ``baseline_only``: those run on every layer and module."""
    return [m for m in coll.methods(model, baseline_only=baseline_only) if m not in reference_methods(coll)]


def _panels(coll: Collection, scales: tuple = (), task_type: str | None = None) -> Iterator[tuple]:
    """(model, task, scale) where some method trained, optionally of some scales and one task type."""
    trained = {(k.model, k.task, k.scale) for k, cell in coll.cells.items()
               if k.method not in reference_methods(coll) and cell.runs}
    for model in coll.models():
        for task in coll.tasks(model):
            if task_type and coll.task_info(task).get("type") != task_type:
                continue
            for scale in coll.scales(model):
                if (not scales or scale in scales) and (model, task, scale) in trained:
                    yield model, task, scale


def _where(panel: tuple) -> str:
    return ", ".join(str(p) for p in panel)


def _pair(coll: Collection, panel: tuple, a: str, b: str, measure: Measure, expect: str,
          extra: Measure | None = None) -> Comparison:
    return compare_cells(coll, _where(panel), coll.cell(*panel, a), coll.cell(*panel, b), measure, expect, extra)


def _against_others(coll: Collection, scales: tuple, first: tuple[str, ...], measure: Measure, expect: str,
                    others: Callable[[str], bool], extra: Measure | None = None, task_type: str | None = None):
    """Each method of ``first`` the model ran, against each other fine-tuned method ``others`` accepts."""
    found = []
    for panel in _panels(coll, scales, task_type):
        methods = _fine_tuned(coll, panel[0])
        for a in (m for m in first if m in methods):
            found += [_pair(coll, panel, a, b, measure, expect, extra) for b in methods if b != a and others(b)]
    return found


# ---- the claims ---------------------------------------------------------------------------------------


def _full_converges_first(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("full",), BEST_EPOCH, LOWER, lambda m: True, extra=SCORE)


def _peft_beats_full_low(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("lora", "bitfit"), SCORE, HIGHER, lambda m: m == "full")


def _lora_at_least_full(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("lora",), SCORE, AT_LEAST, lambda m: m == "full",
                           task_type="generation")


def _ia3_bitfit_least_memory(coll: Collection) -> list[Comparison]:
    return _against_others(coll, (), ("ia3", "bitfit"), PEAK_MEMORY, LOWER, lambda m: m not in ("ia3", "bitfit"))


def _prompt_lowest(coll: Collection) -> list[Comparison]:
    return _against_others(coll, (), ("prompt",), SCORE, LOWER, lambda m: True)


def clock(runs: list[dict[str, Any]]) -> str:
    """The time field the ratio reads: ``time.train_to_best_s`` when every run records it, else
    ``time.total_s``."""
    every = runs and all(c._number(c._dig(r, "time", "train_to_best_s")) for r in runs)
    return "train_to_best_s" if every else "total_s"


def _time_ratio_falls(coll: Collection) -> list[Comparison]:
    """Per (model, task) with low and medium panels: log(method/full) at medium minus at low, Welch's t
    (the two scales train on different samples, so they are not paired; within a scale they are)."""
    found = []
    panels = set(_panels(coll, ("low", "medium")))
    for model in coll.models():
        for task in coll.tasks(model):
            if not {(model, task, "low"), (model, task, "medium")} <= panels:
                continue
            for method in (m for m in _fine_tuned(coll, model) if m != "full"):
                cells = [coll.cell(model, task, s, m) for s in ("low", "medium") for m in (method, "full")]
                where = f"{model}, {task}"
                if not all(cell.ok_runs for cell in cells):
                    found.append(_missing(where, tuple(cells), LOWER))
                    continue
                found.append(_ratio_comparison(coll, model, task, method, where, cells))
    return found


def _ratio_comparison(coll: Collection, model: str, task: str, method: str, where: str,
                      cells: list[Cell]) -> Comparison:
    pairs = {s: pair_seeds(coll.cell(model, task, s, method), coll.cell(model, task, s, "full"), c.total_seconds)
             for s in ("low", "medium")}
    field_name = clock([r for s in pairs for pair in pairs[s][1] for r in pair])
    seconds = (lambda r: c._number(c._dig(r, "time", field_name)))  # noqa: E731
    logs = {s: [math.log(seconds(ra) / seconds(rb)) for ra, rb in pairs[s][1] if seconds(ra) and seconds(rb)]
            for s in pairs}
    notes = [note for s in pairs for note in pairs[s][2]]
    if not logs["low"] or not logs["medium"]:
        return Comparison(where, f"{method} vs full: no seed shared ({'; '.join(notes)})", INCONCLUSIVE,
                          None, LOWER, tuple(x.key for x in cells))
    test = replace(paired.welch_t(logs["medium"], logs["low"]), name="Welch t on log time ratios")
    shown = {s: Stat.of([math.exp(v) for v in logs[s]]) for s in logs}
    sides = (f"{method} time / full's (time.{field_name}): medium {fmt(shown['medium'], 3)} vs low "
             f"{fmt(shown['low'], 3)}" + (f" ({'; '.join(notes)})" if notes else ""))
    return Comparison(where, sides, INCONCLUSIVE, test, LOWER, tuple(x.key for x in cells), sides=sides)


def _later_beats_early(coll: Collection) -> list[Comparison]:
    found = []
    for model, task, scale in _panels(coll):
        for method in _fine_tuned(coll, model, baseline_only=False):
            later = coll.cell(model, task, scale, method, "later_layers")
            early = coll.cell(model, task, scale, method, "early_layers")
            if later.runs or early.runs:
                found.append(compare_cells(coll, f"{model}, {task}, {scale}", later, early, SCORE, HIGHER))
    return found


CLAIMS = (
    Claim("full-converges-first", "Full tuning reaches its best epoch in fewer epochs than every PEFT method "
          "at low scale", "§3.2, Figure 1, Table 4",
          "full tuning Ep. 2-4; (IA)3, LoRA, BitFit Ep. 5-9; prompt tuning Ep. 3-9 (low)", _full_converges_first),
    Claim("peft-time-ratio-falls", "PEFT's run time relative to full tuning's falls from low to medium scale",
          "§3.2, Figure 1, Table 4", "e.g. LoRA/full on AG News 2.52 (low) → 1.85 (medium)", _time_ratio_falls),
    Claim("peft-beats-full-low", "PEFT (LoRA and BitFit) scores above full tuning at low scale",
          "§3.2, Table 1", "low: LoRA 0.8612, BitFit 0.8808 vs full 0.8588 (AG News); LoRA 0.7644, BitFit 0.7203 "
          "vs 0.699 (CoLA); all four tasks", _peft_beats_full_low),
    Claim("lora-matches-full-low-generation", "At low scale on generation tasks LoRA scores at least as well as "
          "full tuning", "§3.2, Table 1", "E2E NLG 0.4826 vs 0.4646, SAMSum 0.4120 vs 0.3876",
          _lora_at_least_full),
    Claim("ia3-bitfit-least-memory", "(IA)3 and BitFit use the least training memory (memory.peak_bytes)",
          "§3.2, Table 5", "BitFit and (IA)3 best for memory at low scale, (IA)3 at medium/high",
          _ia3_bitfit_least_memory),
    Claim("prompt-scores-lowest", "Prompt tuning scores lowest of the methods", "§3.2, Table 1, §A.5",
          "e.g. E2E NLG low 0.0258 against 0.2951-0.4883", _prompt_lowest),
    Claim("later-layers-cost-less", "Adapting the later layers costs less score than adapting the early "
          "layers", "§3.3, Table 2", "(IA)3 AG News 0.9212 (later) vs 0.60 (early); LoRA CoLA 0.8218 vs 0.7031",
          _later_beats_early),
)


def comparisons_of(coll: Collection) -> list[tuple[Claim, list[Comparison]]]:
    """Every claim with its comparisons, undecided (``decide`` sets the verdicts)."""
    return [(claim, claim.compare(coll)) for claim in CLAIMS]


def check_claims(coll: Collection) -> list[Verdict]:
    verdicts = []
    for claim, comparisons in comparisons_of(coll):
        decide(comparisons)
        verdicts.append(Verdict(claim, combine([x.verdict for x in comparisons]), comparisons))
    return verdicts


# ---- output -------------------------------------------------------------------------------------------


def format_text(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict}] {v.claim.statement} ({v.claim.source}; {v.claim.id})")
        lines.append(f"    paper (FLAN-T5-XL): {v.claim.paper}")
        if not v.comparisons:
            lines.append("    no results to compare")
        lines += [f"    {x.verdict}: {x.where}: {x.text}" for x in v.comparisons]
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (HOLDS, FAILS, INCONCLUSIVE)}
    lines.append(", ".join(f"{n} {name}" for name, n in counts.items()) + f" of {len(verdicts)} claims.")
    return "\n".join(lines)


def write_markdown(coll: Collection, path: Path) -> Path:
    lines = ["# The paper's claims, checked on these results", "", c.provenance(coll.runs), "", METHOD_NOTE, ""]
    for v in check_claims(coll):
        lines += [f"## {v.claim.statement}: **{v.verdict}**", "",
                  f"{v.claim.source}. Paper (FLAN-T5-XL): {v.claim.paper}.", ""]
        lines += [f"- {x.verdict}: {x.where}: {x.text}" for x in v.comparisons] or ["- no results to compare"]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def claims_html(coll: Collection) -> str:
    parts = ['<h2 id="claims">The paper\'s claims</h2>', f'<p class="note">{escape(METHOD_NOTE)}</p>']
    for v in check_claims(coll):
        items = "".join(f"<li>{escape(f'{x.verdict}: {x.where}: {x.text}')}</li>" for x in v.comparisons)
        parts.append(f"<h3>{escape(v.claim.statement)}: {escape(v.verdict)}</h3>"
                     f'<p class="note">{escape(v.claim.source)}. Paper: {escape(v.claim.paper)}.</p>'
                     f"<ul>{items or '<li>no results to compare</li>'}</ul>")
    return "\n".join(parts)


def collect_many(results_dirs: list[Path]) -> Collection:
    """One collection of the results of several directories."""
    return c.collect([Path(d) for d in results_dirs])
