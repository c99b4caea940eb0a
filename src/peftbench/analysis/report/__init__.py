"""The benchmark report: Tables 1-6 and Figure 1 of Pu et al. (2023), plus curves, trade-offs and an HTML page.

Everything is computed from the result files alone (``peftbench.running.results``)::

    from peftbench.analysis.report import build_report
    written = build_report(Path("results/sweep"))   # -> {"tables": [...], "figures": [...], "html": [...]}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftbench.analysis.report.collect import mean_ci

__all__ = ["build_report", "mean_ci"]


def build_report(results_dir: Path | Sequence[Path], out_dir: Path | None = None) -> dict[str, list[Path]]:
    """Write tables, figures and ``index.html`` for ``results_dir`` (one directory, or several read as one
    set of results) under ``out_dir`` (default: the first directory's ``report/``).

    Returns the files written, by kind. Raises UserError when a directory is absent or none holds a result.
    """
    # Imported here so that importing the package (e.g. for the CLI's --help) does not load matplotlib.
    from peftbench.analysis.report import (
        claims,
        datasize,
        figures,
        forgetting,
        html,
        lr,
        memory,
        render,
        serving,
        tables,
    )
    from peftbench.analysis.report.collect import collect

    coll = collect(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else coll.directories[0] / "report"
    serving.attach_serving(coll)  # serve-bench's serving.json files
    table_list = tables.build_tables(coll) + serving.serving_tables(coll) + lr.lr_table(coll)
    table_list += forgetting.forgetting_table(coll) + datasize.crossover_table(coll)
    written = {"tables": render.write_tables(table_list, out_dir / "tables")}
    figure_dir = out_dir / "figures"
    written["figures"] = (
        figures.figure1(coll, figure_dir)
        + figures.val_loss_figures(coll, figure_dir)
        + figures.tradeoff_figures(coll, figure_dir)
        + memory.breakdown_figures(coll, figure_dir)
        + serving.latency_figures(coll, figure_dir)
        + lr.lr_sensitivity_figures(coll, figure_dir)
        + forgetting.forgetting_figures(coll, figure_dir)
        + datasize.data_size_figures(coll, figure_dir)
    )
    written["html"] = [html.write_html(coll, table_list, written["figures"], out_dir)]
    written["claims"] = [claims.write_markdown(coll, out_dir / "claims.md")]
    return written
