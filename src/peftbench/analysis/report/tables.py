"""Tables 1-6 of Pu et al. (2023), built from result files (``render.py`` writes them as Markdown, CSV, LaTeX).

Rows are "Method (scale)" grouped by scale and columns are tasks, as in the paper; with several models each
model gets its own block. A cell shows mean ± 95% CI when a cell has several ok seeds, the status of its runs
when none is ok ("failed", "diverged", ...), and "missing" when no run exists: never a zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import references, run_notes
from peftbench.analysis.report.collect import Cell, Collection, Quantity, Stat
from peftbench.catalog.ablations import FULL_LAYERS_LABEL, ablation_label
from peftbench.catalog.methods import method_label

__all__ = ["ablation_label", "method_label", "scale_label", "task_label", "build_tables"]

SCALE_LABELS = {"low": "low", "medium": "med.", "high": "high"}
TASK_LABELS = {"ag_news": "AG News", "cola": "CoLA", "e2e_nlg": "E2E NLG", "samsum": "SAMSum"}


def scale_label(scale: str | int) -> str:
    return SCALE_LABELS.get(scale, f"{scale} ex." if isinstance(scale, int) else str(scale))


def task_label(task: str, coll: Collection | None = None) -> str:
    """The paper's name of a task, else the name its runs recorded (a user task given by its YAML path
    is shown by the ``name`` inside it), else ``task``."""
    name = str(coll.task_info(task).get("name", task)) if coll is not None else task
    return TASK_LABELS.get(name, name)


@dataclass
class TableCell:
    text: str
    state: str
    """"ok", "partial", "missing" or the statuses of the failed runs."""
    sort_value: float | None
    csv: dict[str, str]
    """CSV columns of this cell, by suffix ("" is the value itself)."""


@dataclass
class TableRow:
    label: str
    method: str
    scale: str
    ablation: str
    cells: list[TableCell]


@dataclass
class TableBlock:
    model: str
    groups: list[list[TableRow]]
    """Rows separated by a rule (one group per data scale)."""


@dataclass
class Table:
    number: int
    title: str
    caption: str
    corner: str
    columns: list[tuple[str, str]]
    """(key for CSV, label shown) per data column."""
    blocks: list[TableBlock]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"table{self.number}"

    def rows(self) -> list[TableRow]:
        return [row for block in self.blocks for group in block.groups for row in group]


# ---- number formats -------------------------------------------------------------------------------------


def fmt_fixed(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def fmt_sig(value: float) -> str:
    """Four significant digits; scientific below 1e-3, as the paper writes 3.01E-05."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3E}"
    return f"{value:.4g}"


def fmt_stat(stat: Stat, fmt: Callable[[float], str]) -> str:
    return fmt(stat.mean) if stat.half_width is None else f"{fmt(stat.mean)} ± {fmt(stat.half_width)}"


