"""One self-contained ``index.html``: every table (sortable), every figure (embedded), every run's details.

The page makes no request of any kind: images are base64 data URIs (palette copies of figures/), the style
and the sorting script are inline, and a Content-Security-Policy forbids anything else, so it opens from
disk with no server and no network. A small script also records on ``<body>`` how many tables became sortable and how many images
decoded, which the browser test reads back.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from peftbench.analysis.report import claims, references, run_notes
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.collect import Collection
from peftbench.analysis.report.tables import Table

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.meta, .note, figcaption { color: #555; font-size: 12px; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: .4em .7em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .2em 0; }
th, td { border-bottom: 1px solid #e2e2e2; padding: .25em .7em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.group-start td { border-top: 2px solid #999; }
td.nodata { color: #a33; font-style: italic; } td.partial { color: #a60; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
details pre { text-align: left; font-size: 11px; background: #f8f8f8; padding: .5em; max-width: 60em; overflow: auto; }
nav a { margin-right: 1em; }
"""

_SCRIPT = """
(function () {
  'use strict';
  function sortKey(cell) {
    var raw = cell.getAttribute('data-sort');
    if (raw !== null && raw !== '') { return { isNumber: true, value: parseFloat(raw) }; }
    return { isNumber: false, value: cell.textContent.trim().toLowerCase() };
  }
  function sortTable(table, column, header) {
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      var x = sortKey(a.cells[column]), y = sortKey(b.cells[column]);
      if (x.isNumber !== y.isNumber) { return x.isNumber ? -1 : 1; }  /* cells without a number stay last */
      var order = x.value < y.value ? -1 : (x.value > y.value ? 1 : 0);
      return ascending ? order : -order;
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    rows.forEach(function (row) { row.classList.remove('group-start'); table.tBodies[0].appendChild(row); });
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.title = 'click to sort';
      header.addEventListener('click', function () { sortTable(table, column, header); });
    });
  });
  document.body.setAttribute('data-sortable-tables', String(tables.length));
  window.addEventListener('load', function () {
    var images = document.querySelectorAll('img');
    var decoded = Array.prototype.filter.call(images, function (img) { return img.complete && img.naturalWidth > 0; });
    document.body.setAttribute('data-images', decoded.length + '/' + images.length);
  });
})();
"""


def _attrs(**attributes: Any) -> str:
    """HTML attributes from keywords: ``class_`` is ``class`` (a Python keyword), ``data_sort`` is
    ``data-sort``; None leaves the attribute out."""
    return "".join(
        f' {name.rstrip("_").replace("_", "-")}="{escape(str(value))}"'
        for name, value in attributes.items()
        if value is not None
    )


def table_html(table: Table) -> str:
    parts = [
        f'<h2 id="{table.name}">Table {table.number}: {escape(table.title)}</h2>',
        f"<p>{escape(table.caption)}</p>",
    ]
    header = "".join(
        f"<th>{escape(label)}</th>" for label in [table.corner] + [lab for _, lab in table.columns]
    )
    for block in table.blocks:
        parts.append(f'<table class="sortable" data-table="{table.name}">')
        parts.append(
            f"<caption>Model: {escape(block.model)}</caption><thead><tr>{header}</tr></thead><tbody>"
        )
        for group in block.groups:
            for index, row in enumerate(group):
                parts.append(
                    f"<tr{_attrs(class_='group-start' if index == 0 else None)}><td>{escape(row.label)}</td>"
                )
                for cell in row.cells:
                    css = {"ok": None, "partial": "partial"}.get(cell.state, "nodata")
                    parts.append(
                        f"<td{_attrs(class_=css, data_sort=cell.sort_value)}>{escape(cell.text)}</td>"
                    )
                parts.append("</tr>")
        parts.append("</tbody></table>")
    parts += [f'<p class="note">{escape(note)}</p>' for note in table.notes]
    links = " · ".join(f'<a href="tables/{table.name}.{ext}">{ext}</a>' for ext in ("md", "csv", "tex"))
    parts.append(f'<p class="note">Files: {links}</p>')
    return "\n".join(parts)


