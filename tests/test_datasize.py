"""Data-size curves and crossovers (report/datasize.py) and the forgetting table and figure
(report/forgetting.py), on hand-made result files."""

from __future__ import annotations

import math

import pytest
from report_fixtures import make_result, write_results

from peftbench.analysis.report import build_report, datasize, render
from peftbench.analysis.report import forgetting as report_forgetting
from peftbench.analysis.report.collect import collect

pytestmark = pytest.mark.unit

SIZES = (25, 50, 100, 200, 400)
# LoRA − full per seed: full decidedly ahead at 25 and 50, nothing decided at 100, LoRA ahead at 200 and 400.
DIFFERENCES = {25: (-0.10, -0.11, -0.12), 50: (-0.05, -0.06, -0.07), 100: (0.01, -0.02, 0.005),
               200: (0.04, 0.05, 0.06), 400: (0.08, 0.09, 0.10)}


def _run(method: str, size: int, seed: int, score: float, epochs: int = 5, forgetting: float | None = None) -> dict:
    result = make_result(method=method, scale=size, seed=seed, score=score, total_s=size * 2.0, peak_bytes=2**30)
    result["max_epochs"] = epochs
    result["metrics"]["forgetting"] = forgetting
    return result


def _multi_scale(epochs_at=lambda size: 5, sign: float = 1.0, differences=DIFFERENCES) -> list[dict]:
    """The set of DIFFERENCES; ``sign=-1`` flips them: LoRA ahead at the small sizes, as the paper expects."""
    runs = []
    for size in SIZES:
        for seed, difference in enumerate(sign * d for d in differences[size]):
            full = 0.5 + 0.1 * math.log10(size) + 0.01 * seed
            runs.append(_run("full", size, seed, full, epochs_at(size), forgetting=0.20 + 0.01 * seed))
            runs.append(_run("lora", size, seed, full + difference, epochs_at(size), forgetting=0.05))
    return runs


def test_a_multi_scale_set_writes_the_curves_and_the_crossover_bracket(tmp_path):
    coll = collect(write_results(tmp_path / "results", _multi_scale()))
    (crossover,) = datasize.crossovers(coll)
    assert (crossover.method, crossover.epochs, crossover.task_type) == ("lora", 5, "classification")
    assert [s.ahead for s in crossover.comparisons] == ["full", "full", None, "peft", "peft"]
    assert (crossover.leads_at("full"), crossover.leads_at("peft")) == ([25, 50], [200, 400])
    assert crossover.bracket() == "LoRA overtakes full tuning between 50 and 200 examples"
    assert [crossover.ahead_at(n) for n in (10, 50, 100, 200, 1000)] == ["full", "full", None, "lora", "lora"]
    first = crossover.comparisons[0]  # differences -0.10, -0.11, -0.12: t = 19.05 on 2 df, five sizes
    assert first.mean_difference == pytest.approx(-0.11) and first.p == pytest.approx(0.002744, rel=1e-3)
    assert first.p_holm == pytest.approx(5 * first.p)
    assert (first.low, first.high) == pytest.approx((-0.1348, -0.0852), abs=1e-4)
    assert math.isnan(first.seeds_needed)  # decided: nothing more to plan
    undecided = crossover.comparisons[2]  # 100 examples: differences 0.01, -0.02, 0.005
    assert undecided.ahead is None and math.isinf(undecided.seeds_needed)

    written = build_report(tmp_path / "results", tmp_path / "report")
    names = {p.name for p in written["figures"] + written["tables"]}
    assert {"data_size_flan-t5-xl_ag_news.png", "crossover.md", "crossover.csv", "crossover.tex"} <= names
    table = (tmp_path / "report" / "tables" / "crossover.md").read_text()
    assert "| LoRA vs full (AG News) | 5 | 25, 50 | 200, 400 | LoRA overtakes full tuning between 50 and 200 examples |" in table
    assert "25: -0.1100 [-0.1348, -0.0852] (3, 0.0137*); 50: -0.0600 [-0.0848, -0.0352] (3, 0.0274*)" in table
    assert "100: -0.0017 [-0.0416, +0.0383] (3, 0.874; more than 1000 seeds)" in table  # undecided: what decides it
    assert 'id="crossover"' in (tmp_path / "report" / "index.html").read_text()


def test_the_papers_order_peft_ahead_at_small_sizes_is_a_crossover_too(tmp_path):
    (crossover,) = datasize.crossovers(collect(write_results(tmp_path, _multi_scale(sign=-1.0))))
    assert (crossover.leads_at("peft"), crossover.leads_at("full")) == ([25, 50], [200, 400])
    assert crossover.ordered() == ("peft", 50, "full", 200)
    assert crossover.bracket() == "full tuning overtakes LoRA between 50 and 200 examples"
    assert [crossover.ahead_at(n) for n in (10, 50, 100, 200, 1000)] == ["lora", "lora", None, "full", "full"]


def test_leads_that_interleave_are_not_ordered_and_put_no_side_ahead(tmp_path):
    interleaved = {**DIFFERENCES, 25: (0.10, 0.11, 0.12)}  # LoRA ahead at 25, 200 and 400; full tuning at 50
    (crossover,) = datasize.crossovers(collect(write_results(tmp_path, _multi_scale(differences=interleaved))))
    assert (crossover.leads_at("full"), crossover.leads_at("peft")) == ([50], [25, 200, 400])
    assert crossover.ordered() is None
    assert crossover.bracket() == "not ordered: full tuning ahead at 50, LoRA at 25, 200 and 400 examples"
    assert {crossover.ahead_at(n) for n in (25, 50, 400)} == {None}


