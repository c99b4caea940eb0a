"""The benchmark report: Tables 1-6 and Figure 1 of Pu et al. (2023), plus curves, trade-offs and an HTML page.

Everything is computed from the result files alone (``peftbench.results``)::

    from peftbench.report import build_report
    written = build_report(Path("results/sweep"))   # -> {"tables": [...], "figures": [...], "html": [...]}
"""

from __future__ import annotations

from pathlib import Path

from peftbench.report.collect import mean_ci

__all__ = ["build_report", "mean_ci"]


def build_report(results_dir: Path, out_dir: Path | None = None) -> dict[str, list[Path]]:
    """Write tables, figures and ``index.html`` for ``results_dir`` under ``out_dir`` (default: its ``report/``).

    Returns the files written, by kind. Raises UserError when ``results_dir`` is absent or holds no result.
    """
    # Imported here so that importing the package (e.g. for the CLI's --help) does not load matplotlib.
    from peftbench.report import figures, html, render, serving, tables
    from peftbench.report.collect import collect

    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    coll = collect(results_dir)
    serving.attach_serving(coll)  # serve-bench's serving.json files
    table_list = tables.build_tables(coll) + serving.serving_tables(coll)
    written = {"tables": render.write_tables(table_list, out_dir / "tables")}
    figure_dir = out_dir / "figures"
    written["figures"] = (
        figures.figure1(coll, figure_dir)
        + figures.val_loss_figures(coll, figure_dir)
        + figures.tradeoff_figures(coll, figure_dir)
        + serving.latency_figures(coll, figure_dir)
    )
    written["html"] = [html.write_html(coll, table_list, written["figures"], out_dir)]
    return written
