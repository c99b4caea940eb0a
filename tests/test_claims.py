"""The report read against reference rows (flags) and the paper's claims as checks, on hand-made results."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import pytest
from report_fixtures import make_result, write_results

from peftbench.analysis.report import build_report, render, tables
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.claims import FAILS, HOLDS, INCONCLUSIVE, check_claims, collect_many, compare
from peftbench.analysis.report.cli import add_commands
from peftbench.analysis.report.collect import Stat
from peftbench.analysis.report.references import FLAG_NOTE, flags

MODEL = "smollm2-135m-q4"
Cells = dict[tuple, dict[str, list]]


def _results(cells: Cells, seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """One result per seed of each (method, task, scale, ablation) cell, its fields taken seed by seed."""
    found = []
    for (method, task, scale, ablation), fields in cells.items():
        for i, seed in enumerate(seeds):
            result = make_result(model=MODEL, method=method, task=task, scale=scale, seed=seed, ablation=ablation,
                                 **{name: values[i] for name, values in fields.items()})
            if method in ("majority", "zero_shot", "in_context"):
                result["method"] = {"name": method, "kind": "reference"}
                result["params"]["trainable"] = 0
            found.append(result)
    return found


def _verdict(tmp_path: Path, cells: Cells, claim: str, seeds=(0, 1, 2)):
    results = write_results(tmp_path / "results", _results(cells, seeds))
    return next(v for v in check_claims(c.collect(results)) if v.claim.id == claim)


# ---- flags ---------------------------------------------------------------------------------------------

COLA = {
    ("majority", "cola", "low", None): {"score": [0.70, 0.72, 0.74]},
    ("zero_shot", "cola", "low", None): {"score": [0.50, 0.52, 0.54]},
    ("full", "cola", "low", None): {"score": [0.80, 0.81, 0.82]},  # above both: no flag
    ("lora", "cola", "low", None): {"score": [0.60, 0.62, 0.64]},  # below majority, above zero-shot
    ("prompt", "cola", "low", None): {"score": [0.30, 0.52, 0.74]},  # below majority, overlaps zero-shot
}


def test_a_cell_below_majority_or_not_above_zero_shot_is_flagged_in_tables_csv_and_html(tmp_path):
    e2e = {("zero_shot", "e2e_nlg", "low", None): {"score": [0.1, 0.1, 0.1]},
           ("lora", "e2e_nlg", "low", None): {"score": [0.3, 0.3, 0.3]}}
    results = write_results(tmp_path / "results", _results({**COLA, **e2e}))
    coll = c.collect(results)
    key = lambda method: c.CellKey(MODEL, "cola", "low", method, None)  # noqa: E731
    assert flags(coll, key("full")) == [] and flags(coll, key("majority")) == []
    assert flags(coll, key("lora")) == ["†"]
    assert flags(coll, key("prompt")) == ["†", "‡"]

    table1 = {t.number: t for t in tables.build_tables(coll)}[1]
    rows = {row.method: row.cells[0] for row in table1.rows()}
    assert rows["lora"].text == "0.6200 ± 0.0497 †" and rows["prompt"].text.endswith(" †‡")
    assert rows["full"].text == "0.8100 ± 0.0248" and rows["majority"].text == "0.7200 ± 0.0497"
    e2e_cells = {row.method: row.cells[1].text for row in table1.rows()}
    assert e2e_cells["majority"] == "n/a" and e2e_cells["lora"] == "0.3000 ± 0.0000"  # no label set; above 0-shot
    assert e2e_cells["full"] == "missing"
    csv_rows = {row["method"]: row for row in csv.DictReader(io.StringIO(render.to_csv(table1)))}
    assert csv_rows["prompt"]["cola flags"] == "below majority;not above zero-shot"
    assert csv_rows["full"]["cola flags"] == ""
    assert table1.notes[0] == FLAG_NOTE

    written = build_report(results)
    page = (results / "report" / "index.html").read_text(encoding="utf-8")
    assert "smollm2-135m-q4, cola, low: lora 0.6200 †" in page and "prompt 0.5200 †‡" in page
    assert (results / "report" / "claims.md") in written["claims"]


def test_table8_reports_rank_accuracy_of_classification_tasks_only(tmp_path):
    runs = _results({("lora", "cola", "low", None): {"score": [0.6, 0.6, 0.6]},
                     ("lora", "e2e_nlg", "low", None): {"score": [0.4, 0.4, 0.4]}})
    for run, rank in zip(runs, (0.7, 0.8, 0.9), strict=False):
        run["metrics"]["test"]["rank_accuracy"] = rank
    table8 = next(t for t in tables.build_tables(c.collect(write_results(tmp_path / "r", runs))) if t.number == 8)
    assert table8.number == 8 and table8.columns == [("cola", "CoLA")]
    assert [cell.text for cell in table8.rows()[0].cells] == ["0.8000 ± 0.2484"]


# ---- claims --------------------------------------------------------------------------------------------


def test_compare_needs_several_seeds_and_apart_intervals():
    low, high = Stat(1.0, 0.1, 0.2, 3), Stat(2.0, 0.1, 0.2, 3)
    assert compare(low, high, a_lower=True) == HOLDS and compare(low, high, a_lower=False) == FAILS
    assert compare(low, Stat(1.3, 0.1, 0.2, 3), a_lower=True) == INCONCLUSIVE  # 1.2 ≥ 1.1: they overlap
    assert compare(Stat(1.0, None, None, 1), high, a_lower=True) == INCONCLUSIVE


def _low(method, task="cola", ablation=None, scale="low"):
    return (method, task, scale, ablation)


CLAIM_CASES = {  # claim id → (cells where it holds, cells where it does not)
    "full-converges-first": (
        {_low("full"): {"best_epoch": [2, 2, 3]}, _low("lora"): {"best_epoch": [6, 7, 7]}},
        {_low("full"): {"best_epoch": [6, 7, 7]}, _low("lora"): {"best_epoch": [2, 2, 3]}},
    ),
    "peft-time-ratio-falls": (
        {_low("full"): {"total_s": [100, 100, 100]}, _low("lora"): {"total_s": [300, 300, 300]},
         _low("full", scale="medium"): {"total_s": [100, 100, 100]},
         _low("lora", scale="medium"): {"total_s": [150, 150, 150]}},
        {_low("full"): {"total_s": [100, 100, 100]}, _low("lora"): {"total_s": [300, 300, 300]},
         _low("full", scale="medium"): {"total_s": [100, 100, 100]},
         _low("lora", scale="medium"): {"total_s": [600, 600, 600]}},
    ),
    "lora-matches-full-low-generation": (
        {_low("full", "e2e_nlg"): {"score": [0.40, 0.41, 0.42]}, _low("lora", "e2e_nlg"): {"score": [0.5] * 3}},
        {_low("full", "e2e_nlg"): {"score": [0.50, 0.51, 0.52]}, _low("lora", "e2e_nlg"): {"score": [0.4] * 3}},
    ),
    "ia3-bitfit-least-memory": (
        {_low("ia3"): {"peak_bytes": [2**30] * 3}, _low("bitfit"): {"peak_bytes": [2**30] * 3},
         _low("full"): {"peak_bytes": [2**31] * 3}, _low("lora"): {"peak_bytes": [2**31] * 3}},
        {_low("ia3"): {"peak_bytes": [2**30] * 3}, _low("bitfit"): {"peak_bytes": [2**32] * 3},
         _low("full"): {"peak_bytes": [2**31] * 3}, _low("lora"): {"peak_bytes": [2**31] * 3}},
    ),
    "prompt-scores-lowest": (
        {_low("prompt"): {"score": [0.1] * 3}, _low("lora"): {"score": [0.5] * 3},
         _low("full"): {"score": [0.6] * 3}, _low("majority"): {"score": [0.05] * 3}},  # a reference: not a side
        {_low("prompt"): {"score": [0.55] * 3}, _low("lora"): {"score": [0.5] * 3},
         _low("full"): {"score": [0.6] * 3}},
    ),
    "later-layers-cost-less": (
        {_low("lora", ablation="later_layers"): {"score": [0.8] * 3},
         _low("lora", ablation="early_layers"): {"score": [0.6] * 3}},
        {_low("lora", ablation="later_layers"): {"score": [0.6] * 3},
         _low("lora", ablation="early_layers"): {"score": [0.8] * 3}},
    ),
}


@pytest.mark.parametrize("claim", sorted(CLAIM_CASES))
def test_each_claim_holds_fails_and_is_inconclusive_on_results_built_for_it(tmp_path, claim):
    holding, failing = CLAIM_CASES[claim]
    held = _verdict(tmp_path / "holds", holding, claim)
    assert held.verdict == HOLDS and held.comparisons and all(x.verdict == HOLDS for x in held.comparisons)
    assert _verdict(tmp_path / "fails", failing, claim).verdict == FAILS
    one_seed = _verdict(tmp_path / "one", holding, claim, seeds=(0,))
    assert one_seed.verdict == INCONCLUSIVE and "(1 seed)" in one_seed.comparisons[0].text
    unrelated = _verdict(tmp_path / "none", {("bitfit", "ag_news", "high", None): {"score": [0.5] * 3}}, claim)
    assert unrelated.verdict == INCONCLUSIVE and unrelated.comparisons == []  # nothing to compare


def test_overlapping_intervals_are_inconclusive_and_numbers_of_both_sides_are_quoted(tmp_path):
    cells = {_low("full"): {"best_epoch": [2, 3, 4], "score": [0.70, 0.71, 0.72]},
             _low("lora"): {"best_epoch": [3, 3, 4], "score": [0.60, 0.61, 0.62]}}
    verdict = _verdict(tmp_path, cells, "full-converges-first")
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.comparisons[0].text == (
        "full best epoch 3.00 ± 2.48 (3 seeds) [score 0.7100 ± 0.0248 (3 seeds)] < "
        "lora best epoch 3.33 ± 1.43 (3 seeds) [score 0.6100 ± 0.0248 (3 seeds)]")


def test_claims_command_prints_a_verdict_for_every_claim_from_several_directories(tmp_path, capsys):
    holding, _ = CLAIM_CASES["lora-matches-full-low-generation"]
    first = write_results(tmp_path / "a", _results({k: v for k, v in holding.items() if k[0] == "full"}))
    second = write_results(tmp_path / "b", _results({k: v for k, v in holding.items() if k[0] == "lora"}))
    assert len(collect_many([first, second]).runs) == 6
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["claims", str(first), str(second)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "[holds] At low scale on generation tasks LoRA scores at least as well as full tuning" in out
    assert "lora score 0.5000 ± 0.0000 (3 seeds) > full score 0.4100 ± 0.0248 (3 seeds)" in out
    assert out.count("[inconclusive]") == 5 and "1 holds, 0 does not hold, 5 inconclusive of 6 claims." in out