def _page_png(path: Path) -> bytes:
    """The figure as the page embeds it: a 256-colour palette PNG, about a third of the file's bytes, so a
    report of many panels stays a page that opens quickly. The file in figures/ keeps full colour for print.
    Matplotlib draws on an opaque background, so dropping the alpha channel loses nothing."""
    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def figure_html(path: Path) -> str:
    data = base64.b64encode(_page_png(path)).decode("ascii")
    name = escape(path.stem)
    return (
        f'<figure id="fig-{name}"><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name} (figures/{escape(path.name)})</figcaption></figure>"
    )


_RUN_COLUMNS = (
    "run",
    "model",
    "task",
    "scale",
    "method",
    "ablation",
    "seed",
    "status",
    "score",
    "total s",
    "trainable",
    "peak MiB",
    "config & environment",
)


def _run_row(coll: Collection, run: dict[str, Any]) -> str:
    key = coll.key(run)
    numbers = [c.score(run), c.total_seconds(run), c.trainable_params(run), c.peak_bytes(run)]
    shown = [
        f"{numbers[0]:.4f}" if numbers[0] is not None else "",
        f"{numbers[1]:.1f}" if numbers[1] else "",
        f"{numbers[2]:,.0f}" if numbers[2] else "",
        f"{numbers[3] / 2**20:.0f}" if numbers[3] else "",
    ]
    cells = [
        f"<td>{escape(str(value))}</td>"
        for value in (
            run.get("run_id"),
            key.model,
            key.task,
            key.scale,
            key.method,
            key.ablation or "",
            (run.get("config") or {}).get("seed", run.get("seed")),
            run.get("status"),
        )
    ]
    cells += [f"<td{_attrs(data_sort=n)}>{escape(text)}</td>" for n, text in zip(numbers, shown, strict=True)]
    cells.append(
        f"<td><details><summary>show</summary><pre>{escape(run_notes.run_details(run))}</pre></details></td>"
    )
    return "<tr>" + "".join(cells) + "</tr>"


def runs_html(coll: Collection) -> str:
    header = "".join(f"<th>{escape(name)}</th>" for name in _RUN_COLUMNS)
    rows = "\n".join(_run_row(coll, run) for run in coll.runs)
    return (
        f'<h2 id="runs">Runs</h2><p class="note">Every result file read; only status "ok" feeds the tables.'
        f' Click "show" for a run\'s config, versions and hardware.</p>'
        f'<table class="sortable" data-table="runs"><thead><tr>{header}</tr></thead><tbody>\n{rows}\n'
        "</tbody></table>"
    )


def write_html(coll: Collection, tables: list[Table], figures: list[Path], out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` with the tables, the PNG figures embedded, and the runs."""
    ok = sum(1 for run in coll.runs if run.get("status") == "ok")
    nav = " ".join(f'<a href="#{t.name}">Table {t.number}</a>' for t in tables)
    nav += ' <a href="#flags">Reference rows</a> <a href="#claims">Claims</a>'
    directories = ", ".join(str(d) for d in coll.directories)
    warnings = [note for note in [run_notes.speedups_note(coll.runs)] if note]
    body = [
        "<h1>peftbench report</h1>",
        f'<p class="meta">{len(coll.runs)} result files in {escape(directories)} ({ok} ok); '
        f"generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.<br>{escape(run_notes.provenance(coll.runs))}</p>",
        *(f'<p class="warning">{escape(note)}</p>' for note in warnings),
        *(f'<p class="note">Skipped: {escape(message)}</p>' for message in coll.skipped),
        f'<nav>{nav} <a href="#figures">Figures</a> <a href="#runs">Runs</a></nav>',
        *(table_html(table) for table in tables),
        references.flags_html(coll),
        claims.claims_html(coll),
        '<h2 id="figures">Figures</h2>',
        *(figure_html(path) for path in figures if path.suffix == ".png"),
        runs_html(coll),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>peftbench report</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