def test_a_size_with_one_seed_is_shown_without_an_interval_and_never_decided(tmp_path):
    one_seed = [r for r in _multi_scale() if r["seed"] == 0]
    coll = collect(write_results(tmp_path / "results", one_seed))
    (crossover,) = datasize.crossovers(coll)
    assert [s.ahead for s in crossover.comparisons] == [None] * len(SIZES)
    assert crossover.bracket() == "no size decided"
    assert all(math.isnan(s.seeds_needed) for s in crossover.comparisons)  # nothing to plan from one seed
    assert datasize._row(crossover).cells[-1].text.startswith("25: -0.1000 (1, -); 50: -0.0500 (1, -)")


def test_a_size_interval_stays_within_the_range_of_an_accuracy_difference(tmp_path):
    runs = []
    for seed, lora in enumerate((0.95, 0.05, 0.90)):  # LoRA − full: +0.90, 0.00, +0.85: t's interval passes +1
        runs += [_run("full", size, seed, 0.05 if size == 100 else 0.5) for size in (50, 100)]
        runs += [_run("lora", size, seed, lora if size == 100 else 0.5) for size in (50, 100)]
    (crossover,) = datasize.crossovers(collect(write_results(tmp_path / "results", runs)))
    at_100 = crossover.comparisons[1]
    assert at_100.mean_difference == pytest.approx(0.5833, abs=1e-4)
    assert at_100.low == pytest.approx(-0.6731, abs=1e-4) and at_100.high == 1.0  # clipped as the claims clip


def test_sizes_under_different_epoch_caps_are_separate_curves(tmp_path):
    coll = collect(write_results(tmp_path, _multi_scale(epochs_at=lambda size: 10 if size <= 100 else 5)))
    (curve,) = datasize.curves(coll).values()
    assert {cap: sorted(methods["lora"]) for cap, methods in curve.items()} == {10: [25, 50, 100], 5: [200, 400]}
    crossovers = datasize.crossovers(coll)
    assert [(x.epochs, x.bracket()) for x in crossovers] == [
        (10, "full tuning ahead at 25 and 50 examples; LoRA ahead at no size measured"),
        (5, "LoRA ahead at 200 and 400 examples; full tuning ahead at no size measured")]
    # One side leading: ahead only between the sizes it leads at, no extrapolation.
    assert [crossovers[0].ahead_at(n) for n in (25, 40, 50, 100)] == ["full", "full", "full", None]
    assert "Epoch caps differ (10 epochs max at 25, 50, 100 examples; 5 epochs max at 200, 400" in \
        datasize._cap_note(curve)


def test_a_single_scale_set_writes_neither(tmp_path):
    runs = [make_result(method=m, scale="low", seed=s) for m in ("full", "lora") for s in (0, 1)]
    written = build_report(write_results(tmp_path / "results", runs), tmp_path / "report")
    names = [p.name for p in written["figures"] + written["tables"]]
    assert not [n for n in names if n.startswith(("data_size", "crossover"))]
    assert not [n for n in names if n.startswith(("forgetting", "table10"))]  # nothing recorded forgetting


def test_forgetting_table_and_figure_show_intervals_and_the_pareto_front(tmp_path):
    runs = _multi_scale()
    for run in runs:
        run["forgetting"] = {"base_loss": 3.25}
    coll = collect(write_results(tmp_path / "results", runs))
    (table,) = map(render.to_markdown, report_forgetting.forgetting_table(coll))
    # Full tuning's 0.20, 0.21, 0.22 over three seeds: mean 0.21, half-width t(0.975, 2) · 0.01 / √3 = 0.0248.
    assert "| Full Tuning (25 ex.) | +0.2100 ± 0.0248 |" in table and "| LoRA (400 ex.) | +0.0500 ± 0.0000 |" in table
    assert "flan-t5-xl: 3.2500" in table
    # At 25 examples full tuning scores higher and forgets more: both on the front.
    assert report_forgetting.pareto_methods(coll, ("flan-t5-xl", "ag_news", 25)) == ["LoRA", "Full Tuning"]
    # At 400 LoRA scores higher and forgets less: it alone.
    assert report_forgetting.pareto_methods(coll, ("flan-t5-xl", "ag_news", 400)) == ["LoRA"]
    (figure,) = report_forgetting.forgetting_figures(coll, tmp_path / "figures")
    assert figure.name == "forgetting.png" and figure.stat().st_size > 10_000


def test_the_shipped_data_size_suite_uses_one_epoch_cap_at_four_sizes():
    from peftbench.cli import SUITES_DIR
    from peftbench.config import load_sweep

    sweep = load_sweep(SUITES_DIR / "data-size-smollm2.yaml", ["data_dir=../shared/data"])
    runs = sweep.expand()
    assert len(runs) == 48 and {r.scale for r in runs} == {50, 100, 200, 400}
    assert {r.method for r in runs} == {"full", "lora", "ia3", "bitfit"}
    assert {r.train.max_epochs for r in runs} == {3} and all(r.forgetting.enabled for r in runs)
