"""Fine-tuned cells read against the reference rows of their (model, task, scale): flags for the report.

A fine-tuned cell (any method that is not a reference row, each ablation a cell of its own) is flagged

- ``†`` *below majority*: its mean score is below the ``majority`` row's (the most frequent training label);
- ``‡`` *not above zero-shot*: its score is not above the ``zero_shot`` row's within their 95% intervals
  (its interval's lower end is at or below the zero-shot interval's upper end; one seed, no interval: its
  score is at or below zero-shot's).

Reference rows are the runs whose result says ``method.kind == "reference"`` (``reference_rows.py``).
Tables 1 and 2 carry the marks (and a ``flags`` CSV column), the trade-off plots draw the reference scores
as lines and cross the flagged points, and the HTML page lists the flagged cells. Also Table 8: the
classification tasks' label-ranking accuracy (``metrics.test.rank_accuracy``) beside the table of scores.
"""

from __future__ import annotations

from html import escape
from typing import Any

from peftbench.analysis.report import collect as c
from peftbench.analysis.report.collect import CellKey, Collection, Stat

BELOW_MAJORITY, NOT_ABOVE_ZERO_SHOT = "†", "‡"
FLAG_NAMES = {BELOW_MAJORITY: "below majority", NOT_ABOVE_ZERO_SHOT: "not above zero-shot"}
FLAG_NOTE = (f"{BELOW_MAJORITY}: mean score below the majority row (the most frequent training label); "
             f"{NOT_ABOVE_ZERO_SHOT}: not above the zero-shot row within the 95% intervals (one seed: at or "
             "below it).")
REFERENCE_LINES = {"majority": ("#444444", ":"), "zero_shot": ("#444444", "--")}


def is_reference(run: dict[str, Any]) -> bool:
    method = run.get("method")
    return isinstance(method, dict) and method.get("kind") == "reference"


def reference_methods(coll: Collection) -> set[str]:
    return {c.cell_key(run).method for run in coll.runs if is_reference(run)}


def rank_accuracy(r: dict[str, Any]) -> float | None:
    return c._number(c._dig(r, "metrics", "test", "rank_accuracy"))


def _bounds(stat: Stat) -> tuple[float, float]:
    half = stat.half_width or 0.0
    return stat.mean - half, stat.mean + half


def flags(coll: Collection, key: CellKey) -> list[str]:
    """The marks of a fine-tuned cell (none for a reference row or a cell without an ok run)."""
    own = coll.cell(*_coordinates(key)).stat(c.score)
    if own is None or key.method in reference_methods(coll):
        return []
    base = (key.model, key.task, key.scale)
    majority = coll.cell(*base, "majority").stat(c.score)
    zero_shot = coll.cell(*base, "zero_shot").stat(c.score)
    marks = []
    if majority is not None and own.mean < majority.mean:
        marks.append(BELOW_MAJORITY)
    if zero_shot is not None and _bounds(own)[0] <= _bounds(zero_shot)[1]:
        marks.append(NOT_ABOVE_ZERO_SHOT)
    return marks


def _coordinates(key: CellKey) -> tuple:
    return key.model, key.task, key.scale, key.method, key.ablation


def flagged_cells(coll: Collection) -> list[tuple[CellKey, list[str]]]:
    return [(key, marks) for key in sorted(coll.cells, key=str) if (marks := flags(coll, key))]


# ---- tables -------------------------------------------------------------------------------------------


def mark_tables(tables: list, coll: Collection) -> None:
    """Append each fine-tuned cell's marks to its text in Tables 1 and 2 (and a ``flags`` CSV column)."""
    references = reference_methods(coll)
    if not references:
        return
    scales = {str(scale): scale for model in coll.models() for scale in coll.scales(model)}
    for table in (t for t in tables if t.number in (1, 2)):
        for block in table.blocks:
            for row in (row for group in block.groups for row in group):
                for (task, _), cell in zip(table.columns, row.cells, strict=True):
                    if row.method in references and cell.state == "missing" and not _runs_on_type(coll, row.method, task):
                        cell.text, cell.state = "n/a", "n/a"  # e.g. majority on a generation task: no label set
                    key = CellKey(block.model, task, scales.get(row.scale, row.scale), row.method,
                                  row.ablation or None)
                    marks = flags(coll, key)
                    cell.text += f" {''.join(marks)}" if marks else ""
                    cell.csv["flags"] = ";".join(FLAG_NAMES[m] for m in marks)
        table.notes.insert(0, FLAG_NOTE)


