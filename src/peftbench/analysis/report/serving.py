"""Table 7 (serving cost) and the latency-against-score plot, from the runs' serving figures (``serving.py``).

A run's figures are its result's ``serving`` field (the recipe's serve stage) or, where ``peftbench
serve-bench`` measured it later, its ``serving.json``, which wins as the later measurement. Neither the
table nor the plot is written when no ok run has serving figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.analysis.report import collect as c
from peftbench.analysis.report import run_notes
from peftbench.analysis.report.collect import Cell, Collection
from peftbench.analysis.report.figures import _new_figure, _save, method_color, variant_label
from peftbench.analysis.report.tables import (
    Table,
    TableBlock,
    TableCell,
    TableRow,
    ablation_label,
    fmt_stat,
    method_label,
    scale_label,
    stat_cell,
    task_label,
)
from peftbench.running.serve_bench import SERVING_FILE, read_serving_file

TABLE_NUMBER = 7
TITLE = "Serving cost"


def attach_serving(coll: Collection) -> None:
    """Give each run of ``coll`` its serving figures (``serving``): its ``serving.json`` if any, else its own."""
    for run in coll.runs:
        for directory in coll.directories:  # a report may read several result directories
            path = Path(directory) / str(run.get("run_id")) / SERVING_FILE
            measured = read_serving_file(path).get("serving") if path.is_file() else None
            if measured:
                run["serving"] = measured


def _serving(r: dict[str, Any]) -> dict[str, Any] | None:
    serving = r.get("serving")
    return serving if isinstance(serving, dict) and serving.get("decoding") else None


def _decoding(r: dict[str, Any], variant: str, largest: bool) -> dict[str, Any] | None:
    """The record of ``variant`` ("base", "unmerged", "merged", "served") at the smallest or largest batch."""
    serving = _serving(r)
    if serving is None:
        return None
    if variant == "served":  # what a deployment runs: merged where the method merges
        variant = "merged" if any(d["variant"] == "merged" for d in serving["decoding"]) else "unmerged"
    records = [d for d in serving["decoding"] if d["variant"] == variant]
    if not records:
        return None
    return (max if largest else min)(records, key=lambda d: d["batch_size"])


def latency_ms(variant: str, largest: bool = False) -> c.Quantity:
    def quantity(r: dict[str, Any]) -> float | None:
        record = _decoding(r, variant, largest)
        return None if record is None else record["latency_s"] * 1e3
    return quantity


def tokens_per_s(variant: str, largest: bool = True) -> c.Quantity:
    def quantity(r: dict[str, Any]) -> float | None:
        record = _decoding(r, variant, largest)
        return None if record is None else record["tokens_per_s"]
    return quantity


def served_over_base(r: dict[str, Any]) -> float | None:
    """Batch-1 latency of the served model over the base model's: what the method adds to a request."""
    served, base = latency_ms("served")(r), latency_ms("base")(r)
    return None if served is None or not base else served / base


def _field(name: str, factor: float = 1.0) -> c.Quantity:
    def quantity(r: dict[str, Any]) -> float | None:
        serving = _serving(r)
        value = None if serving is None else serving.get(name)
        return None if value is None else float(value) * factor
    return quantity


def fmt_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _number_cell(cell: Cell, quantity: c.Quantity, fmt: Callable[[float], str]) -> TableCell:
    return stat_cell(cell, [("", quantity)], lambda stats: fmt_stat(stats[0], fmt))


def _merged_cell(cell: Cell, quantity: c.Quantity, fmt: Callable[[float], str]) -> TableCell:
    """A merged variant's number, or why there is none (the merge status: impossible, not applicable)."""
    statuses = {(_serving(r) or {}).get("merge", {}).get("status") for r in cell.ok_runs if _serving(r)}
    if statuses and "merged" not in statuses:
        text = "/".join(sorted(s.replace("_", " ") for s in statuses if s))
        return TableCell(text, "missing", None, {"": text, "ci95": "", "n": "0"})
    return _number_cell(cell, quantity, fmt)


