"""What each run's memory peak holds: Table 12 (the breakdown per method, scale and task) and a stacked bar
figure per (model, task, scale), so a reader sees what is the method's (gradients, optimiser state,
activations) and what is the runtime's (the process before the model loads) or the implementation's
(overhead).

The parts are ``memory.breakdown`` of each result (``recipe/memory.py``). Results of schema version 1 have
no breakdown: their ``trainable_param_bytes`` and ``optimizer_state_bytes`` stand for the gradients and the
optimiser state, and the other parts are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import run_notes
from peftbench.analysis.report.collect import Collection, Quantity, Stat

BREAKDOWN_PARTS = ("runtime", "weights", "gradients", "optimizer_state", "activations", "overhead")
PART_LABELS = {"runtime": "runtime", "weights": "weights", "gradients": "gradients",
               "optimizer_state": "optimiser state", "activations": "activations", "overhead": "overhead"}
PART_COLORS = {"runtime": "#bbbbbb", "weights": "#4c72b0", "gradients": "#dd8452", "optimizer_state": "#c44e52",
               "activations": "#55a868", "overhead": "#8172b3"}
GIB = 2**30
MEMORY_TABLE_NUMBER = 12


def breakdown_of(memory: dict[str, Any]) -> dict[str, int | None]:
    """A result's ``memory.breakdown``, every part present (None where unknown); a schema-1 result's
    ``trainable_param_bytes`` and ``optimizer_state_bytes`` give its gradients and optimiser state."""
    found = memory.get("breakdown")
    if isinstance(found, dict):
        return {part: found.get(part) for part in BREAKDOWN_PARTS}
    legacy = {"gradients": memory.get("trainable_param_bytes"), "optimizer_state": memory.get("optimizer_state_bytes")}
    return {part: legacy.get(part) for part in BREAKDOWN_PARTS}


def part_bytes(part: str) -> Quantity:
    """The quantity ``memory.breakdown.<part>`` of a result (None where not recorded)."""
    def quantity(r: dict[str, Any]) -> float | None:
        memory = r.get("memory")
        value = breakdown_of(memory).get(part) if isinstance(memory, dict) else None
        return float(value) if isinstance(value, (int, float)) else None
    quantity.__name__ = f"memory_{part}_bytes"
    return quantity


METHOD_PARTS = ("weights", "gradients", "optimizer_state", "activations")
"""The parts a method's training needs whatever runs it: without the runtime (the process before the model
loads) and the overhead (what the allocator keeps of freed memory, and transients)."""


def method_bytes(r: dict[str, Any]) -> float | None:
    """Σ ``memory.breakdown`` over ``METHOD_PARTS``: the memory of the method itself (None where a part is not
    recorded). Unlike the process peak, it holds no freed memory that the allocator keeps, which varies from
    seed to seed by more than the methods differ (bench/RESULTS.md, "Memory: what a run's peak holds")."""
    parts = [part_bytes(part)(r) for part in METHOD_PARTS]
    return None if any(value is None for value in parts) else float(sum(parts))


def predicted_peak(r: dict[str, Any]) -> float | None:
    """``memory.predicted.peak_bytes``: what the dry run predicts for the run (None: not recorded)."""
    predicted = (r.get("memory") or {}).get("predicted")
    value = predicted.get("peak_bytes") if isinstance(predicted, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def _render_breakdown(stats: list[Stat | None], phase: str | None) -> str:
    """"2.85 = 0.50 + 0.54 + ..." in ``BREAKDOWN_PARTS`` order ("?": a part not recorded), then the predicted
    peak where the runs recorded one and the phase that set the peak: " (predicted 2.70; in train)"."""
    peak, *parts, predicted = stats
    text = f"{_gib(peak.mean)} = " + " + ".join("?" if s is None else _gib(s.mean) for s in parts)
    notes = ([f"predicted {_gib(predicted.mean)}"] if predicted is not None else []) + ([f"in {phase}"] if phase else [])
    return text + (f" ({'; '.join(notes)})" if notes else "")


def peak_phase(cell: c.Cell) -> str | None:
    """The phase that set the peak in most of the cell's ok runs (``memory.peak_phase``); None where none
    recorded one."""
    phases = [r.get("memory", {}).get("peak_phase") for r in cell.ok_runs]
    phases = [phase for phase in phases if phase]
    return max(sorted(set(phases)), key=phases.count) if phases else None


def memory_table(coll: Collection):
    """Table 12: each cell's mean peak and its parts (GiB), one row per method and scale, one column per task."""
    from peftbench.analysis.report import tables as t

    quantities = ([("peak", c.peak_bytes)] + [(part, part_bytes(part)) for part in BREAKDOWN_PARTS]
                  + [("predicted_peak", predicted_peak)])
    blocks = []
    for model in coll.models():
        groups = []
        for scale in coll.scales(model):
            rows = [t.TableRow(f"{t.method_label(method)} ({t.scale_label(scale)})", method, str(scale), "",
                               [_breakdown_cell(coll.cell(model, task, scale, method), quantities)
                                for task in coll.tasks()])
                    for method in coll.methods(model, baseline_only=True)]
            groups.append(rows)
        blocks.append(t.TableBlock(model, groups))
    parts = " + ".join(PART_LABELS[part] for part in BREAKDOWN_PARTS)
    caption = (f"Peak memory and what it holds, GiB (mean over ok seeds): peak = {parts}. "
               "Runtime: the process before the model loads; activations: bytes saved for backward in the widest "
               "training pass; overhead: the peak beyond the other parts. '?': not recorded (results written "
               "before the breakdown existed). Predicted: the peak `peftbench run --dry-run` predicts, with the "
               "measured runtime (recipe/memory_estimate.py). 'in train': the phase of the run that set the "
               "peak (memory.peak_phase: load, train, validation, checkpoint, test, forgetting).")
    table = t.Table(MEMORY_TABLE_NUMBER, "Memory breakdown", caption, "PEFT/Dataset",
                    [(task, t.task_label(task, coll)) for task in coll.tasks()], blocks, [t.SEEDS_NOTE])
    table.notes += [note for note in (run_notes.allocator_note(coll.runs), run_notes.process_start_note(coll.runs))
                    if note]
    if not table.rows():
        table.notes.insert(0, "No runs of this kind in the results.")
    return table


