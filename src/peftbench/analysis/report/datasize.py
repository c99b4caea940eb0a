"""Data-size curves and crossovers: where full tuning and a PEFT method change places as training data grows.

A result set over several numeric scales (``scales=[25, 50, 100, 200, 400]``) gives, per (model, task):

- ``figures/data_size_<model>_<task>.png``: score, time to convergence (``time.train_to_best_s``), peak memory and
  forgetting against training examples per method, log axis, 95% CI error bars over seeds;
- Table 11 (``tables/crossover.*``): for each PEFT method against full tuning, the paired comparison of their
  scores at every size (per-seed differences, paired t, Holm's correction over the sizes) and the crossover
  as a bracket between the sizes where each side is decidedly ahead, in whichever order the data put them.

A numeric scale takes the epoch cap of the named scale that holds it (10 up to 100 examples, 5 up to 1,000)
unless ``train.max_epochs`` sets one: a jump where the crossover may sit. A curve therefore joins only the
sizes run under one epoch cap (``result["max_epochs"]``); sizes under another cap are another curve, drawn
dashed, and every figure and table row states its cap. Named scales (low, medium, high) are not on the curves.
A set with fewer than two numeric sizes for a (model, task) writes neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matplotlib.ticker import NullFormatter

from peftbench.analysis import paired
from peftbench.analysis.report import collect as c
from peftbench.analysis.report import figures as f
from peftbench.analysis.report import run_notes
from peftbench.analysis.report import tables as t
from peftbench.analysis.report.collect import Collection, Stat
from peftbench.analysis.report.comparisons import headline_bounds, seeds_text

ALPHA = paired.ALPHA
"""Family-wise error rate of one method pair's comparisons over the sizes (Holm)."""
TABLE_NUMBER = 11


PANELS = (("score", c.score, 1.0), ("time to convergence (s, time.train_to_best_s)", c.train_to_best_seconds, 1.0),
          ("peak memory (GiB)", c.peak_bytes, 1 / 2**30), ("forgetting (nats per token)", c.forgetting, 1.0))


# ---- curves and crossovers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeComparison:
    """One size of a crossover: the PEFT method's score minus full tuning's, over the seeds both ran."""

    size: int
    pairs: int
    mean_difference: float
    low: float
    high: float
    """The 95% interval of the mean difference (unbounded with fewer than two pairs)."""
    p: float | None
    p_holm: float | None
    seeds_needed: float = math.nan
    """Undecided: the seeds that give 80% power at the observed difference at the Bonferroni level of the
    sizes compared (inf: none would, NaN: fewer than two pairs or decided)."""

    @property
    def ahead(self) -> str | None:
        """"peft" or "full" when decided (Holm-adjusted p below ``ALPHA``), else None."""
        if self.p_holm is None or self.p_holm >= ALPHA:
            return None
        return "peft" if self.mean_difference > 0 else "full"


