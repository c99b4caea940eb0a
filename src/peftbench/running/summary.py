"""The results table printed at the end of ``peftbench run``: one row per cell, seeds aggregated."""

from __future__ import annotations

import statistics
from pathlib import Path

from peftbench.analysis.stats import mean_ci
from peftbench.config import RunConfig
from peftbench.running import results


def _cell_key(run: RunConfig) -> tuple:
    return (run.model, run.task, str(run.scale), run.method, run.ablation or "")


def results_table(runs: list[RunConfig], results_dir: Path) -> str:
    """A plain-text table of the sweep's cells, seeds aggregated.

    One seed per cell: the score. Several: the mean ± sample standard deviation over the cell's ok seeds
    and the 95% Student t confidence interval of the mean, [mean - t·sd/√n, mean + t·sd/√n]. ``time_s`` is
    the run's time without the model's load (``load_s``); ``peak_MiB`` its peak memory (``memory.py``).
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
    ranked = any(r and "rank_accuracy" in r.get("metrics", {}).get("test", {}) for f in cells.values() for r in f)
    score_columns = ["score (mean ± sd)", "95% CI"] if several else ["score"]
    header = ["model", "task", "scale", "method", "ablation", "seeds", "metric", *score_columns,
              *(["rank acc"] if ranked else []), "trainable", "epochs", "time_s", "load_s", "peak_MiB"]
    rows = [header]
    for key, found in cells.items():
        ok = [r for r in found if r and r["status"] == "ok"]
        figures = _cell_figures(ok, found, several)
        if ranked:  # after the score column(s): the mean rank accuracy over ok seeds (train.rank_classification)
            figures.insert(len(score_columns) + 1, _rank_text(ok))
        rows.append([*key, f"{len(ok)}/{len(found)}", *figures])
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
        return ["-", "/".join(statuses), *(["-"] if several else []), "-", "-", "-", "-", "-"]
    scores = score_text([r["metrics"]["score"] for r in ok], several)
    epochs = statistics.fmean(r["epochs"] for r in ok)
    seconds = statistics.fmean(r["time"]["total_s"] for r in ok)
    return [ok[0]["task"]["metric"], *scores, f"{ok[0]['params']['trainable']:,}", f"{epochs:g}", f"{seconds:.1f}",
            _mean_text([r["time"].get("load_s") for r in ok], "{:.1f}"),
            _mean_text([(r.get("memory") or {}).get("peak_bytes") for r in ok], "{:,.0f}", 1 / 2**20)]


def _mean_text(values: list, form: str, scale: float = 1.0) -> str:
    """The mean of the values every ok seed reports, formatted; "-" when any lacks one (older results)."""
    if not values or any(v is None for v in values):
        return "-"
    return form.format(statistics.fmean(values) * scale)


def _rank_text(ok: list[dict]) -> str:
    """The mean ``rank_accuracy`` of the ok seeds that report one, or "-"."""
    values = [r["metrics"]["test"]["rank_accuracy"] for r in ok if "rank_accuracy" in r["metrics"].get("test", {})]
    return f"{statistics.fmean(values):.4f}" if values else "-"


def failure_lines(outcome, results_dir: Path) -> list[str]:
    """Why each run of ``outcome`` (a ``sweep.SweepOutcome``) is not ok, one short line each (the result file
    has the rest, a traceback included)."""
    lines = []
    for run_id in outcome.failed:
        if run_id in outcome.unrecorded:
            lines.append(f"peftbench: failed: {run_id}: {outcome.unrecorded[run_id]}")
            continue
        try:
            result = results.read_result(results.result_path(results_dir, run_id))
        except results.CorruptResult as exc:
            lines.append(f"peftbench: {run_id}: {exc}")
            continue
        error = result.get("error") or {}
        message = (str(error.get("message") or "").splitlines() or [""])[0]
        lines.append(f"peftbench: {result['status']}: {run_id}: {error.get('type', '?')}: {message}")
    return lines
