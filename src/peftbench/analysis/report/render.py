"""The tables of ``tables.py`` as Markdown, CSV (values, 95% CI half-widths, seed counts) and LaTeX."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from peftbench.analysis.report.tables import Table, csv_column_name


def to_markdown(table: Table) -> str:
    lines = [f"## Table {table.number}: {table.title}", "", table.caption, ""]
    header = [table.corner] + [label for _, label in table.columns]
    for block in table.blocks:
        lines += [
            f"**Model: {block.model}**",
            "",
            _md_row(header),
            _md_row(["---"] + ["---:"] * len(table.columns)),
        ]
        lines += [
            _md_row([row.label] + [cell.text for cell in row.cells])
            for group in block.groups
            for row in group
        ]
        lines.append("")
    lines += [f"Note: {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def to_csv(table: Table) -> str:
    """One line per row; per column the value, its 95% CI half-width and the number of ok seeds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # Each column's suffixes over every row, in order of first appearance (a missing cell may have fewer).
    suffixes: dict[str, dict[str, None]] = {key: {} for key, _ in table.columns}
    for row in table.rows():
        for (key, _), cell in zip(table.columns, row.cells, strict=True):
            suffixes[key].update(dict.fromkeys(cell.csv))
    value_columns = [(key, suffix) for key, _ in table.columns for suffix in suffixes[key] or {"": None}]
    writer.writerow(
        ["model", "row", "method", "scale", "ablation"] + [csv_column_name(k, s) for k, s in value_columns]
    )
    index = {key: i for i, (key, _) in enumerate(table.columns)}
    for block in table.blocks:
        for group in block.groups:
            for row in group:
                values = [row.cells[index[key]].csv.get(suffix, "") for key, suffix in value_columns]
                writer.writerow([block.model, row.label, row.method, row.scale, row.ablation] + values)
    return buffer.getvalue()


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "±": r"$\pm$",
    "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A plain booktabs ``tabular`` (needs \\usepackage{booktabs}); title and notes as comments."""
    width = len(table.columns) + 1
    lines = [f"% Table {table.number}: {table.title}. {table.caption}"]
    lines += [f"% {note}" for note in table.notes]
    lines += [f"\\begin{{tabular}}{{l{'r' * len(table.columns)}}}", r"\toprule"]
    header = [table.corner] + [label for _, label in table.columns]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    for block in table.blocks:
        lines += [r"\midrule", f"\\multicolumn{{{width}}}{{l}}{{Model: {latex_escape(block.model)}}} \\\\"]
        for group in block.groups:
            lines.append(r"\midrule")
            for row in group:
                lines.append(
                    " & ".join(latex_escape(x) for x in [row.label] + [c.text for c in row.cells]) + r" \\"
                )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: list[Table], out_dir: Path) -> list[Path]:
    """``out_dir/tableN.{md,csv,tex}`` for every table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for suffix, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
            path = out_dir / f"{table.name}.{suffix}"
            path.write_text(render(table), encoding="utf-8")
            written.append(path)
    return written