@dataclass(frozen=True)
class Crossover:
    """Full tuning against one PEFT method on one (model, task), over the sizes run under one epoch cap."""

    model: str
    task: str
    task_type: str | None
    method: str
    epochs: int | None
    comparisons: list[SizeComparison] = field(default_factory=list)

    def leads_at(self, side: str) -> list[int]:
        """The sizes ``side`` ("full" or "peft") is decidedly ahead at, smallest first."""
        return [s.size for s in self.comparisons if s.ahead == side]

    def ordered(self) -> tuple[str, int, str, int] | None:
        """(the side ahead at the smaller sizes, the largest size it leads at, the side ahead at the larger
        sizes, the smallest size that one leads at) when both sides lead somewhere and every size one leads
        at lies below every size the other leads at; None otherwise. Either order can come out: the paper's
        framework expects PEFT ahead at small sizes and full tuning at large ones."""
        full, peft = self.leads_at("full"), self.leads_at("peft")
        if full and peft and max(full) < min(peft):
            return "full", max(full), "peft", min(peft)
        if full and peft and max(peft) < min(full):
            return "peft", max(peft), "full", min(full)
        return None

    def bracket(self) -> str:
        """The crossover in words: which side overtakes the other between which two sizes, or the sizes one
        side leads at when the other leads at none."""
        full, peft = self.leads_at("full"), self.leads_at("peft")
        names = {"full": "full tuning", "peft": f.method_label(self.method)}
        if not full and not peft:
            return "no size decided"
        if not peft:
            return f"full tuning ahead at {_sizes_words(full)} examples; {names['peft']} ahead at no size measured"
        if not full:
            return f"{names['peft']} ahead at {_sizes_words(peft)} examples; full tuning ahead at no size measured"
        if order := self.ordered():
            below, low, above, high = order
            return f"{names[above]} overtakes {names[below]} between {low} and {high} examples"
        return (f"not ordered: full tuning ahead at {_sizes_words(full)}, {names['peft']} at {_sizes_words(peft)} "
                "examples")

    def ahead_at(self, examples: int) -> str | None:
        """Who the crossover puts ahead at ``examples``: "full", the PEFT method, or None. With both sides
        ordered, each side is ahead from its bracket end outwards; with one side leading, only from the
        smallest to the largest size it leads at (one crossover assumed; no extrapolation)."""
        full, peft = self.leads_at("full"), self.leads_at("peft")
        side = None
        if order := self.ordered():
            below, low, above, high = order
            side = below if examples <= low else above if examples >= high else None
        elif bool(full) != bool(peft):  # one side leads somewhere, the other nowhere
            side, sizes = ("full", full) if full else ("peft", peft)
            side = side if sizes[0] <= examples <= sizes[-1] else None
        return self.method if side == "peft" else side


