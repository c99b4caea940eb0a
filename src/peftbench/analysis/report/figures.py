"""Figure 1 of Pu et al. (2023) and the report's own plots: validation-loss curves and trade-offs.

Figures are drawn on the Agg canvas (no display, no pyplot global state). Every figure carries a footer
naming the model(s), data and hardware that produced it; with several seeds every point or bar carries a
95% CI error bar. A method keeps the same colour in every figure.
"""

from __future__ import annotations

import math
import textwrap
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import references, run_notes
from peftbench.analysis.report.collect import Collection, Stat
from peftbench.analysis.report.tables import TIME_WORDING, scale_label, task_label
from peftbench.catalog.ablations import ablation_label
from peftbench.catalog.methods import method_family, method_label

_METHOD_COLORS = {
    "full": "#1f77b4",
    "ia3": "#ff7f0e",
    "lora": "#2ca02c",
    "bitfit": "#d62728",
    "prompt": "#9467bd",
}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")
_MARKERS = ("s", "^", "v", "D", "P", "X", "<", ">", "*", "h")
FIGURE1_OMITS = ("high",)
"""The paper's Figure 1 shows low and medium resource: high-resource runs train one epoch only."""


def method_color(method: str) -> str:
    """Fixed colours for the paper's methods; other names hash to a stable colour, the same in every run."""
    return _METHOD_COLORS.get(method) or _EXTRA_COLORS[zlib.crc32(method.encode()) % len(_EXTRA_COLORS)]


def ablation_marker(ablation: str | None) -> str:
    if ablation is None:
        return "o"
    if ablation in c.ABLATION_ORDER:
        return _MARKERS[c.ABLATION_ORDER.index(ablation) % len(_MARKERS)]
    return _MARKERS[zlib.crc32(ablation.encode()) % len(_MARKERS)]


def variant_label(method: str, ablation: str | None) -> str:
    return (
        method_label(method) if ablation is None else f"{method_label(method)} ({ablation_label(ablation)})"
    )


def slug(value: Any) -> str:
    text = str(value).split("/")[-1]
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in text) or "x"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indexes of the points no other point beats on both axes: lower x (cost) and higher y (score)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _half(stat: Stat | None, factor: float = 1.0) -> float:
    return 0.0 if stat is None or stat.half_width is None else stat.half_width * factor


_NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def _save(fig: Figure, footer: Sequence[str], stem: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Add the provenance footer below the axes and write ``stem.<format>`` for each format."""
    width_in, height_in = fig.get_size_inches()
    text = "\n".join(textwrap.fill(line, width=int(width_in * 17)) for line in footer)
    n_lines = text.count("\n") + 1
    fig.text(0.01, 0.01, text, fontsize=7, va="bottom", ha="left", color="#333333")
    fig.tight_layout(rect=(0, min(0.5, (n_lines * 0.13 + 0.1) / height_in), 1, 1))
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        # SVG text stays text (searchable, smaller); no date and fixed ids, so the same results give the
        # same bytes and a committed report can be checked by regenerating it.
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "peftbench"}):
            fig.savefig(path, format=fmt, dpi=110, metadata=_NO_DATE.get(fmt))
        paths.append(path)
    return paths


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _panel_keys(coll: Collection, panel: tuple) -> list[c.CellKey]:
    """Cells of one (model, task, scale) with ok runs, in method then ablation order."""
    keys = [k for k, cell in coll.cells.items() if (k.model, k.task, k.scale) == panel and cell.ok_runs]
    methods = c.order_methods(k.method for k in keys)
    ablations = c.order_ablations(k.ablation for k in keys)
    return sorted(keys, key=lambda k: (methods.index(k.method), ablations.index(k.ablation)))


def _panels(coll: Collection) -> list[tuple]:
    """Every (model, task, scale) with at least one ok run, in table order."""
    candidates = [(m, t, s) for m in coll.models() for t in coll.tasks(m) for s in coll.scales(m)]
    return [panel for panel in candidates if _panel_keys(coll, panel)]


def _runs_of(coll: Collection, keep) -> list[dict[str, Any]]:
    return [run for key, cell in coll.cells.items() if keep(key) for run in cell.ok_runs]


# ---- Figure 1 ------------------------------------------------------------------------------------------


def figure1_scales(coll: Collection, model: str) -> list[str | int]:
    """The scales Figure 1 shows for ``model``: every scale run except high resource (the paper's low and
    medium; numeric scales too), or high alone when nothing else was run."""
    scales = coll.scales(model)
    return [s for s in scales if s not in FIGURE1_OMITS] or scales


def peft_methods(coll: Collection, model: str) -> list[str]:
    """The methods Figure 1 draws a bar for: every main-row method that is neither full tuning nor a
    reference row."""
    return [m for m in coll.methods(model, baseline_only=True) if method_family(m) not in ("full", "reference")]


def figure1(coll: Collection, out_dir: Path) -> list[Path]:
    """Run time of each PEFT method / full tuning's, per task and scale (one row of panels per model)."""
    fig, footer = figure1_figure(coll)
    return _save(fig, footer, out_dir / "figure1", ("png", "svg"))


def figure1_figure(coll: Collection) -> tuple[Figure, list[str]]:
    """Figure 1 and its footer lines, not yet saved."""
    models = coll.models()
    panels = {model: figure1_scales(coll, model) for model in models}
    ncols = max(len(scales) for scales in panels.values())
    fig = _new_figure(max(6.5, 6.5 * ncols), 3.6 * len(models) + 1.2)
    axes = fig.subplots(len(models), ncols, squeeze=False)
    omitted: list[str] = []
    for row, model in enumerate(models):
        for col in range(ncols):
            if col < len(panels[model]):
                omitted += _ratio_panel(axes[row][col], coll, model, panels[model][col])
            else:
                axes[row][col].set_visible(False)
    runs = _runs_of(coll, lambda k: k.scale in panels[k.model])
    footer = [run_notes.provenance(runs)]
    footer.append(
        f"Bars: PEFT training time to the best epoch / full tuning's (same model, task, scale; "
        f"time.train_to_best_s, {TIME_WORDING}); error bars: 95% CI "
        "propagated from both means."
    )
    footer += [note for note in [run_notes.speedups_note(runs)] if note]
    if omitted:
        footer.append("Bars omitted, no ok full-tuning run: " + "; ".join(omitted) + ".")
    return fig, footer


def _ratio_panel(ax, coll: Collection, model: str, scale: str | int) -> list[str]:
    tasks = coll.tasks(model)
    methods = peft_methods(coll, model)
    ax.set_title(f"{model}: {scale}-resource" if scale in c.SCALE_ORDER else f"{model}: {scale_label(scale)}")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="full tuning = 1")
    notes, width = [], 0.8 / max(1, len(methods))
    for t, task in enumerate(tasks):
        full = coll.cell(model, task, scale, "full").stat(c.train_to_best_seconds)
        if full is None:
            notes.append(f"{model} {task} {scale}")
            ax.text(
                t,
                0.5,
                "no full-tuning run:\nbars omitted",
                ha="center",
                va="center",
                fontsize=7,
                transform=ax.get_xaxis_transform(),
                color="#aa0000",
            )
            continue
        for m, method in enumerate(methods):
            x = t - 0.4 + width * (m + 0.5)
            stat = coll.cell(model, task, scale, method).stat(c.train_to_best_seconds)
            if stat is None:
                ax.text(
                    x,
                    0.02,
                    "missing",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    transform=ax.get_xaxis_transform(),
                    color="#666666",
                )
                continue
            ratio = stat.mean / full.mean
            error = ratio * math.hypot(_half(stat) / stat.mean, _half(full) / full.mean)
            ax.bar(
                x,
                ratio,
                width,
                color=method_color(method),
                yerr=error or None,
                capsize=2,
                label=method_label(method),
            )
    ax.set_xticks(range(len(tasks)), [task_label(t, coll) for t in tasks])
    ax.set_xlim(-0.6, max(len(tasks), 1) - 0.4)
    ax.set_ylabel("run time / full tuning's")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    return notes


# ---- validation-loss curves ---------------------------------------------------------------------------


def val_loss_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """One plot per (model, task, scale): mean validation loss per epoch of every method and variant."""
    paths = []
    for panel in _panels(coll):
        model, task, scale = panel
        keys = _panel_keys(coll, panel)
        fig = _new_figure(8, 5.2)
        ax = fig.add_subplot()
        for key in keys:
            _plot_curve(ax, coll.cells[key].ok_runs, key.method, key.ablation)
        ax.set_title(f"Validation loss per epoch: {model}, {task_label(task, coll)}, {scale_label(scale)}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation loss")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no validation history recorded", ha="center", transform=ax.transAxes)
        runs = [r for k in keys for r in coll.cells[k].ok_runs]
        footer = [run_notes.provenance(runs), "Mean over seeds; error bars: 95% CI where an epoch has several seeds."]
        paths += _save(fig, footer, out_dir / f"val_loss_{slug(model)}_{slug(task)}_{slug(scale)}")
    return paths


