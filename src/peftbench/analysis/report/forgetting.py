"""What tuning forgets, in the report: Table 10 (forgetting per method, task and scale, mean ± 95% CI over
seeds) and a learning-vs-forgetting figure, score against forgetting per (model, task, scale) with the
Pareto front on (score, forgetting).

Forgetting is ``metrics.forgetting`` (``recipe/forgetting.py``): the tuned model's mean cross-entropy on a
fixed sample of general text (WikiText-2) minus the same method's at initialisation, in nats per token;
lower is better, 0 is no change. Both appear only when some run recorded it; a cell whose runs did not
(older results, encoder classifiers, majority) shows "not recorded".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import figures as f
from peftbench.analysis.report import run_notes
from peftbench.analysis.report import tables as t
from peftbench.analysis.report.collect import Collection, forgetting

TABLE_NUMBER = 10
TITLE = "Forgetting: change in general-text loss (nats per token)"
CAPTION = ("The tuned model's mean cross-entropy on a fixed WikiText-2 sample minus the same method's at "
           "initialisation (recipe/forgetting.py); lower is better, 0 is no change. Zero-shot and in-context "
           "rows change no weight: 0.")
FOOTER = ("x: forgetting, the tuned model's general-text (WikiText-2) loss minus the method's at initialisation, "
          "nats per token (lower is better); y: test score. Ringed points joined by the black step line: Pareto "
          "front (no other method scores higher while forgetting less). Error bars: 95% CI over seeds.")


def base_loss(r: dict[str, Any]) -> float | None:
    """The base model's general-text loss (nats per token) the run recorded."""
    return c._number(c._dig(r, "forgetting", "base_loss"))


def fmt_nats(value: float) -> str:
    return f"{value:+.4f}" if value else "0"


def _render(stats: list[c.Stat]) -> str:
    """Signed mean ± the 95% CI's half-width (unsigned)."""
    stat = stats[0]
    return fmt_nats(stat.mean) + ("" if stat.half_width is None else f" ± {stat.half_width:.4f}")


def forgetting_table(coll: Collection) -> list[t.Table]:
    """Table 10 (rows as Table 1's, a column per task) when some run recorded forgetting; else nothing."""
    if not any(forgetting(r) is not None for r in coll.runs if r.get("status") == "ok"):
        return []
    columns = [(task, t.task_label(task, coll)) for task in coll.tasks()]
    blocks = t._method_scale_blocks(coll, [("", forgetting)], _render)
    notes = [_base_loss_note(coll), t.SEEDS_NOTE]
    return [t.Table(TABLE_NUMBER, TITLE, CAPTION, "PEFT/Dataset", columns, blocks, [n for n in notes if n])]


def _base_loss_note(coll: Collection) -> str | None:
    """The base models' own general-text loss, the level forgetting moves from."""
    losses: dict[str, float] = {}
    for run in coll.runs:
        loss = base_loss(run) if run.get("status") == "ok" else None
        if loss is not None:
            losses.setdefault(c.cell_key(run).model, loss)
    if not losses:
        return None
    shown = "; ".join(f"{model}: {loss:.4f}" for model, loss in sorted(losses.items()))
    return f"The base model's own general-text loss (nats per token): {shown}."


def forgetting_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """``figures/forgetting.png``: score against forgetting, a panel per (model, task, scale) where some run
    recorded forgetting; nothing when none did."""
    panels = [p for p in f._panels(coll) if any(coll.cells[k].stat(forgetting) for k in f._panel_keys(coll, p))]
    if not panels:
        return []
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = f._new_figure(5 * ncols, 3.9 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes[: len(panels)], panels, strict=True):
        _panel(ax, coll, panel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return f._save(fig, [run_notes.provenance(f._runs_of(coll, lambda k: True)), FOOTER], out_dir / "forgetting")


def _panel(ax, coll: Collection, panel: tuple) -> None:
    model, task, scale = panel
    points, labels = [], []
    for key in f._panel_keys(coll, panel):
        cell = coll.cells[key]
        score, forgot = cell.stat(c.score), cell.stat(forgetting)
        if score is None or forgot is None:
            continue
        label = f.variant_label(key.method, key.ablation)
        ax.errorbar(forgot.mean, score.mean, xerr=f._half(forgot), yerr=f._half(score), capsize=2,
                    color=f.method_color(key.method), marker=f.ablation_marker(key.ablation), linestyle="none",
                    label=label)
        points.append((forgot.mean, score.mean))
        labels.append(label)
    front = f.pareto_front(points)
    xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.step(xs, ys, where="post", color="black", linewidth=0.8, alpha=0.6)
    ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
    ax.axvline(0.0, color="#999999", linewidth=0.6, linestyle=":")
    ax.set_title(f"{t.task_label(task, coll)} ({t.scale_label(scale)}), {model}", fontsize=9)
    ax.set_xlabel("forgetting (nats per token, lower is better)", fontsize=8)
    ax.set_ylabel(str(coll.task_info(task).get("metric", "score")), fontsize=8)
    ax.legend(fontsize=6)


def pareto_methods(coll: Collection, panel: tuple) -> list[str]:
    """The variants on the (score, forgetting) Pareto front of a panel, by label: no other scores higher
    while forgetting less."""
    points, labels = [], []
    for key in f._panel_keys(coll, panel):
        score, forgot = coll.cells[key].stat(c.score), coll.cells[key].stat(forgetting)
        if score is not None and forgot is not None:
            points.append((forgot.mean, score.mean))
            labels.append(f.variant_label(key.method, key.ablation))
    return [labels[i] for i in f.pareto_front(points)]
