"""The learning-rate search (recipe/lr_search.py): candidates train and validate, the run tests the best."""

from __future__ import annotations

import re

import pytest
from sweep_helpers import tiny_overrides
from test_report_html import _run_chromium, needs_chromium

from peftbench.analysis.report import build_report
from peftbench.catalog.methods import get_method
from peftbench.config import load_sweep
from peftbench.errors import UserError
from peftbench.outcomes import OUTCOMES_FILE
from peftbench.running import lr_search, results
from peftbench.running.sweep import run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_search")
    sweep = load_sweep(None, tiny_overrides(out, models=("llama-tiny-random",), methods=("full", "lora"),
                                            extra=("lr_search=[0.1,30]", "isolate_runs=false")))
    outcome = run_sweep(sweep, progress=False)
    return sweep, out, outcome


def test_candidates_run_first_and_are_never_tested(searched):
    sweep, out, outcome = searched
    runs = sweep.expand()
    assert [(r.method, r.train.lr_scale, r.train.run_test) for r in runs] == [
        ("full", 0.1, False), ("full", 30, False), ("full", 1.0, True),
        ("lora", 0.1, False), ("lora", 30, False), ("lora", 1.0, True)]
    for candidate in (r for r in runs if not r.train.run_test):
        result = results.read_result(results.result_path(out, candidate.run_id()))
        assert result["status"] == "ok" and result["metrics"]["test"] == {} and result["outcomes"] is None
        assert not (out / candidate.run_id() / OUTCOMES_FILE).exists()
        protocol_peak = get_method(candidate.method).lr.peak
        assert result["optimizer"]["lr_peak"] == pytest.approx(protocol_peak * candidate.train.lr_scale)


def test_the_run_tests_the_candidate_of_lowest_best_validation_loss(searched):
    sweep, out, _ = searched
    for run in (r for r in sweep.expand() if r.lr_search):
        result = results.read_result(results.result_path(out, run.run_id()))
        search = result["lr_search"]
        assert [c["factor"] for c in search["candidates"]] == [0.1, 30]
        best = min(search["candidates"], key=lambda c: c["best_val_loss"])
        assert search["chosen"] == best["factor"]
        assert best["best_val_loss"] == min(best["val_loss"])
        assert result["optimizer"]["lr_peak"] == pytest.approx(get_method(run.method).lr.peak * search["chosen"])
        # The chosen factor trains again from the same seed: the same validation curve as its candidate.
        assert [h["val_loss"] for h in result["history"]] == pytest.approx(best["val_loss"])
        assert result["outcomes"]["examples"] == result["data"]["test_examples"]


def test_a_run_without_its_candidates_says_so(tmp_path):
    run = load_sweep(None, tiny_overrides(tmp_path, methods=("lora",), extra=("lr_search=[0.5]",))).expand()[-1]
    with pytest.raises(UserError, match=r"candidate lr×0.5 \(.*\) is not run"):
        lr_search.choose(run, tmp_path)


def test_lr_search_is_its_own_cell_with_table_9_and_the_sensitivity_figure(searched, tmp_path):
    _, out, _ = searched
    written = build_report(out, tmp_path / "report")
    table9 = (tmp_path / "report" / "tables" / "table9.md").read_text()
    assert "LoRA (tuned LR)" in table9 and "Full Tuning (tuned LR)" in table9
    # Two candidates: whichever is chosen is the grid's edge, marked, with the note that says what it means.
    assert re.search(r"\| (0\.1↓|30↑) \|", table9) and "Note: ↑ / ↓: the chosen factor is the largest" in table9
    assert table9.count("| missing | missing |") == 2  # no fixed-rate cell: no score and no paired difference
    csv_header = (tmp_path / "report" / "tables" / "table9.csv").read_text().splitlines()[0]
    assert csv_header.endswith(",lr_over_full,lr_over_full ci95,score_tuned,score_tuned ci95,score_fixed,"
                               "tuned_minus_fixed,tuned_minus_fixed ci95_low,tuned_minus_fixed ci95_high,tuned_minus_fixed p")
    figures = [p.name for p in written["figures"]]
    assert "lr_sensitivity_llama-tiny-random.png" in figures
    table1 = (tmp_path / "report" / "tables" / "table1.md").read_text()
    assert "LoRA (tuned LR)" in table1  # a row of its own, never pooled with fixed-LR LoRA


@needs_chromium
def test_the_sensitivity_figure_renders_in_the_page(searched, tmp_path):
    _, out, _ = searched
    page = build_report(out, tmp_path / "report")["html"][0]
    dom, console = _run_chromium(page.as_uri(), tmp_path)
    assert console == []
    images = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert images and images.group(1) == images.group(2) and "lr_sensitivity" in dom