def _plot_curve(ax, runs: list[dict[str, Any]], method: str, ablation: str | None) -> None:
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for entry in run.get("history") or []:
            loss = c._number(entry.get("val_loss")) if isinstance(entry, dict) else None
            if loss is not None and entry.get("epoch") is not None:
                by_epoch.setdefault(int(entry["epoch"]), []).append(loss)
    if not by_epoch:
        return
    epochs = sorted(by_epoch)
    stats = [Stat.of(by_epoch[e]) for e in epochs]
    ax.errorbar(
        epochs,
        [s.mean for s in stats],
        yerr=[_half(s) for s in stats],
        capsize=2,
        color=method_color(method),
        marker=ablation_marker(ablation),
        linestyle="-" if ablation is None else "--",
        label=variant_label(method, ablation),
    )


# ---- trade-offs -----------------------------------------------------------------------------------------

TRADEOFFS = {
    "params": ("trainable parameters", c.trainable_params, 1.0),
    "time": ("training time to the best epoch (minutes)", c.train_to_best_seconds, 1 / 60),
    "memory": ("peak memory (MiB)", c.peak_bytes, 1 / 2**20),
}


def tradeoff_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """Score against trainable parameters, run time and peak memory; one panel per (model, task, scale)."""
    panels = _panels(coll)
    paths = []
    for kind, (label, quantity, factor) in TRADEOFFS.items():
        ncols = min(3, max(1, len(panels)))
        nrows = max(1, math.ceil(len(panels) / ncols))
        fig = _new_figure(5 * ncols, 3.9 * nrows + 1.4)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        notes = []
        for ax, panel in zip(axes[: len(panels)], panels, strict=True):
            notes += _tradeoff_panel(ax, coll, panel, quantity, factor, _axis_label(coll, kind, label))
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        if not panels:
            axes[0].text(0.5, 0.5, "no ok runs", ha="center", transform=axes[0].transAxes)
        footer = [
            run_notes.provenance(_runs_of(coll, lambda k: True)),
            "Ringed points joined by the black step line: Pareto front (no other run has a higher score "
            "at a lower cost). Error bars: 95% CI over seeds. Grey lines: majority (dotted) and zero-shot "
            "(dashed) scores; red crosses: cells below majority or not above zero-shot. " + " ".join(notes),
        ]
        footer += [note for note in [run_notes.speedups_note(coll.runs)] if note and kind != "params"]
        paths += _save(fig, footer, out_dir / f"tradeoff_{kind}")
    return paths


def _axis_label(coll: Collection, kind: str, label: str) -> str:
    if kind != "memory":
        return label
    kinds = sorted({str((r.get("memory") or {}).get("kind")) for r in coll.runs if r.get("status") == "ok"})
    return f"{label}, {', '.join(kinds)}"


def _cost_axis(ax, xs: list[float]) -> None:
    """A log axis with labels on its decades only when the costs span at least one; otherwise a linear
    axis with a few round ticks (a log axis inside one decade labels every minor tick, and they overlap)."""
    if xs and max(xs) >= 10 * min(xs):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.tick_params(axis="x", labelsize=7)


def _tradeoff_panel(ax, coll: Collection, panel: tuple, quantity, factor: float, xlabel: str) -> list[str]:
    model, task, scale = panel
    points, labels, notes = [], [], []
    for key in _panel_keys(coll, panel):
        cell = coll.cells[key]
        score, cost = cell.stat(c.score), cell.stat(quantity)
        if score is None or cost is None or cost.mean <= 0:
            notes.append(f"{model}/{task}/{scale}/{variant_label(key.method, key.ablation)}: not recorded.")
            continue
        x = cost.mean * factor
        ax.errorbar(
            x,
            score.mean,
            xerr=_half(cost, factor),
            yerr=_half(score),
            capsize=2,
            color=method_color(key.method),
            marker=ablation_marker(key.ablation),
            linestyle="none",
            label=variant_label(key.method, key.ablation),
        )
        references.cross_if_flagged(ax, coll, key, x, score.mean)
        points.append((x, score.mean))
        labels.append(variant_label(key.method, key.ablation))
    front = pareto_front(points)
    if front:
        xs, ys = [points[i][0] for i in front], [points[i][1] for i in front]
        ax.step(xs, ys, where="post", color="black", linewidth=0.8, alpha=0.6)
        ax.scatter(xs, ys, s=140, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
        for i in front:
            ax.annotate(labels[i], points[i], fontsize=6, xytext=(4, 4), textcoords="offset points")
    references.draw_reference_lines(ax, coll, panel)
    _cost_axis(ax, [x for x, _ in points])
    ax.set_title(f"{task_label(task, coll)} ({scale_label(scale)}), {model}", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(c.headline_metric(coll.task_info(task)), fontsize=8)
    if points:
        ax.legend(fontsize=6)
    return notes
