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
from dataclasses import dataclass, replace
from functools import partial
from html import escape
from pathlib import Path
from typing import Any

from peftbench.analysis import paired
from peftbench.analysis.report import collect as c
from peftbench.analysis.report import run_notes
from peftbench.analysis.report.collect import Cell, Collection, Stat
from peftbench.analysis.report.comparisons import (  # noqa: F401 - re-exported: the verdicts and comparisons
    AT_LEAST,
    BEST_EPOCH,
    FAILS,
    FORGETTING,
    HIGHER,
    HOLDS,
    INCONCLUSIVE,
    LOWER,
    METHOD_MEMORY,
    PEAK_MEMORY,
    SCORE,
    Comparison,
    Measure,
    combine,
    compare_cells,
    decide,
    fmt,
    missing,
    pair_seeds,
    seeds_text,
)
from peftbench.analysis.report.references import reference_methods
from peftbench.catalog.methods import TUNED_LR

METHOD_NOTE = ("Each comparison is paired by seed: the difference of its two sides, its 95% interval and its "
               "p-value (paired t over seeds; sign-flip for the best epoch), Holm-corrected over the claim's "
               "comparisons; a claim holds only when every comparison it needs exists and is decided its way "
               "(docs/statistics.md).")


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    """Where the paper says it."""
    paper: str
    """The paper's own numbers for it (FLAN-T5-XL)."""
    compare: Callable[[Collection], list[Comparison]]
    needs: str
    """The runs its comparisons need, for a folder that has none of them."""

    def nothing_to_compare(self) -> str:
        return f"no results to compare: needs {self.needs}"


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparisons: list[Comparison]
    runs: int = 0
    """The ok runs behind the comparisons (each run once, however many comparisons it is a side of)."""
    spent_s: float = 0.0
    """Their wall time, ``time.total_s + time.load_s`` summed: what the verdict has cost so far."""

    def to_decide(self) -> str:
        """An undecided claim: "to decide: 8 of 12 comparisons undecided; their observed differences need 9 to
        90 seeds; 4 have one seed (no spread to plan from)"; "" when the claim is decided or has nothing to
        compare. Each comparison's own line says which it is and why."""
        undecided = [x for x in self.comparisons if x.verdict == INCONCLUSIVE]
        if self.verdict != INCONCLUSIVE or not undecided:
            return ""
        planned = sorted(x.seeds_needed for x in undecided if x.test is not None and not math.isnan(x.seeds_needed))
        one_seed = sum(1 for x in undecided if x.test is not None and math.isnan(x.seeds_needed))
        unpaired = sum(1 for x in undecided if x.test is None)
        parts = [f"to decide: {len(undecided)} of {len(self.comparisons)} comparisons undecided"]
        if planned:
            low, high = (seeds_text(n) for n in (planned[0], planned[-1]))
            parts.append(f"their observed differences need {low} seeds" if low == high
                         else f"their observed differences need {low} to {high} seeds")
        if one_seed:
            parts.append(f"{one_seed} {'has' if one_seed == 1 else 'have'} one seed (no spread to plan from)")
        if unpaired:
            parts.append(f"{unpaired} {'lacks' if unpaired == 1 else 'lack'} a side or a shared seed")
        return "; ".join(parts)

    def summary(self) -> str:
        """Where the paper says it, its numbers, what the comparisons have cost and, undecided, what would
        decide it: the paragraph under the claim's heading in ``claims.md`` and the report page."""
        text = (f"{self.claim.source}. Paper (FLAN-T5-XL): {self.claim.paper}. The comparisons' runs: "
                f"{self.spent().removeprefix('spent: ')}.")
        to_decide = self.to_decide()
        return text + (f" {to_decide.capitalize()}." if to_decide else "")

    def spent(self) -> str:
        """"spent: 30 runs, 41.5 min of run time": the budget spent on this claim's comparisons."""
        return f"spent: {self.runs} run{'s' * (self.runs != 1)}, {self.spent_s / 60:.1f} min of run time"