def _check_cell(cell: Cell) -> TableCell:
    """The merge check over the cell's ok runs: the lowest agreement and whether every run passed."""
    checks = [s["check"] for r in cell.ok_runs if (s := _serving(r)) and s.get("check")]
    if not checks:
        return TableCell("–", "missing", None, {"": "", "ci95": "", "n": "0"})
    worst = min(check["agreement"] for check in checks)
    rules = sorted({check["rule"] if check["rule"] == "exact" else f"≤{check['tolerance']:.0%} off"
                    for check in checks})
    passed = all(check["passed"] for check in checks)
    text = f"{'passed' if passed else 'FAILED'}: {worst:.0%} ({', '.join(rules)}, {checks[0]['precision']})"
    return TableCell(text, "ok" if passed else "failed", worst, {"": f"{worst:.6g}", "ci95": "", "n": str(len(checks))})


def _columns(coll: Collection) -> list[tuple[str, str, Callable[[Cell], TableCell]]]:
    small, large = _batch_label(coll, largest=False), _batch_label(coll, largest=True)
    ms = lambda v: f"{v:.1f}"  # noqa: E731
    return [
        ("score", "Score", lambda cell: _number_cell(cell, c.score, lambda v: f"{v:.4f}")),
        ("adapter_bytes", "Adapter on disk", lambda cell: _number_cell(cell, _field("adapter_bytes"), fmt_bytes)),
        ("load_ms", "Load (ms)", lambda cell: _number_cell(cell, _field("load_s", 1e3), ms)),
        ("swap_ms", "Swap (ms)", lambda cell: _number_cell(cell, _field("swap_s", 1e3), lambda v: f"{v:.3g}")),
        ("latency_unmerged_ms", f"Latency {small}, unmerged (ms)",
         lambda cell: _number_cell(cell, latency_ms("unmerged"), ms)),
        ("latency_merged_ms", f"Latency {small}, merged (ms)",
         lambda cell: _merged_cell(cell, latency_ms("merged"), ms)),
        ("served_over_base", f"Served / base latency {small}",
         lambda cell: _number_cell(cell, served_over_base, lambda v: f"{v:.2f}×")),
        ("tokens_per_s_unmerged", f"Tokens/s {large}, unmerged",
         lambda cell: _number_cell(cell, tokens_per_s("unmerged"), lambda v: f"{v:.0f}")),
        ("tokens_per_s_merged", f"Tokens/s {large}, merged",
         lambda cell: _merged_cell(cell, tokens_per_s("merged"), lambda v: f"{v:.0f}")),
        ("merge_check", "Merged = unmerged", _check_cell),
    ]


def _batch_label(coll: Collection, largest: bool) -> str:
    sizes = {record["batch_size"] for r in _served_runs(coll) if (record := _decoding(r, "unmerged", largest))}
    return f"b={sizes.pop()}" if len(sizes) == 1 else ("largest batch" if largest else "smallest batch")


def _served_runs(coll: Collection) -> list[dict[str, Any]]:
    return [r for r in coll.runs if r.get("status") == "ok" and _serving(r)]


def _served_keys(coll: Collection, model: str) -> list[c.CellKey]:
    keys = [k for k, cell in coll.cells.items() if k.model == model and any(_serving(r) for r in cell.ok_runs)]
    tasks, scales = coll.tasks(model), c.order_scales(k.scale for k in keys)
    methods, ablations = c.order_methods(k.method for k in keys), c.order_ablations(k.ablation for k in keys)
    return sorted(keys, key=lambda k: (tasks.index(k.task), scales.index(k.scale), methods.index(k.method),
                                       ablations.index(k.ablation)))


def serving_tables(coll: Collection) -> list[Table]:
    """Table 7, one row per served (task, scale, method, ablation) of each model; none without figures."""
    runs = _served_runs(coll)
    if not runs:
        return []
    columns = _columns(coll)
    blocks = []
    for model in coll.models():
        groups: dict[tuple, list[TableRow]] = {}
        for key in _served_keys(coll, model):
            cell = coll.cells[key]
            label = f"{method_label(key.method)} ({task_label(key.task)}, {scale_label(key.scale)}"
            label += f", {ablation_label(key.ablation)})" if key.ablation else ")"
            row = TableRow(label, key.method, str(key.scale), key.ablation or "", [build(cell) for *_, build in columns])
            groups.setdefault((key.task, key.scale), []).append(row)
        if groups:
            blocks.append(TableBlock(model, list(groups.values())))
    return [Table(TABLE_NUMBER, TITLE, _caption(runs), "Method (task, scale)",
                  [(name, label) for name, label, _ in columns], blocks, _notes(runs))]


