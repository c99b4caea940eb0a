"""Tables, statistics and figures of ``peftbench report``, from hand-made result files."""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

import pytest
from report_fixtures import make_result, paper_grid, write_results

from peftbench.analysis.report import build_report, figures, mean_ci, render, run_notes, tables
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.cli import add_commands
from peftbench.errors import UserError

pytestmark = pytest.mark.unit


def _tables(results_dir: Path) -> dict[int, tables.Table]:
    return {t.number: t for t in tables.build_tables(c.collect(results_dir))}


def _csv_rows(table: tables.Table) -> dict[str, dict[str, str]]:
    return {row["row"]: row for row in csv.DictReader(io.StringIO(render.to_csv(table)))}


def _md_cells(table: tables.Table, label: str) -> list[str]:
    for line in render.to_markdown(table).splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r}")


@pytest.fixture
def paper_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path / "results", paper_grid())


# ---- statistics ----------------------------------------------------------------------------------------


def test_mean_ci_uses_student_t():
    mean, sd, half = mean_ci([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    assert half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)  # t_{0.975,2} = 4.3027


def test_mean_ci_of_one_value_has_no_interval_and_of_none_fails():
    mean, sd, half = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(sd) and math.isnan(half)
    with pytest.raises(ValueError):
        mean_ci([])


@pytest.mark.parametrize(("df", "t"), [(1, 12.7062), (4, 2.7764), (29, 2.0452), (30, 2.0423), (200, 1.9719)])
def test_t_quantile(df, t):
    assert c.t_quantile_975(df) == pytest.approx(t, rel=1e-3)


# ---- Tables 5 and 6: hand-computed -------------------------------------------------------------------------


def test_table5_is_score_per_hundred_thousand_trainable_parameters(paper_dir):
    table5 = _tables(paper_dir)[5]
    rows = _csv_rows(table5)
    # The paper's own check: (IA)3, low, AG News: 0.67 / 933,888 x 1e5 = 0.0717.
    assert float(rows["(IA)3 (low)"]["ag_news"]) == pytest.approx(0.0717430784, rel=1e-9)
    assert float(rows["BitFit (low)"]["cola"]) == pytest.approx(0.7203 / 1179648 * 1e5, rel=1e-9)
    assert float(rows["Full Tuning (low)"]["ag_news"]) == pytest.approx(3.013590087e-05, rel=1e-9)
    assert _md_cells(table5, "(IA)3 (low)") == ["0.07174", "0.07467"]
    assert _md_cells(table5, "Full Tuning (low)") == ["3.014E-05", "2.453E-05"]
    assert _md_cells(table5, "LoRA (low)") == ["0.02433", "0.0216"]


def test_table6_is_score_per_minute_of_training_to_convergence(paper_dir):
    table6 = _tables(paper_dir)[6]
    rows = _csv_rows(table6)
    assert float(rows["Full Tuning (low)"]["cola"]) == pytest.approx(0.699 / (89 / 60), rel=1e-9)  # 0.47124
    assert float(rows["BitFit (low)"]["ag_news"]) == pytest.approx(0.0193017, rel=1e-5)
    assert _md_cells(table6, "Full Tuning (low)") == ["0.04126", "0.4712"]
    assert _md_cells(table6, "(IA)3 (low)") == ["0.006558", "0.05771"]


def test_seeds_give_mean_and_95_percent_interval(tmp_path):
    runs = [
        make_result(
            method="lora",
            task="samsum",
            scale="medium",
            seed=s,
            score=0.40 + 0.01 * s,
            total_s=100.0 + 10 * s,
        )
        for s in range(3)
    ]
    by_number = _tables(write_results(tmp_path, runs))
    assert _md_cells(by_number[1], "LoRA (med.)") == ["0.4100 ± 0.0248"]
    row = _csv_rows(by_number[1])["LoRA (med.)"]
    assert (float(row["samsum"]), row["samsum n"]) == (pytest.approx(0.41), "3")
    assert float(row["samsum ci95"]) == pytest.approx(4.3027 * 0.01 / math.sqrt(3), rel=1e-3)
    # Table 6 averages the per-seed ratios: 0.40/(100/60), 0.41/(110/60), 0.42/(120/60).
    per_minute = float(_csv_rows(by_number[6])["LoRA (med.)"]["samsum"])
    assert per_minute == pytest.approx((0.24 + 0.41 / (110 / 60) + 0.21) / 3, rel=1e-9)


# ---- missing, failed and partial cells ----------------------------------------------------------------------


def test_missing_and_failed_cells_render_as_such_never_as_zero(tmp_path):
    runs = [
        make_result(method="full", task="ag_news"),
        make_result(method="lora", task="cola"),
        make_result(method="lora", task="ag_news", status="diverged"),
    ]
    by_number = _tables(write_results(tmp_path, runs))
    for number in (1, 4, 5, 6):
        assert _md_cells(by_number[number], "Full Tuning (low)")[1] == "missing"
        assert _md_cells(by_number[number], "LoRA (low)")[0] == "diverged"
        row = _csv_rows(by_number[number])["Full Tuning (low)"]
        assert row[next(k for k in row if k.startswith("cola"))] == "missing"
        assert "missing" in render.to_latex(by_number[number]) and "diverged" in render.to_latex(
            by_number[number]
        )
    assert "0.0000" not in render.to_markdown(by_number[1])


def test_partially_failed_seeds_are_flagged(tmp_path):
    runs = [
        make_result(seed=0, score=0.5),
        make_result(seed=1, score=0.7),
        make_result(seed=2, status="failed"),
    ]
    table1 = _tables(write_results(tmp_path, runs))[1]
    assert _md_cells(table1, "LoRA (low)") == ["0.6000 ± 1.2706 (2/3 ok)"]


# ---- layout of the paper's tables ---------------------------------------------------------------------------------


def test_table1_and_4_follow_the_paper_layout(paper_dir):
    by_number = _tables(paper_dir)
    markdown = render.to_markdown(by_number[1])
    assert "| PEFT/Dataset | AG News | CoLA |" in markdown
    assert [row.label for row in by_number[1].rows()] == [
        "Full Tuning (low)",
        "(IA)3 (low)",
        "LoRA (low)",
        "BitFit (low)",
    ]
    assert _md_cells(by_number[1], "LoRA (low)") == ["0.8612", "0.7644"]
    assert _md_cells(by_number[4], "(IA)3 (low)") == ["Ep. 3; 6130 (eval 613)", "Ep. 3; 725 (eval 72)"]


def test_table2_lists_ablations_in_paper_order_with_their_baselines(tmp_path):
    runs = [
        make_result(method="lora", scale="medium", ablation=a, score=0.9)
        for a in ("drop_attention", "early_layers")
    ]
    runs += [make_result(method="ia3", scale="medium", ablation="later_layers", score=0.92, trainable=466944)]
    runs += [make_result(method="lora", scale="medium", score=0.91)]
    table2 = _tables(write_results(tmp_path, runs))[2]
    assert [row.label for row in table2.rows()] == [
        "(IA)3 (all layers, med.)",
        "LoRA (all layers, med.)",
        "LoRA (select early layers, med.)",
        "(IA)3 (select later layers, med.)",
        "LoRA (drop attention, med.)",
    ]
    assert _md_cells(table2, "(IA)3 (all layers, med.)") == ["missing"]


def test_table3_counts_parameters_per_variant(tmp_path):
    runs = [
        make_result(method="ia3"),
        make_result(method="ia3", ablation="later_layers", trainable=466944),
        make_result(method="lora"),
        make_result(method="lora", method_options={"r": 2}, trainable=884736),
    ]
    table3 = _tables(write_results(tmp_path, runs))[3]
    # The base model's count, although each run's params.total also holds what its method added.
    assert _md_cells(table3, "Total Parameters (no PEFT)") == ["2,849,757,184"]
    assert _md_cells(table3, "(IA)3 (full layers/modules)") == ["933,888"]
    assert _md_cells(table3, "(IA)3 (select later layers)") == ["466,944"]
    # Options that differ from the method's default runs are a variant, not more seeds of it.
    assert _md_cells(table3, "LoRA (full layers/modules)") == ["3,538,944"]
    assert _md_cells(table3, "LoRA (r=2)") == ["884,736"]
    assert _csv_rows(table3)["(IA)3 (select later layers)"]["trainable_params"] == "466944"


def test_latex_is_plain_booktabs_with_escapes(tmp_path):
    runs = [make_result(task="my_task", seed=s, score=0.5 + 0.1 * s) for s in range(2)]
    latex = render.to_latex(_tables(write_results(tmp_path, runs))[1])
    assert latex.count(r"\toprule") == 1 and r"\bottomrule" in latex and r"\begin{tabular}{lr}" in latex
    assert r"my\_task" in latex and r"$\pm$" in latex
    body = "\n".join(
        line for line in latex.splitlines() if not line.startswith("%")
    )  # comments need no escapes
    assert "my_task" not in body.replace(r"my\_task", "")


# ---- the whole report -------------------------------------------------------------------------------------------


def test_build_report_writes_the_documented_layout(tmp_path):
    runs = paper_grid() + [make_result(method="lora", task="samsum", scale="medium")]
    results = write_results(tmp_path / "results", runs)
    written = build_report(results)
    out = results / "report"
    names = {p.relative_to(out).as_posix() for paths in written.values() for p in paths}
    assert {f"tables/table{n}.{ext}" for n in range(1, 7) for ext in ("md", "csv", "tex")} <= names
    assert {
        "figures/figure1.png",
        "figures/figure1.svg",
        "figures/tradeoff_params.png",
        "figures/tradeoff_time.png",
        "figures/tradeoff_memory.png",
        "index.html",
    } <= names
    assert "figures/val_loss_flan-t5-xl_samsum_medium.png" in names
    assert all(p.stat().st_size > 0 for paths in written.values() for p in paths)
    svg = (out / "figures" / "figure1.svg").read_text()
    assert (
        "Model: flan-t5-xl" in svg and "Hardware: Test CPU (2 CPUs, Linux-test)" in svg and "ag_news (hub)" in svg
    )
    assert "no full-tuning run" in svg  # samsum/medium has LoRA but no full tuning: bars omitted, said so


def test_report_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_report(tmp_path / "nope")
    with pytest.raises(UserError, match="no result files"):
        build_report(tmp_path)


def test_corrupt_result_files_are_skipped_with_a_warning(tmp_path):
    write_results(tmp_path, [make_result()])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{not json")
    with pytest.warns(UserWarning, match="corrupt"):
        coll = c.collect(tmp_path)
    assert len(coll.runs) == 1
    assert len(coll.skipped) == 1 and "broken" in coll.skipped[0]  # the HTML page lists what it left out


def test_pareto_front_keeps_points_nobody_beats():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9), (1.0, 0.4), (5.0, 0.9)]
    assert figures.pareto_front(points) == [0, 1, 3]


