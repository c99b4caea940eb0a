"""The results table printed at the end of ``peftbench run``: one row per cell, seeds aggregated."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from peftbench import results
from peftbench.config import RunConfig

# Two-sided 95% Student t quantiles for n - 1 degrees of freedom (n ≤ 31); the normal 1.96 beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation, half-width of the 95% t interval); sd and CI are 0 for one value."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, 0.0
    sd = statistics.stdev(values)
    t = _T95[n - 2] if n - 2 < len(_T95) else 1.96
    return mean, sd, t * sd / math.sqrt(n)


def _cell_key(run: RunConfig) -> tuple:
    return (run.model, run.task, str(run.scale), run.method, run.ablation or "")


def results_table(runs: list[RunConfig], results_dir: Path) -> str:
    """A plain-text table of the sweep's cells: score (mean ± 95% CI over seeds), parameters, time."""
    cells: dict[tuple, list[dict | None]] = {}
    for run in runs:
        path = results.result_path(results_dir, run.run_id())
        try:
            result = results.read_result(path) if path.exists() else None
        except results.CorruptResult:
            result = None
        cells.setdefault(_cell_key(run), []).append(result)
    header = ["model", "task", "scale", "method", "ablation", "seeds", "score", "trainable", "epochs", "time_s"]
    rows = [header]
    for key, found in cells.items():
        ok = [r for r in found if r and r["status"] == "ok"]
        rows.append([*key, f"{len(ok)}/{len(found)}", *_cell_figures(ok, found)])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell_figures(ok: list[dict], found: list[dict | None]) -> list[str]:
    if not ok:
        statuses = sorted({r["status"] for r in found if r} or {"missing"})
        return ["/".join(statuses), "-", "-", "-"]
    metric = ok[0]["task"]["metric"]
    mean, _, half = mean_ci([r["metrics"]["score"] for r in ok])
    score_text = f"{mean:.4f} {metric}" if len(ok) == 1 else f"{mean:.4f} ± {half:.4f} {metric} (95% CI)"
    epochs = statistics.fmean(r["epochs"] for r in ok)
    seconds = statistics.fmean(r["time"]["total_s"] for r in ok)
    return [score_text, f"{ok[0]['params']['trainable']:,}", f"{epochs:g}", f"{seconds:.1f}"]