def _runs_on_type(coll: Collection, method: str, task: str) -> bool:
    """Whether ``method`` has a run on any task of ``task``'s type."""
    task_type = coll.task_info(task).get("type")
    return any(k.method == method and coll.task_info(k.task).get("type") == task_type for k in coll.cells)


def rank_accuracy_table(coll: Collection):
    """Table 8: label-ranking accuracy of the classification tasks, rows as Table 1's."""
    from peftbench.analysis.report import tables as t

    tasks = [task for task in coll.tasks() if coll.task_info(task).get("type") == "classification"]
    quantities, render = [("", rank_accuracy)], lambda stats: t.fmt_stat(stats[0], t.fmt_fixed)
    blocks = []
    for model in coll.models():
        groups = [[t.TableRow(f"{t.method_label(method)} ({t.scale_label(scale)})", method, str(scale), "",
                              [t.stat_cell(coll.cell(model, task, scale, method), quantities, render)
                               for task in tasks])
                   for method in coll.methods(model, baseline_only=True)]
                  for scale in coll.scales(model)]
        blocks.append(t.TableBlock(model, groups))
    caption = ("Accuracy when the most likely label word is the answer (each label word scored as the target; "
               "label_ranking.py), beside Table 1's exact match of the generated text; higher is better.")
    table = t.Table(8, "Classification by label ranking", caption, "PEFT/Dataset",
                    [(task, t.task_label(task)) for task in tasks], blocks if tasks else [], [t.SEEDS_NOTE])
    if not table.rows():
        table.notes.insert(0, "No classification runs in the results.")
    return table


# ---- figures ------------------------------------------------------------------------------------------


def draw_reference_lines(ax, coll: Collection, panel: tuple) -> None:
    """The majority and zero-shot scores of a (model, task, scale) panel as horizontal lines."""
    for method, (color, style) in REFERENCE_LINES.items():
        stat = coll.cell(*panel, method).stat(c.score)
        if stat is not None:
            ax.axhline(stat.mean, color=color, linestyle=style, linewidth=1, label=f"{method} (reference)")


def cross_if_flagged(ax, coll: Collection, key: CellKey, x: float, y: float) -> None:
    if flags(coll, key):
        ax.scatter([x], [y], marker="x", s=90, color="#cc0000", zorder=4, linewidths=1.5)


# ---- HTML ---------------------------------------------------------------------------------------------


def flags_html(coll: Collection) -> str:
    """A section listing every flagged cell with its score and the reference scores."""
    parts = ['<h2 id="flags">Read against the reference rows</h2>', f'<p class="note">{escape(FLAG_NOTE)}</p>']
    if not reference_methods(coll):
        return "\n".join(parts + ["<p>No reference rows (majority, zero_shot, in_context) in the results.</p>"])
    items = []
    for key, marks in flagged_cells(coll):
        own = coll.cells[key].stat(c.score)
        refs = [f"{m} {coll.cell(key.model, key.task, key.scale, m).stat(c.score).mean:.4f}"
                for m in REFERENCE_LINES if coll.cell(key.model, key.task, key.scale, m).stat(c.score)]
        variant = f" ({key.ablation})" if key.ablation else ""
        items.append(f"<li>{escape(f'{key.model}, {key.task}, {key.scale}: {key.method}{variant} {own.mean:.4f}')}"
                     f" {escape(''.join(marks))} ({escape(', '.join(refs))})</li>")
    return "\n".join(parts + ([f"<ul>{''.join(items)}</ul>"] if items else ["<p>No cell is flagged.</p>"]))