# ---- where comparisons are made ------------------------------------------------------------------------


def _fine_tuned(coll: Collection, model: str, baseline_only: bool = True) -> list[str]:
    """The methods that trained (not reference rows) at the protocol's fixed learning rates, as the paper's
    claims are about; ``baseline_only``: those run on every layer and module. Cells of searched learning rates
    (``TUNED_LR``) are compared by the claim of their own only."""
    return [m for m in coll.methods(model, baseline_only=baseline_only)
            if m not in reference_methods(coll) and not m.endswith(TUNED_LR)]


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
                    others: Callable[[str], bool], extra: Measure | None = None, task_type: str | None = None,
                    required: tuple[str, ...] = ()):
    """Each method of ``first`` the model ran (in any panel), against each other fine-tuned method ``others``
    accepts, in every panel. The methods a claim names (``required``) are compared whether or not they ran, and
    a method run in some panels is compared in all: a claim never holds because a side is missing, which that
    comparison says ("missing: ...")."""
    found = []
    for panel in _panels(coll, scales, task_type):
        methods = list(dict.fromkeys([*_fine_tuned(coll, panel[0]), *required]))
        for a in (m for m in first if m in methods):
            found += [_pair(coll, panel, a, b, measure, expect, extra) for b in methods if b != a and others(b)]
    return found


# ---- the claims ---------------------------------------------------------------------------------------


def _full_converges_first(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("full",), BEST_EPOCH, LOWER, lambda m: True, extra=SCORE)


def _peft_beats_full_low(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("lora", "bitfit"), SCORE, HIGHER, lambda m: m == "full",
                           required=("full", "lora", "bitfit"))


def _lora_at_least_full(coll: Collection) -> list[Comparison]:
    return _against_others(coll, ("low",), ("lora",), SCORE, AT_LEAST, lambda m: m == "full",
                           task_type="generation", required=("full", "lora"))


def _peft_beats_full_low_tuned_lr(coll: Collection) -> list[Comparison]:
    """``peft-beats-full-low`` again with every side at its searched learning rate, in the low-scale panels
    where some method's rate was searched: LoRA's and BitFit's tuned cells against full tuning's, each missing
    one named. Whether the fixed-rate verdict is the methods' or the paper's learning rates'."""
    found = []
    for panel in _panels(coll, ("low",)):
        if not any(m.endswith(TUNED_LR) and coll.cell(*panel, m).runs for m in coll.methods(panel[0])):
            continue
        found += [_pair(coll, panel, method + TUNED_LR, "full" + TUNED_LR, SCORE, HIGHER)
                  for method in ("lora", "bitfit")]
    return found


def _ia3_bitfit_least(memory: Measure, coll: Collection) -> list[Comparison]:
    """(IA)3 and BitFit each against every other fine-tuned method, lower on ``memory`` (the process peak, or
    the method's own memory)."""
    return _against_others(coll, (), ("ia3", "bitfit"), memory, LOWER, lambda m: m not in ("ia3", "bitfit"))