def test_method_colours_are_stable():
    assert figures.method_color("lora") == "#2ca02c"
    assert figures.method_color("my_method") == figures.method_color("my_method")


def test_report_command(tmp_path, capsys):
    results = write_results(tmp_path / "results", paper_grid())
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["report", str(results), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "index.html").is_file()
    assert "index.html" in capsys.readouterr().out


def test_a_stale_result_is_shown_as_stale_not_as_its_score(tmp_path):
    stale = make_result(method="prompt", score=0.23)  # causal prompt tuning decoded before decoding revision 2
    stale["model"]["family"] = "causal"
    fresh = make_result(method="lora", score=0.8)
    coll = c.collect(write_results(tmp_path, [stale, fresh]))
    assert coll.cell("flan-t5-xl", "ag_news", "low", "prompt").state == "stale"
    assert coll.cell("flan-t5-xl", "ag_news", "low", "prompt").ok_runs == []
    assert coll.cell("flan-t5-xl", "ag_news", "low", "lora").state == "ok"


def test_runs_with_different_speedup_settings_are_flagged(tmp_path):
    runs = [make_result(method=m) for m in ("full", "lora", "ia3")]
    runs[0]["config"]["speedups"] = {"packed": True, "varlen": True}
    runs[1]["config"]["speedups"] = {"packed": False, "varlen": False}  # runs[2]: none recorded (unknown)
    built = _tables(write_results(tmp_path, runs))
    expected = "Speed-up settings differ between these runs (all off (1 runs); all on (1 runs); unknown (1 runs))"
    for number in (4, 6):
        assert built[number].notes[0].startswith(expected)
        assert "time.train_to_best_s" in built[number].caption or "Table 4's time" in built[number].caption
        assert "evaluation" in built[number].caption
    alike = run_notes.speedups_note([make_result(method=m) for m in ("full", "lora")])
    assert alike == "Speed-up setting of these runs: unknown."  # alike: the setting is named, no warning
    mostly = make_result(method="lora")
    mostly["config"]["speedups"] = {"packed": True, "varlen": True, "compiled": False}
    assert run_notes.speedups_note([mostly]) == "Speed-up setting of these runs: all on but compiled."