def _caption(runs: list[dict[str, Any]]) -> str:
    first = runs[0]["serving"]
    work = (f"One forward pass over each of {first['requests']} test prompts (encoder classifiers)"
            if all(_family(r) == "encoder" for r in runs) else
            f"Greedy decoding of {first['requests']} test prompts, each {first['new_tokens']} new tokens (end of "
            "sequence ignored, so variants decode alike)")
    return (f"{work}; latency is per batch. Load: the adapter onto a "
            "base model in memory (full tuning: the whole model). Swap: one switch between two adapters of one "
            "base (full tuning: loading another model's weights). Served: merged where the method merges."
            + (" An encoder classifier answers a request with one forward pass and one class: its latency is "
               "that pass, its tokens/s are requests/s." if any(_family(r) == "encoder" for r in runs) else ""))


def _family(r: dict[str, Any]) -> str | None:
    return (r.get("model") or {}).get("family")


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    settings = sorted({f"{r['serving']['precision']} on {r['serving']['device']} "
                       f"({r['serving'].get('threads')} threads)" for r in runs})
    return [f"Measured in {'; '.join(settings)}. Merge check: the merged model's predictions against the "
            "unmerged one's, request by request, lowest agreement over seeds (exact in fp32; bf16 within "
            "its stated tolerance). Prompt tuning cannot merge: its virtual tokens are paid at every request.",
            "Several seeds: mean ± 95% CI (t-distribution); one seed: the value alone."]


def latency_figures(coll: Collection, out_dir: Path) -> list[Path]:
    """Score against the smallest batch's latency, one panel per (model, task, scale) with serving figures:
    filled markers as served, hollow ones unmerged where the method merges (joined to its merged point by a
    line); the dashed line is the base model's latency."""
    panels = sorted({(k.model, k.task, k.scale) for m in coll.models() for k in _served_keys(coll, m)},
                    key=lambda p: (p[0], coll.tasks().index(p[1]), str(p[2])))
    if not panels:
        return []
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(5 * ncols, 3.9 * nrows + 1.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        _latency_panel(ax, coll, panel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    footer = [run_notes.provenance(_served_runs(coll)), f"Latency at {_batch_label(coll, largest=False)}, mean over seeds; "
              "filled: as served, hollow: unmerged. " + _notes(_served_runs(coll))[0]]
    return _save(fig, footer, out_dir / "serving_latency")


def _latency_panel(ax, coll: Collection, panel: tuple) -> None:
    model, task, scale = panel
    bases = []
    for key in [k for k in _served_keys(coll, model) if (k.task, k.scale) == (task, scale)]:
        cell = coll.cells[key]
        score, unmerged, merged = (cell.stat(q) for q in (c.score, latency_ms("unmerged"), latency_ms("merged")))
        base = cell.stat(latency_ms("base"))
        if base is not None:
            bases.append(base.mean)
        if score is None or unmerged is None:
            continue
        color, label = method_color(key.method), variant_label(key.method, key.ablation)
        if merged is None:  # served as trained: prompt tuning, full tuning
            ax.plot([unmerged.mean], [score.mean], marker="o", color=color, linestyle="none", label=label)
        else:
            ax.plot([unmerged.mean], [score.mean], marker="o", markerfacecolor="none", color=color,
                    linestyle="none", label=f"{label}, unmerged")
            ax.plot([unmerged.mean, merged.mean], [score.mean, score.mean], color=color, linewidth=0.8)
            ax.plot([merged.mean], [score.mean], marker="o", color=color, linestyle="none", label=f"{label}, merged")
    if bases:
        ax.axvline(sum(bases) / len(bases), color="black", linestyle="--", linewidth=0.8, label="base model")
    ax.set_title(f"{task_label(task)} ({scale_label(scale)}), {model}", fontsize=9)
    ax.set_xlabel("latency per batch of requests (ms)", fontsize=8)
    ax.set_ylabel(c.headline_metric(coll.task_info(task)), fontsize=8)
    ax.legend(fontsize=6)