def _peft_forgets_less(coll: Collection) -> list[Comparison]:
    return _against_others(coll, (), ("lora", "ia3", "bitfit"), FORGETTING, LOWER, lambda m: m == "full")


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
                    found.append(missing(where, tuple(cells), LOWER))
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
    return Comparison(where, sides, INCONCLUSIVE, test, LOWER, tuple(x.key for x in cells), sides=sides,
                      measure="log time ratio to full tuning's, medium − low")


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
          "full tuning Ep. 2-4; (IA)3, LoRA, BitFit Ep. 5-9; prompt tuning Ep. 3-9 (low)", _full_converges_first,
          needs="full tuning and a PEFT method at low scale"),
    Claim("peft-time-ratio-falls", "PEFT's run time relative to full tuning's falls from low to medium scale",
          "§3.2, Figure 1, Table 4", "e.g. LoRA/full on AG News 2.52 (low) → 1.85 (medium)", _time_ratio_falls,
          needs="full tuning and a PEFT method at low and at medium scale (scales=[low,medium])"),
    Claim("peft-beats-full-low", "PEFT (LoRA and BitFit) scores above full tuning at low scale",
          "§3.2, Table 1", "low: LoRA 0.8612, BitFit 0.8808 vs full 0.8588 (AG News); LoRA 0.7644, BitFit 0.7203 "
          "vs 0.699 (CoLA); all four tasks", _peft_beats_full_low,
          needs="full tuning, LoRA and BitFit at low scale"),
    Claim("peft-beats-full-low-tuned-lr", "PEFT (LoRA and BitFit) scores above full tuning at low scale, each "
          "at its searched learning rate (lr_search)", "§3.2, Table 1; §A.3's rates searched",
          "no search: one fixed learning-rate triple per method family (§A.3), tuned for FLAN-T5-XL",
          _peft_beats_full_low_tuned_lr,
          needs="full tuning, LoRA and BitFit at low scale with lr_search=[0.1,0.3,1,3]"),
    Claim("lora-matches-full-low-generation", "At low scale on generation tasks LoRA scores at least as well as "
          "full tuning", "§3.2, Table 1", "E2E NLG 0.4826 vs 0.4646, SAMSum 0.4120 vs 0.3876",
          _lora_at_least_full,
          needs="full tuning and LoRA on a generation task (e2e_nlg, samsum) at low scale"),
    Claim("ia3-bitfit-least-memory", "(IA)3 and BitFit use the least training memory (memory.peak_bytes)",
          "§3.2, Table 5", "BitFit and (IA)3 best for memory at low scale, (IA)3 at medium/high",
          partial(_ia3_bitfit_least, PEAK_MEMORY),
          needs="(IA)3 or BitFit beside another method"),
    Claim("ia3-bitfit-least-method-memory", "(IA)3 and BitFit need the least memory of their own: weights, "
          "gradients, optimiser state and the activations saved for backward (memory.breakdown, without the "
          "runtime and the allocator's overhead)", "§3.2, Table 5",
          "BitFit and (IA)3 best for memory at low scale, (IA)3 at medium/high",
          partial(_ia3_bitfit_least, METHOD_MEMORY),
          needs="(IA)3 or BitFit beside another method, in results that record memory.breakdown"),
    Claim("prompt-scores-lowest", "Prompt tuning scores lowest of the methods", "§3.2, Table 1, §A.5",
          "e.g. E2E NLG low 0.0258 against 0.2951-0.4883", _prompt_lowest,
          needs="prompt tuning beside another method"),
    Claim("peft-forgets-less", "LoRA, (IA)3 and BitFit forget less general text than full tuning "
          "(metrics.forgetting, on WikiText-2)", "not in the paper; Biderman et al. (2024), \"LoRA Learns Less "
          "and Forgets Less\"", "not measured", _peft_forgets_less,
          needs="full tuning beside LoRA, (IA)3 or BitFit, with forgetting measured (the default)"),
    Claim("later-layers-cost-less", "Adapting the later layers costs less score than adapting the early "
          "layers", "§3.3, Table 2", "(IA)3 AG News 0.9212 (later) vs 0.60 (early); LoRA CoLA 0.8218 vs 0.7031",
          _later_beats_early,
          needs="a method with ablations=[early_layers,later_layers]"),
)


def comparisons_of(coll: Collection) -> list[tuple[Claim, list[Comparison]]]:
    """Every claim with its comparisons, undecided (``decide`` sets the verdicts)."""
    return [(claim, claim.compare(coll)) for claim in CLAIMS]