def _raw(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else format(value, ".10g")


def csv_column_name(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# ---- cells -----------------------------------------------------------------------------------------------


def stat_cell(
    cell: Cell, quantities: Sequence[tuple[str, Quantity]], render: Callable[[list[Stat]], str]
) -> TableCell:
    """One table cell from a benchmark cell: mean ± CI of each quantity, or why there is no number."""
    state = cell.state
    if state not in ("ok", "partial"):
        return _empty_cell(state, state, quantities)
    stats = [cell.stat(quantity) for _, quantity in quantities]
    if any(stat is None for stat in stats):
        return _empty_cell("not recorded", "missing", quantities)
    text = render(stats)
    if state == "partial":
        text += f" ({len(cell.ok_runs)}/{len(cell.runs)} ok)"
    values: dict[str, str] = {}
    for (name, _), stat in zip(quantities, stats, strict=True):
        values[csv_column_name(name)] = _raw(stat.mean)
        values[csv_column_name(name, "ci95")] = _raw(stat.half_width)
    values["n"] = str(stats[0].n)
    return TableCell(text, state, stats[0].mean, values)


def _empty_cell(text: str, state: str, quantities: Sequence[tuple[str, Quantity]]) -> TableCell:
    """No number: the CSV says why in the first value column and leaves the others empty."""
    values = {csv_column_name(name, suffix): "" for name, _ in quantities for suffix in ("", "ci95")}
    values[csv_column_name(quantities[0][0])] = text
    return TableCell(text, state, None, {**values, "n": "0"})


def _single(quantity: Quantity, fmt: Callable[[float], str]) -> tuple[list[tuple[str, Quantity]], Callable]:
    return [("", quantity)], lambda stats: fmt_stat(stats[0], fmt)


def _epochs_and_time(stats: list[Stat]) -> str:
    epochs, seconds, evaluation = stats
    return (f"Ep. {fmt_stat(epochs, lambda v: f'{v:.3g}')}; {fmt_stat(seconds, lambda v: f'{v:.0f}')} "
            f"(eval {fmt_stat(evaluation, lambda v: f'{v:.0f}')})")


# ---- table builders ---------------------------------------------------------------------------------------


def _method_scale_blocks(coll: Collection, quantities, render) -> list[TableBlock]:
    """Tables 1, 4, 5, 6: one row per (method, scale) of each model, one column per task."""
    blocks = []
    for model in coll.models():
        groups = []
        for scale in coll.scales(model):
            rows = []
            for method in coll.methods(model, baseline_only=True):
                cells = [
                    stat_cell(coll.cell(model, t, scale, method), quantities, render) for t in coll.tasks()
                ]
                label = f"{method_label(method)} ({scale_label(scale)})"
                rows.append(TableRow(label, method, str(scale), "", cells))
            groups.append(rows)
        blocks.append(TableBlock(model, groups))
    return blocks


def _ablation_pairs(
    coll: Collection, model: str, scale: str | int | None = None
) -> list[tuple[str, str | None]]:
    """(method, ablation) pairs of ``model`` (at ``scale``): each ablated method on all layers, then Table 2 order.

    The all-layers baseline of an ablated method is listed even when it was not run, so it shows as missing.
    """
    keys = [k for k in coll.cells if k.model == model and (scale is None or k.scale == scale)]
    ablated = c.order_methods(k.method for k in keys if k.ablation is not None)
    pairs: list[tuple[str, str | None]] = [(method, None) for method in ablated]
    for ablation in c.order_ablations(k.ablation for k in keys if k.ablation is not None):
        pairs += [
            (method, ablation) for method in c.order_methods(k.method for k in keys if k.ablation == ablation)
        ]
    return pairs


def _ablation_blocks(coll: Collection, quantities, render) -> list[TableBlock]:
    blocks = []
    for model in coll.models():
        groups = []
        for scale in coll.scales(model):
            rows = []
            for method, ablation in _ablation_pairs(coll, model, scale):
                cells = [
                    stat_cell(coll.cell(model, t, scale, method, ablation), quantities, render)
                    for t in coll.tasks()
                ]
                label = f"{method_label(method)} ({ablation_label(ablation)}, {scale_label(scale)})"
                rows.append(TableRow(label, method, str(scale), ablation or "", cells))
            if rows:
                groups.append(rows)
        if groups:
            blocks.append(TableBlock(model, groups))
    return blocks


def _count_cell(cells: list[Cell], quantity: Quantity) -> TableCell:
    """A parameter count over every run of a (method, ablation): one number, or the range when tasks differ."""
    values = sorted({int(v) for cell in cells for r in cell.ok_runs if (v := quantity(r)) is not None})
    if not values:
        statuses = sorted({cell.state for cell in cells if cell.runs}) or ["missing"]
        text = "/".join(statuses)
        return TableCell(text, text, None, {"": text})
    text = f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"
    raw = str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return TableCell(text, "ok", float(values[-1]), {"": raw})


def _parameter_blocks(coll: Collection) -> list[TableBlock]:
    blocks = []
    for model in coll.models():
        model_cells = [cell for key, cell in coll.cells.items() if key.model == model]
        rows = [
            TableRow("Total Parameters (no PEFT)", "", "", "", [_count_cell(model_cells, c.base_params)])
        ]
        pairs = [(m, None) for m in coll.methods(model, baseline_only=True)]
        pairs += [pair for pair in _ablation_pairs(coll, model) if pair[1] is not None]
        for method, ablation in pairs:
            cells = [
                cell
                for key, cell in coll.cells.items()
                if key.model == model and key.method == method and key.ablation == ablation
            ]
            suffix = ablation_label(ablation, FULL_LAYERS_LABEL)
            count = _count_cell(cells, c.trainable_params)
            rows.append(TableRow(f"{method_label(method)} ({suffix})", method, "", ablation or "", [count]))
        blocks.append(TableBlock(model, [rows]))
    return blocks


def _metric_note(coll: Collection) -> str:
    metrics = []
    for task in coll.tasks():
        info, headlines = coll.task_info(task), coll.headlines(task) or ["score"]
        note = f"{task}: {' / '.join(headlines)}"
        if len(headlines) > 1:
            note += " (results of different peftbench versions: each run shows its own)"
        elif info.get("metric") and info.get("metric") != headlines[0]:
            note += f" (the paper's {info['metric']} is in metrics.test)"
        metrics.append(note)
    return "Metric per task: " + ", ".join(metrics) + "."


def _clock_note(coll: Collection) -> list[str]:
    """A warning where some trained runs predate the training-only clock (schema 1: ``time.to_best_s`` also
    counted the per-epoch validation decoding), so their times and the others' are not the same quantity."""
    trained = [r for r in coll.runs if r.get("status") == "ok" and r.get("epochs")]
    old = sum("train_to_best_s" not in (r.get("time") or {}) for r in trained)
    if not old:
        return []
    return [f"{old} of {len(trained)} trained runs predate the training-only clock: their time "
            "(time.to_best_s) also counts the per-epoch validation decoding."]


TIME_WORDING = ("the paper's clock: optimiser steps and the per-epoch validation loss; evaluation (validation "
                "decoding, test decoding, label ranking) is timed apart and never enters a ratio")
TABLE_TEXTS = {
    1: (
        "Test score per method, task and data scale",
        "Accuracy (exact match) for classification, ROUGE-L for generation; higher is better.",
    ),
    2: (
        "Ablations across layers and submodules",
        "Test score of LoRA/(IA)3 (or any method) on selected layers or modules; higher is better.",
    ),
    3: (
        "Trainable parameters across methods and ablation variants",
        "Parameter count per method and ablation variant; the first row is the model's total.",
    ),
    4: (
        "Convergence: epochs and training time to the best epoch (seconds)",
        "Epochs to convergence (best epoch by validation loss, with early stopping), training time to that "
        f"epoch in seconds (time.train_to_best_s; {TIME_WORDING}) and evaluation seconds (eval); lower is "
        "better.",
    ),
    5: (
        "Score per hundred thousand trainable parameters",
        "Score / trainable parameters × 100,000; higher is better.",
    ),
    6: (
        "Score per minute of training to convergence",
        f"Score / (training time to the best epoch in minutes, Table 4's time: {TIME_WORDING}); higher is "
        "better.",
    ),
}
SEEDS_NOTE = (
    "Several seeds: mean ± 95% CI (t-distribution); one seed: the value alone; '(k/n ok)': k of n seeds ok."
)
HIGH_NOTE = "The paper omits high-resource runs here (one epoch only); they are shown when present."
PROMPT_NOTE = "The paper leaves prompt tuning out of Tables 5-6; it is kept here when it was run."


def build_tables(coll: Collection) -> list[Table]:
    """Tables 1-6 in the paper's layout."""
    columns = [(task, task_label(task, coll)) for task in coll.tasks()]
    score = _single(c.score, fmt_fixed)
    blocks = {
        1: _method_scale_blocks(coll, *score),
        2: _ablation_blocks(coll, *score),
        3: _parameter_blocks(coll),
        4: _method_scale_blocks(
            coll, [("epochs", c.best_epoch), ("train_to_best_s", c.train_to_best_seconds),
                   ("eval_s", c.evaluation_seconds)], _epochs_and_time
        ),
        5: _method_scale_blocks(coll, *_single(c.score_per_100k_params, fmt_sig)),
        6: _method_scale_blocks(coll, *_single(c.score_per_minute, fmt_sig)),
    }
    options = [note for note in [run_notes.method_options_note(coll)] if note]
    speedups = [note for note in [run_notes.speedups_note(coll.runs)] if note]
    notes = {
        1: [_metric_note(coll), *options],
        2: [_metric_note(coll)],
        3: options,
        4: [*speedups, *_clock_note(coll), HIGH_NOTE, *options],
        5: [PROMPT_NOTE, *options],
        6: [*speedups, *_clock_note(coll), PROMPT_NOTE, *options],
    }
    tables = []
    for number, (title, caption) in TABLE_TEXTS.items():
        if number == 3:  # one count per variant, not per task; and counts do not vary with the seed
            table = Table(
                3, title, caption, "Ablation Technique", [("trainable_params", "Parameter Count")], blocks[3],
                notes[3],
            )
        else:
            table = Table(
                number, title, caption, "PEFT/Dataset", columns, blocks[number], notes[number] + [SEEDS_NOTE]
            )
        if not table.rows():
            table.notes.insert(0, "No runs of this kind in the results.")
        tables.append(table)
    references.mark_tables(tables, coll)  # † below majority, ‡ not above zero-shot
    from peftbench.analysis.report.memory import memory_table

    return tables + [references.rank_accuracy_table(coll), memory_table(coll)]