def _sizes_words(sizes: list[int]) -> str:
    """[200] → "200"; [100, 200, 400] → "100, 200 and 400"."""
    words = [str(size) for size in sizes]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _trained(coll: Collection, model: str, task: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(method, size) → ok runs of the baseline variant at numeric sizes (reference rows left out)."""
    from peftbench.analysis.report.references import is_reference

    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for key, cell in coll.cells.items():
        if (key.model, key.task) == (model, task) and isinstance(key.scale, int) and key.ablation is None:
            runs = [r for r in cell.ok_runs if not is_reference(r)]
            if runs:
                found[(key.method, key.scale)] = runs
    return found


def curves(coll: Collection) -> dict[tuple[str, str], dict[int | None, dict[str, dict[int, list[dict]]]]]:
    """(model, task) → epoch cap → method → size → ok runs, for each (model, task) whose runs span at least
    two numeric sizes under one cap."""
    found = {}
    for model in coll.models():
        for task in coll.tasks(model):
            by_cap: dict[int | None, dict[str, dict[int, list[dict]]]] = {}
            for (method, size), runs in _trained(coll, model, task).items():
                for run in runs:
                    cap = c._number(run.get("max_epochs"))
                    by_cap.setdefault(None if cap is None else int(cap), {}).setdefault(method, {}).setdefault(
                        size, []).append(run)
            spanning = {cap: methods for cap, methods in by_cap.items()
                        if len({s for sizes in methods.values() for s in sizes}) >= 2}
            if spanning:
                found[(model, task)] = dict(sorted(spanning.items(), key=lambda kv: -len(_sizes(kv[1]))))
    return found


def _or_none(p: float) -> float | None:
    return None if math.isnan(p) else p


def _sizes(methods: dict[str, dict[int, list[dict]]]) -> set[int]:
    return {s for sizes in methods.values() for s in sizes}


def crossovers(coll: Collection) -> list[Crossover]:
    """Every PEFT method against full tuning on every (model, task, epoch cap) curve both ran."""
    found = []
    for (model, task), by_cap in curves(coll).items():
        for cap, methods in by_cap.items():
            if "full" not in methods:
                continue
            for method in c.order_methods(m for m in methods if m != "full"):
                found.append(_crossover(coll, model, task, cap, methods["full"], methods[method], method))
    return found


def _crossover(coll: Collection, model: str, task: str, cap: int | None, full: dict[int, list[dict]],
               peft: dict[int, list[dict]], method: str) -> Crossover:
    tested: list[tuple[int, list[float], paired.Test]] = []
    for size in sorted(set(full) & set(peft)):
        by_seed = {r.get("seed"): c.score(r) for r in full[size]}
        diffs = [s - by_seed[r.get("seed")] for r in peft[size]
                 if (s := c.score(r)) is not None and by_seed.get(r.get("seed")) is not None]
        if diffs:  # the claims' paired t over per-seed differences (sd 0: its exact sign-flip test), and
            # as in the claims, the interval stays within the range a difference of the metric can take
            bounds = paired.difference_bounds(headline_bounds(full[size][0]))
            tested.append((size, diffs, paired.paired_t(diffs, bounds)))
    adjusted = paired.holm([test.p for *_, test in tested])
    # Holm's first step once every size of the row has seeds enough: the level each undecided size plans for
    level = ALPHA / max(len(tested), 1)
    comparisons = []
    for (size, diffs, test), p_holm in zip(tested, adjusted, strict=True):
        comparison = SizeComparison(size, test.n, test.estimate, test.low, test.high, _or_none(test.p),
                                    _or_none(p_holm))
        if comparison.ahead is None and len(diffs) >= 2:  # undecided: what would decide it
            comparison = replace(comparison, seeds_needed=paired.plan(diffs, discrete=False, alpha=level)[1])
        comparisons.append(comparison)
    return Crossover(model, task, coll.task_info(task).get("type"), method, cap, comparisons)


# ---- the figure -----------------------------------------------------------------------------------------


def data_size_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """``figures/data_size_<model>_<task>.png`` for each (model, task) with a curve; none otherwise."""
    paths = []
    for (model, task), by_cap in curves(coll).items():
        fig = f._new_figure(10, 8.2)
        axes = fig.subplots(2, 2, squeeze=False).ravel()
        for ax, (label, quantity, factor) in zip(axes, PANELS, strict=True):
            for number, (cap, methods) in enumerate(by_cap.items()):
                for method in c.order_methods(methods):
                    _plot_curve(ax, methods[method], quantity, factor, method, cap, dashed=number > 0,
                                several_caps=len(by_cap) > 1)
            ax.set_xscale("log")
            sizes = sorted({s for methods in by_cap.values() for s in _sizes(methods)})
            ax.set_xticks(sizes, [str(s) for s in sizes])  # the sizes run, not log decades' 2 × 10¹
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("training examples (log scale)", fontsize=8)
            ax.set_ylabel(label if quantity is not c.score else str(coll.task_info(task).get("metric", "score")),
                          fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{t.task_label(task, coll)}, {model}: against training examples", fontsize=10)
        runs = [r for methods in by_cap.values() for sizes in methods.values() for rs in sizes.values() for r in rs]
        footer = [run_notes.provenance(runs), _cap_note(by_cap) + " Error bars: 95% CI over seeds."]
        paths += f._save(fig, footer, out_dir / f"data_size_{f.slug(model)}_{f.slug(task)}")
    return paths


def _plot_curve(ax, sizes: dict[int, list[dict]], quantity, factor: float, method: str, cap: int | None,
                dashed: bool, several_caps: bool) -> None:
    points = [(size, Stat.of(values)) for size in sorted(sizes)
              if (values := [v for r in sizes[size] if (v := quantity(r)) is not None])]
    if not points:
        return
    label = f.method_label(method) + (f", {cap} epochs max" if several_caps else "")
    ax.errorbar([s for s, _ in points], [st.mean * factor for _, st in points],
                yerr=[f._half(st, factor) for _, st in points], color=f.method_color(method), marker="o",
                markersize=3, capsize=2, linestyle="--" if dashed else "-", linewidth=1, label=label)


def _cap_note(by_cap: dict[int | None, dict]) -> str:
    if len(by_cap) == 1:
        (cap,) = by_cap
        return f"Epoch cap: {cap} at every size (one cap for the whole curve)."
    shown = "; ".join(f"{cap} epochs max at {', '.join(map(str, sorted(_sizes(m))))} examples"
                      for cap, m in by_cap.items())
    return (f"Epoch caps differ ({shown}): each cap is its own curve (solid: the cap with most sizes, "
            "dashed: the others); set train.max_epochs for one cap at every size.")


# ---- the table ------------------------------------------------------------------------------------------


@dataclass
class CrossoverTable(t.Table):
    """Table 11, written as ``tables/crossover.*``."""

    @property
    def name(self) -> str:
        return "crossover"


COLUMNS = [("epochs", "Epoch cap"), ("full_leads_at", "Sizes full leads at"),
           ("peft_leads_at", "Sizes PEFT leads at"), ("crossover", "Crossover"),
           ("per_size", "PEFT − full per size [95% CI] (pairs, Holm p; seeds needed)")]


def crossover_table(coll: Collection) -> list[t.Table]:
    """Table 11 when the set holds a crossover; an empty list otherwise."""
    found = crossovers(coll)
    if not found:
        return []
    blocks = []
    for model in dict.fromkeys(x.model for x in found):
        groups = [[_row(x) for x in found if x.model == model and x.task == task]
                  for task in dict.fromkeys(x.task for x in found if x.model == model)]
        blocks.append(t.TableBlock(model, groups))
    caption = ("Each PEFT method's test score against full tuning's at every training-set size: the mean of the "
               "per-seed differences (PEFT − full), a paired t test over the seeds both ran, Holm's correction "
               f"over the sizes; decided where the adjusted p is below {ALPHA}. The crossover lies between the sizes "
               "where each side is decidedly ahead, in whichever order the data put them (the paper's framework "
               "expects PEFT ahead at small sizes and full tuning at large ones).")
    notes = ["Sizes with fewer than two paired seeds are never decided. An undecided size gives the seeds at which "
             "its observed difference would be decided with 80% power at the level of Holm's first step "
             f"({ALPHA} divided by the number of sizes in the row).", _caps_wording()]
    return [CrossoverTable(TABLE_NUMBER, "Crossover: where full tuning and a PEFT method change places", caption,
                           "PEFT method vs full (task)", COLUMNS, blocks, notes)]


def _caps_wording() -> str:
    return ("A row joins only sizes run under one epoch cap (result max_epochs); a numeric scale otherwise takes "
            "the cap of the named scale that holds it (10 up to 100 examples, 5 up to 1,000).")


def _per_size_text(s: SizeComparison) -> str:
    """One size's cell text: "50: +0.1200 [+0.0400, +0.2000] (3, 0.021*)", and for an undecided size the
    seeds its observed difference needs, "(3, 0.41; 12 seeds)"."""
    interval = f" [{s.low:+.4f}, {s.high:+.4f}]" if s.pairs >= 2 else ""  # one pair: no interval over seeds
    p_text = "-" if s.p_holm is None else format(s.p_holm, ".3g")
    needed = "" if math.isnan(s.seeds_needed) else f"; {seeds_text(s.seeds_needed)} seeds"
    return f"{s.size}: {s.mean_difference:+.4f}{interval} ({s.pairs}, {p_text}{'*' if s.ahead else ''}{needed})"


def _row(x: Crossover) -> t.TableRow:
    per_size = "; ".join(_per_size_text(s) for s in x.comparisons)
    values = {"epochs": str(x.epochs), "full_leads_at": _sizes_cell(x.leads_at("full")),
              "peft_leads_at": _sizes_cell(x.leads_at("peft")), "crossover": x.bracket(), "per_size": per_size}
    cells = [t.TableCell(values[key], "ok", None, {"": values[key]}) for key, _ in COLUMNS]
    return t.TableRow(f"{f.method_label(x.method)} vs full ({t.task_label(x.task)})", x.method, "numeric", "", cells)


def _sizes_cell(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) or "-"