def test_the_memory_table_names_the_allocator_and_warns_when_runs_differ(tmp_path):
    runs = [make_result(method=m) for m in ("full", "lora", "ia3")]
    assert run_notes.allocator_note(runs) is None  # no run records one: nothing to say
    glibc = {"name": "glibc", "settings": {}, "keeps_freed_memory": False}
    for run in runs:
        run["memory"]["allocator"] = dict(glibc)
    assert run_notes.allocator_note(runs) == "Allocator of these runs: glibc."
    runs[2]["memory"]["allocator"] = {"name": "jemalloc", "settings": {"MALLOC_CONF": "dirty_decay_ms:0"}}
    expected = ("Allocators differ between these runs (glibc (2 runs); jemalloc (MALLOC_CONF=dirty_decay_ms:0) "
                "(1 runs)): their peaks were not measured alike.")
    assert run_notes.allocator_note(runs) == expected
    assert run_notes.process_start_note(runs) is None  # none records how it started: alike
    for run, start in zip(runs, ("forkserver", "forkserver", "spawn"), strict=True):
        run["memory"]["process_start"] = start
    started = ("Run processes started differently (forkserver (2 runs); spawn (1 runs)): a forked worker's "
               "runtime reads lower than a spawned one's (memory.process_start).")
    assert run_notes.process_start_note(runs) == started
    built = _tables(write_results(tmp_path, runs))
    assert expected in built[12].notes and started in built[12].notes


def test_the_hardware_line_names_a_cpus_processor_and_matrix_instruction_set():
    cpu = {"device": "cpu", "processor": "Intel(R) Xeon(R) Processor", "instruction_set": "amx-bf16",
           "cpu_count": 2, "platform": "Linux-test"}
    assert run_notes.describe_hardware(cpu) == "cpu: Intel(R) Xeon(R) Processor, amx-bf16 (2 CPUs, Linux-test)"
    assert run_notes.describe_hardware({"device": "cpu"}) == "cpu"  # older results: nothing more recorded
    gpu = {"device": "cuda", "accelerator": "NVIDIA H100", "processor": "AMD EPYC", "cpu_count": 16}
    assert run_notes.describe_hardware(gpu) == "NVIDIA H100 (16 CPUs)"
