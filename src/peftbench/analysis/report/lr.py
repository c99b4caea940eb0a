"""The learning-rate search in the report: Table 9 (the learning rates chosen, beside the fixed-rate scores)
and the LR-sensitivity figure (each candidate's best validation loss against its peak learning rate).

Both read the tuned runs' ``lr_search`` records (``recipe/lr_search.py``): every candidate's factor, peak
learning rate and best validation loss, and the factor chosen. Nothing is written for results without a
search.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import run_notes
from peftbench.analysis.report.collect import Cell, Collection, Stat
from peftbench.analysis.report.comparisons import HIGHER, SCORE, compare_cells, machine_mismatch
from peftbench.analysis.report.tables import (
    Table,
    TableBlock,
    TableCell,
    TableRow,
    fmt_stat,
    scale_label,
    task_label,
)
from peftbench.catalog.methods import TUNED_LR, base_method, method_label

MACHINE_NOTE = ("§: the tuned and fixed-rate runs of a seed trained on different machine kinds or in different "
                "precisions (hardware.instruction_set, optimizer.precision), so the difference is not the search's "
                "alone.")
EDGE_NOTE = ("↑ / ↓: the chosen factor is the largest / smallest candidate, so the search did not bracket the "
             "lowest validation loss; a wider grid may choose beyond it.")
TABLE_NUMBER = 9
TITLE = "Learning rates chosen by the search"
CAPTION = ("Each method's protocol learning rates (initial, peak, final) scaled together by each candidate factor; "
           "the factor with the lowest best validation loss is trained and tested (the test split is never used "
           "to choose). Chosen factor per seed; chosen peak LR; its ratio to full tuning's chosen peak LR (same "
           "task, scale and seed); test score with the searched LR and with the protocol's fixed LR; their "
           "difference paired by seed (the same samples), with its 95% interval and paired-t p, not corrected "
           "over the table's rows.")


def chosen_peak_lr(r: dict[str, Any]) -> float | None:
    return c._number(c._dig(r, "optimizer", "lr_peak"))


def _tuned_keys(coll: Collection, model: str) -> list[c.CellKey]:
    keys = [k for k, cell in coll.cells.items() if k.model == model and k.method.endswith(TUNED_LR) and cell.ok_runs]
    task_rank = {task: i for i, task in enumerate(c.TASK_ORDER)}
    return sorted(keys, key=lambda k: (task_rank.get(k.task, len(task_rank)), k.task, str(k.scale),
                                       c.method_order(k.method)))


def _ratio_to_full(coll: Collection, key: c.CellKey) -> Stat | None:
    """Per seed, this cell's chosen peak LR ÷ full tuning's (tuned) chosen peak LR; mean ± CI over seeds."""
    full = coll.cell(key.model, key.task, key.scale, "full" + TUNED_LR, key.ablation)
    full_by_seed = {r.get("seed"): chosen_peak_lr(r) for r in full.ok_runs}
    ratios = [lr / full_by_seed[r.get("seed")] for r in coll.cells[key].ok_runs
              if (lr := chosen_peak_lr(r)) and full_by_seed.get(r.get("seed"))]
    return Stat.of(ratios) if ratios else None


def _text_cell(text: str, value: float | None = None) -> TableCell:
    return TableCell(text, "ok" if text != "missing" else "missing", value, {"": text})


def _stat_cell(stat: Stat | None, render) -> TableCell:
    if stat is None:
        return _text_cell("missing")
    return TableCell(fmt_stat(stat, render), "ok", stat.mean, {"": repr(stat.mean), "ci95": repr(stat.half_width)})


def _tuned_minus_fixed(coll: Collection, key: c.CellKey) -> TableCell:
    """The tuned cell's score minus the fixed-rate cell's, paired by seed (the same samples): the mean
    difference, its 95% interval and paired-t p; one seed: the difference alone."""
    fixed = coll.cell(key.model, key.task, key.scale, base_method(key.method), key.ablation)
    comparison = compare_cells(coll, "", coll.cells[key], fixed, SCORE, HIGHER)
    test = comparison.test
    if test is None:
        text, values = ("missing" if not fixed.ok_runs else "no shared seed"), ("", "", "", "")
    else:
        text = (f"{test.estimate:+.4f} (1 seed)" if test.n < 2 else
                f"{test.estimate:+.4f} [{test.low:+.4f}, {test.high:+.4f}], p {test.p:.3f}")
        text += " §" if machine_mismatch(comparison.pairs) else ""
        values = tuple(repr(v) for v in (test.estimate, test.low, test.high, test.p))
    return TableCell(text, "ok" if test else "missing", test.estimate if test else None,
                     dict(zip(("", "ci95_low", "ci95_high", "p"), values, strict=True)))


def _chosen_text(search: dict[str, Any]) -> str:
    """The chosen factor, "3↑" when it is the largest candidate and "0.1↓" the smallest (``EDGE_NOTE``)."""
    chosen, factors = search["chosen"], [x["factor"] for x in search.get("candidates", [])]
    edge = "↑" if len(factors) > 1 and chosen == max(factors) else "↓" if len(factors) > 1 and chosen == min(factors) else ""
    return f"{chosen:g}{edge}"


def _row(coll: Collection, key: c.CellKey) -> TableRow:
    cell: Cell = coll.cells[key]
    method = base_method(key.method)
    seeds = sorted(cell.ok_runs, key=lambda r: r.get("seed", 0))
    factors = ", ".join(_chosen_text(r["lr_search"]) for r in seeds if r.get("lr_search"))
    fixed = coll.cell(key.model, key.task, key.scale, method, key.ablation).stat(c.score)
    ratio = (TableCell("1", "ok", 1.0, {"": "1", "ci95": "0"}) if method == "full"  # its own rate: 1, no spread
             else _stat_cell(_ratio_to_full(coll, key), lambda v: f"{v:.3g}"))
    cells = [_text_cell(factors or "missing"), _stat_cell(cell.stat(chosen_peak_lr), lambda v: f"{v:.2e}"), ratio,
             _stat_cell(cell.stat(c.score), lambda v: f"{v:.4f}"), _stat_cell(fixed, lambda v: f"{v:.4f}"),
             _tuned_minus_fixed(coll, key)]
    label = f"{method_label(key.method)} ({task_label(key.task, coll)}, {scale_label(key.scale)})"
    return TableRow(label, key.method, str(key.scale), key.ablation or "", cells)


def lr_table(coll: Collection) -> list[Table]:
    """Table 9, one row per tuned (method, task, scale); none when no run searched its learning rate."""
    blocks = [TableBlock(model, [[_row(coll, key) for key in keys]])
              for model in coll.models() if (keys := _tuned_keys(coll, model))]
    if not blocks:
        return []
    columns = [("chosen_factor", "Chosen factor (per seed)"), ("chosen_lr_peak", "Chosen peak LR"),
               ("lr_over_full", "÷ full tuning's"), ("score_tuned", "Score, tuned LR"),
               ("score_fixed", "Score, fixed LR"), ("tuned_minus_fixed", "Tuned − fixed, paired")]
    edges = any(factor.endswith(("↑", "↓")) for block in blocks for rows in block.groups for row in rows
                for factor in row.cells[0].text.split(", "))
    mixed = any(row.cells[-1].text.endswith(" §") for block in blocks for rows in block.groups for row in rows)
    notes = [*([EDGE_NOTE] if edges else []), *([MACHINE_NOTE] if mixed else []), run_notes.provenance(coll.runs)]
    return [Table(TABLE_NUMBER, TITLE, CAPTION, "Method (task, scale)", columns, blocks, notes)]


def _curves(cell: Cell) -> dict[float, list[float]]:
    """Peak LR → the candidates' best validation losses over the cell's seeds (diverged ones left out)."""
    points: dict[float, list[float]] = {}
    for run in cell.ok_runs:
        for candidate in (run.get("lr_search") or {}).get("candidates", []):
            if candidate.get("lr_peak") and candidate.get("best_val_loss") is not None:
                points.setdefault(candidate["lr_peak"], []).append(candidate["best_val_loss"])
    return points


def lr_sensitivity_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """``lr_sensitivity_<model>.png/.svg``: one panel per (task, scale), one line per method: the mean best
    validation loss of each candidate peak LR over seeds, the chosen LR of each seed marked with its test score."""
    from peftbench.analysis.report.figures import _new_figure, _save, slug  # matplotlib only when drawing

    written = []
    for model in coll.models():
        keys = _tuned_keys(coll, model)
        panels = sorted({(k.task, k.scale) for k in keys}, key=str)
        if not panels:
            continue
        fig = _new_figure(4.2 * len(panels), 3.6)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (task, scale) in zip(axes, panels, strict=True):
            for key in (k for k in keys if (k.task, k.scale) == (task, scale)):
                _draw_method(ax, coll.cells[key])
            ax.set_xscale("log")
            ax.set_title(f"{task_label(task, coll)} ({scale_label(scale)})", fontsize=9)
            ax.set_xlabel("peak learning rate", fontsize=8)
            ax.set_ylabel("best validation loss", fontsize=8)
            ax.legend(fontsize=7)
        footer = [run_notes.provenance(coll.runs), "Lines: mean over seeds of each candidate's best validation "
                  "loss; markers: the LR chosen for each seed, labelled with that run's test score."]
        written += _save(fig, footer, out_dir / f"lr_sensitivity_{slug(model)}", ("png", "svg"))
    return written


def _draw_method(ax, cell: Cell) -> None:
    points = _curves(cell)
    if not points:
        return
    lrs = sorted(points)
    means = [statistics.fmean(points[lr]) for lr in lrs]
    line = ax.plot(lrs, means, marker=".", label=method_label(cell.key.method))
    for run in cell.ok_runs:
        lr, search, score = chosen_peak_lr(run), run.get("lr_search") or {}, c.score(run)
        chosen = [x["best_val_loss"] for x in search.get("candidates", [])
                  if x.get("factor") == search.get("chosen")]
        if lr and chosen and chosen[0] is not None and score is not None and math.isfinite(score):
            ax.plot([lr], [chosen[0]], marker="o", color=line[0].get_color())
            ax.annotate(f"{score:.2f}", (lr, chosen[0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