def check_claims(coll: Collection) -> list[Verdict]:
    verdicts = []
    for claim, comparisons in comparisons_of(coll):
        decide(comparisons)
        runs = {id(r): r for x in comparisons for key in x.cells if key in coll.cells for r in coll.cells[key].ok_runs}
        spent = sum((c.total_seconds(r) or 0.0) + (c._number(c._dig(r, "time", "load_s")) or 0.0)
                    for r in runs.values())
        verdicts.append(Verdict(claim, combine([x.verdict for x in comparisons]), comparisons, len(runs), spent))
    return verdicts


# ---- output -------------------------------------------------------------------------------------------


def format_text(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict}] {v.claim.statement} ({v.claim.source}; {v.claim.id})")
        lines.append(f"    paper (FLAN-T5-XL): {v.claim.paper}")
        lines.append(f"    {v.spent()}")
        if to_decide := v.to_decide():
            lines.append(f"    {to_decide}")
        if not v.comparisons:
            lines.append(f"    {v.claim.nothing_to_compare()}")
        lines += [f"    {x.verdict}: {x.where}: {x.text}" for x in v.comparisons]
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (HOLDS, FAILS, INCONCLUSIVE)}
    lines.append(", ".join(f"{n} {name}" for name, n in counts.items()) + f" of {len(verdicts)} claims.")
    return "\n".join(lines)


def verdicts_json(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """The verdicts as plain data (``peftbench claims --json``): per claim its id, statement, verdict, runs and
    minutes spent, and each comparison's side cells, paired difference a − b with its 95% interval, test,
    p-values, seeds and, undecided, the seeds its observed difference needs (null: none to plan from)."""
    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else value

    def comparison(x: Comparison) -> dict[str, Any]:
        t = x.test
        return {"where": x.where, "verdict": x.verdict, "measure": x.measure or None, "expect": x.expect,
                "cells": [{"method": key.method, "ablation": key.ablation} for key in x.cells],
                "difference": None if t is None else {"estimate": number(t.estimate * x.scale),
                                                      "low": number(t.low * x.scale),
                                                      "high": number(t.high * x.scale)},
                "test": None if t is None else t.name, "n": None if t is None else t.n,
                "unit": None if t is None else t.unit, "p": None if t is None else number(t.p),
                "p_holm": number(x.p_adjusted), "seeds": x.seeds, "seeds_needed": number(x.seeds_needed),
                "text": x.text}

    return [{"id": v.claim.id, "statement": v.claim.statement, "source": v.claim.source, "verdict": v.verdict,
             "runs": v.runs, "minutes": round(v.spent_s / 60, 1), "to_decide": v.to_decide() or None,
             "needs": None if v.comparisons else v.claim.needs,
             "comparisons": [comparison(x) for x in v.comparisons]} for v in verdicts]


def write_markdown(coll: Collection, path: Path) -> Path:
    lines = ["# The paper's claims, checked on these results", "", run_notes.provenance(coll.runs), "", METHOD_NOTE, ""]
    for v in check_claims(coll):
        lines += [f"## {v.claim.statement}: **{v.verdict}**", "", v.summary(), ""]
        lines += [f"- {x.verdict}: {x.where}: {x.text}" for x in v.comparisons] or [f"- {v.claim.nothing_to_compare()}"]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def claims_html(coll: Collection) -> str:
    parts = ['<h2 id="claims">The paper\'s claims</h2>', f'<p class="note">{escape(METHOD_NOTE)}</p>']
    for v in check_claims(coll):
        items = "".join(f"<li>{escape(f'{x.verdict}: {x.where}: {x.text}')}</li>" for x in v.comparisons)
        parts.append(f"<h3>{escape(v.claim.statement)}: {escape(v.verdict)}</h3>"
                     f'<p class="note">{escape(v.summary())}</p>'
                     f"<ul>{items or f'<li>{escape(v.claim.nothing_to_compare())}</li>'}</ul>")
    return "\n".join(parts)


def collect_many(results_dirs: list[Path]) -> Collection:
    """One collection of the results of several directories."""
    return c.collect([Path(d) for d in results_dirs])
