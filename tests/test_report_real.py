"""The report on result sets the tool makes itself: the quickstart suite's shape (a numeric scale, a method
option, synthetic data) and a user task from local ``data_files``, trained on the tiny models (seconds).

Hand-made results (report_fixtures.py) pin the arithmetic; these pin that what a user's own sweep writes
reaches every table, Figure 1, every footer and a well-formed page.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sweep_helpers import tiny_overrides
from task_helpers import tiny_task_yaml

from peftbench.analysis.report import build_report, tables
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.figures import figure1_figure
from peftbench.catalog.methods import method_label
from peftbench.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

QUICKSTART_METHODS = ("full", "lora", "ia3", "prompt", "bitfit")
USER_METHODS = ("full", "lora")


def _sweep(results_dir: Path, methods, tasks: str, *extra: str) -> None:
    overrides = tiny_overrides(results_dir, models=("llama-tiny-random",), methods=methods, epochs=1,
                               extra=(tasks, *extra))
    assert main(["run", "-q", *overrides]) == 0


@pytest.fixture(scope="module")
def result_sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("real")
    quickstart = root / "quickstart"  # the quickstart's shape: numeric scale, prompt option, synthetic data
    _sweep(quickstart, QUICKSTART_METHODS, "tasks=[synthetic_classification,synthetic_data_to_text]",
           "method_options={prompt: {num_virtual_tokens: 4}}")
    data = root / "data"
    data.mkdir()
    rows = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(24)]
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "task.yaml").write_text(tiny_task_yaml())
    user = root / "user"
    _sweep(user, USER_METHODS, f"tasks=[{data / 'task.yaml'}]")
    return quickstart, user


def test_results_record_where_their_data_came_from(result_sets):
    quickstart, user = result_sets
    coll = c.collect([quickstart, user])
    sources = {run["config"]["task"].split("/")[-1]: run["data"]["source"] for run in coll.runs}
    assert sources["synthetic_classification"] == "synthetic"
    assert sources["task.yaml"] == str(user.parent / "data")


def test_every_method_appears_in_tables_1_4_5_6(result_sets):
    coll = c.collect(list(result_sets))
    built = {t.number: t for t in tables.build_tables(coll)}
    for number in (1, 4, 5, 6):
        labels = {row.label for row in built[number].rows()}
        expected = {f"{method_label(m)} (8 ex.)" for m in QUICKSTART_METHODS}
        assert labels == expected, number  # one row per method: options do not make prompt tuning a variant
        for row in built[number].rows():  # the user task's column is filled for the methods it ran
            states = [cell.state for cell in row.cells]
            assert states.count("ok") == (3 if row.method in USER_METHODS else 2), (number, row.label, states)
    assert not built[2].rows(), "no ablation was run: Table 2 is empty"
    assert [label for _, label in built[1].columns][-1] == "tiny_yes_no"  # the name inside the task's YAML
    assert "Prompt Tune (llama-tiny-random): num_virtual_tokens=4" in " ".join(built[1].notes)


def test_table3_total_is_the_base_models_count(result_sets):
    coll = c.collect(list(result_sets))
    table3 = {t.number: t for t in tables.build_tables(coll)}[3]
    total = table3.rows()[0]
    full = coll.cell("llama-tiny-random", "synthetic_classification", 8, "full").ok_runs[0]
    assert total.cells[0].text == f"{full['params']['trainable']:,}"  # one number, not a range
    assert all(run["params"]["base"] == full["params"]["trainable"] for run in coll.runs)


def test_figure1_has_a_bar_per_peft_method_and_a_full_footer(result_sets):
    coll = c.collect(list(result_sets))
    fig, footer = figure1_figure(coll)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1  # one model, one scale (8 examples)
    bars = {container.get_label() for container in axes[0].containers}
    assert bars == {method_label(m) for m in QUICKSTART_METHODS if m != "full"}
    assert not any("omitted" in line for line in footer)
    provenance = footer[0]
    assert provenance.startswith("Model: llama-tiny-random | Data: synthetic_classification (synthetic)")
    assert f"tiny_yes_no ({result_sets[1].parent / 'data'})" in provenance  # the user task's own folder
    assert "Hardware: unknown" not in provenance and "cpu" in provenance.lower()


def test_report_of_two_directories_writes_well_formed_html(result_sets, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, result_sets), "--out", str(out)]) == 0
    assert "open " in capsys.readouterr().out
    page = (out / "index.html").read_text()
    attributes = _attribute_names(page)
    malformed = {name for name in attributes if not re.fullmatch(r"[a-z]+(-[a-z]+)*", name)}
    assert not malformed, malformed
    assert '<tr class="group-start">' in page
    for directory in result_sets:
        assert str(directory) in page
    for svg in ("figure1.svg",):
        text = (out / "figures" / svg).read_text()
        assert "Model: llama-tiny-random" in text and "(synthetic)" in text and "Hardware: unknown" not in text


def test_build_report_reads_one_directory_alone(result_sets):
    written = build_report(result_sets[0])
    assert written["html"][0] == result_sets[0] / "report" / "index.html"


def _attribute_names(page: str) -> set[str]:
    names: set[str] = set()

    class Attributes(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names.update(name for name, _ in attrs)

    parser = Attributes()
    parser.feed(page)
    parser.close()
    return names
