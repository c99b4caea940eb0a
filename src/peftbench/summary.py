"""The results table printed at the end of ``peftbench run``: one row per cell, seeds aggregated."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from peftbench import results
from peftbench.config import RunConfig

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (df = number of seeds - 1).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t95(df: int) -> float:
    """Two-sided 95% Student t quantile for ``df`` degrees of freedom (Cornish-Fisher beyond the table)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)  # within 0.003 of t for df > 30


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation, half-width of the 95% t interval); sd and CI are 0 for one value."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, 0.0
    sd = statistics.stdev(values)
    return mean, sd, t95(n - 1) * sd / math.sqrt(n)


def _cell_key(run: RunConfig) -> tuple:
    return (run.model, run.task, str(run.scale), run.method, run.ablation or "")


def results_table(runs: list[RunConfig], results_dir: Path) -> str:
    """A plain-text table of the sweep's cells, seeds aggregated.

    One seed per cell: the score. Several: the mean ± sample standard deviation over the cell's ok seeds
    and the 95% Student t confidence interval of the mean, [mean - t·sd/√n, mean + t·sd/√n].
    """
    cells: dict[tuple, list[dict | None]] = {}
    for run in runs:
        path = results.result_path(results_dir, run.run_id())
        try:
            result = results.read_result(path) if path.exists() else None
        except results.CorruptResult:
            result = None
        cells.setdefault(_cell_key(run), []).append(result)
    several = any(len(found) > 1 for found in cells.values())
    score_columns = ["score (mean ± sd)", "95% CI"] if several else ["score"]
    header = ["model", "task", "scale", "method", "ablation", "seeds", "metric", *score_columns,
              "trainable", "epochs", "time_s"]
    rows = [header]
    for key, found in cells.items():
        ok = [r for r in found if r and r["status"] == "ok"]
        rows.append([*key, f"{len(ok)}/{len(found)}", *_cell_figures(ok, found, several)])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def score_text(scores: list[float], several: bool) -> list[str]:
    """The score cell(s): "0.7000", or "0.7000 ± 0.0100" and "[0.6752, 0.7248]" when seeds are aggregated."""
    mean, sd, half = mean_ci(scores)
    if not several:
        return [f"{mean:.4f}"]
    if len(scores) < 2:
        return [f"{mean:.4f}", "-"]  # one seed: no spread to show
    return [f"{mean:.4f} ± {sd:.4f}", f"[{mean - half:.4f}, {mean + half:.4f}]"]


def _cell_figures(ok: list[dict], found: list[dict | None], several: bool) -> list[str]:
    if not ok:
        statuses = sorted({r["status"] for r in found if r} or {"missing"})
        return ["-", "/".join(statuses), *(["-"] if several else []), "-", "-", "-"]
    scores = score_text([r["metrics"]["score"] for r in ok], several)
    epochs = statistics.fmean(r["epochs"] for r in ok)
    seconds = statistics.fmean(r["time"]["total_s"] for r in ok)
    return [ok[0]["task"]["metric"], *scores, f"{ok[0]['params']['trainable']:,}", f"{epochs:g}", f"{seconds:.1f}"]