def _breakdown_cell(cell: c.Cell, quantities):
    """A table cell: the peak's mean and each part's (a part missing in old results shows "?")."""
    from peftbench.analysis.report import tables as t

    if cell.state not in ("ok", "partial"):
        return _without_phase(t._empty_cell(cell.state, cell.state, quantities))
    stats = [cell.stat(quantity) for _, quantity in quantities]
    if stats[0] is None:
        return _without_phase(t._empty_cell("not recorded", "missing", quantities))
    values = {name: t._raw(stat.mean if stat is not None else None) for (name, _), stat in
              zip(quantities, stats, strict=True)}
    phase = peak_phase(cell)
    return t.TableCell(_render_breakdown(stats, phase), cell.state, stats[0].mean,
                       {**values, "peak_phase": phase or "", "n": str(stats[0].n)})


def _without_phase(empty):
    """An empty cell with the peak-phase column every breakdown cell has (before ``n``)."""
    seeds = empty.csv.pop("n")
    empty.csv.update(peak_phase="", n=seeds)
    return empty


def breakdown_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """``memory_breakdown.png``: per (model, task, scale) panel, one stacked bar per variant (the parts' means,
    GiB) with the mean peak marked; nothing where no ok run recorded a breakdown."""
    from peftbench.analysis.report import figures as f

    panels = [panel for panel in f._panels(coll)
              if any(cell_has_breakdown(coll.cells[key]) for key in f._panel_keys(coll, panel))]
    if not panels:
        return []
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = f._new_figure(5 * ncols, 3.6 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        _breakdown_panel(ax, coll, panel, f)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    footer = [run_notes.provenance(f._runs_of(coll, lambda key: True)),
              "Bars: the parts of memory.breakdown, stacked (means over ok seeds); black tick: the mean peak; "
              "dashed tick: the predicted peak (--dry-run). Overhead below zero (parts overlapping in time) is "
              "drawn as none."]
    return f._save(fig, footer, out_dir / "memory_breakdown")


def cell_has_breakdown(cell: c.Cell) -> bool:
    return any(isinstance((run.get("memory") or {}).get("breakdown"), dict) for run in cell.ok_runs)


def _breakdown_panel(ax, coll: Collection, panel: tuple, f) -> None:
    model, task, scale = panel
    keys = [key for key in f._panel_keys(coll, panel) if cell_has_breakdown(coll.cells[key])]
    labels = [f.variant_label(key.method, key.ablation) for key in keys]
    bottoms = [0.0] * len(keys)
    for part in BREAKDOWN_PARTS:
        heights = []
        for key in keys:
            stat = coll.cells[key].stat(part_bytes(part))
            heights.append(max(0.0, stat.mean / GIB) if stat is not None else 0.0)
        ax.bar(range(len(keys)), heights, bottom=bottoms, color=PART_COLORS[part], label=PART_LABELS[part])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, key in enumerate(keys):
        peak = coll.cells[key].stat(c.peak_bytes)
        if peak is not None:
            ax.plot([x - 0.4, x + 0.4], [peak.mean / GIB] * 2, color="black", linewidth=1.2)
        predicted = coll.cells[key].stat(predicted_peak)
        if predicted is not None:
            ax.plot([x - 0.4, x + 0.4], [predicted.mean / GIB] * 2, color="black", linewidth=1.0, linestyle="--")
    ax.set_xticks(range(len(keys)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("GiB", fontsize=8)
    ax.set_title(f"{f.task_label(task, coll)} ({f.scale_label(scale)}), {model}", fontsize=9)
    ax.legend(fontsize=6)
