"""The report read against reference rows (flags) and the paper's claims as checks, on hand-made results."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import pytest
from report_fixtures import make_result, outcome_rows, write_outcomes_of, write_results

from peftbench.analysis.report import build_report, render, tables
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.claims import FAILS, HOLDS, INCONCLUSIVE, check_claims, collect_many
from peftbench.analysis.report.cli import add_commands
from peftbench.analysis.report.references import FLAG_NOTE, flags
from peftbench.catalog.methods import TUNED_LR, base_method

pytestmark = pytest.mark.unit

MODEL = "smollm2-135m-q4"
Cells = dict[tuple, dict[str, list]]


def _results(cells: Cells, seeds: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """One result per seed of each (method, task, scale, ablation) cell, its fields taken seed by seed."""
    found = []
    for (method, task, scale, ablation), fields in cells.items():
        for i, seed in enumerate(seeds):
            result = make_result(model=MODEL, method=base_method(method), task=task, scale=scale, seed=seed,
                                 ablation=ablation, **{name: values[i] for name, values in fields.items()})
            if method.endswith(TUNED_LR):  # a run with a searched learning rate: a cell of its own
                result["config"]["lr_search"] = [0.3, 1.0, 3.0]
                result["run_id"] += "-lr_search"
            if method in ("majority", "zero_shot", "in_context"):
                result["method"] = {"name": method, "kind": "reference"}
                result["params"]["trainable"] = 0
            found.append(result)
    return found


def _verdict(tmp_path: Path, cells: Cells, claim: str, seeds=(0, 1, 2), runs: list[dict] | None = None):
    results = write_results(tmp_path / "results", runs if runs is not None else _results(cells, seeds))
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


def _low(method, task="cola", ablation=None, scale="low"):
    return (method, task, scale, ablation)


GiB = 2**30
MiB = 2**20
SIX = (0, 1, 2, 3, 4, 5)


def _breakdowns(trainable_mib: int, activations_mib: list[int], overhead_mib: list[int]) -> list[dict[str, int]]:
    """``memory.breakdown`` per seed: 500 MiB of weights, gradients and AdamW state (8 bytes a trainable
    parameter's 4) for ``trainable_mib`` of trainable parameters, and each seed's activations and overhead."""
    return [{"runtime": 400 * MiB, "weights": 500 * MiB, "gradients": trainable_mib * MiB,
             "optimizer_state": 2 * trainable_mib * MiB, "activations": a * MiB, "overhead": o * MiB}
            for a, o in zip(activations_mib, overhead_mib, strict=True)]
CLAIM_CASES = {  # claim id → (cells where it holds, cells where it does not, seeds)
    "full-converges-first": (  # the best epoch is tested by sign-flip: six seeds of one sign give p = 2/64
        {_low("full"): {"best_epoch": [2, 2, 3, 2, 3, 2]}, _low("lora"): {"best_epoch": [6, 7, 7, 6, 8, 7]}},
        {_low("full"): {"best_epoch": [6, 7, 7, 6, 8, 7]}, _low("lora"): {"best_epoch": [2, 2, 3, 2, 3, 2]}},
        SIX,
    ),
    "peft-time-ratio-falls": (
        {_low("full"): {"total_s": [100, 110, 90]}, _low("lora"): {"total_s": [300, 320, 290]},
         _low("full", scale="medium"): {"total_s": [100, 105, 95]},
         _low("lora", scale="medium"): {"total_s": [150, 160, 140]}},
        {_low("full"): {"total_s": [100, 110, 90]}, _low("lora"): {"total_s": [300, 320, 290]},
         _low("full", scale="medium"): {"total_s": [100, 105, 95]},
         _low("lora", scale="medium"): {"total_s": [600, 640, 580]}},
        (0, 1, 2),
    ),
    "peft-beats-full-low-tuned-lr": (  # the fixed-rate cells disagree; only the tuned ones are compared
        {_low("full+lr_search"): {"score": [0.60, 0.50, 0.71]}, _low("lora+lr_search"): {"score": [0.80, 0.70, 0.90]},
         _low("bitfit+lr_search"): {"score": [0.81, 0.72, 0.90]}, _low("full"): {"score": [0.90, 0.90, 0.90]}},
        {_low("full+lr_search"): {"score": [0.80, 0.70, 0.90]}, _low("lora+lr_search"): {"score": [0.60, 0.50, 0.71]},
         _low("lora"): {"score": [0.90, 0.90, 0.90]}, _low("full"): {"score": [0.10, 0.10, 0.10]}},
        (0, 1, 2),
    ),
    "peft-beats-full-low": (
        {_low("full"): {"score": [0.60, 0.50, 0.71]}, _low("lora"): {"score": [0.80, 0.70, 0.90]},
         _low("bitfit"): {"score": [0.81, 0.72, 0.90]}},
        {_low("full"): {"score": [0.80, 0.70, 0.90]}, _low("lora"): {"score": [0.60, 0.50, 0.71]},
         _low("bitfit"): {"score": [0.61, 0.52, 0.71]}},
        (0, 1, 2),
    ),
    "lora-matches-full-low-generation": (  # non-inferiority with ROUGE-L's smallest effect, 0.01
        {_low("full", "e2e_nlg"): {"score": [0.40, 0.41, 0.42]},
         _low("lora", "e2e_nlg"): {"score": [0.40, 0.415, 0.421]}},
        {_low("full", "e2e_nlg"): {"score": [0.50, 0.51, 0.52]}, _low("lora", "e2e_nlg"): {"score": [0.30, 0.32, 0.31]}},
        (0, 1, 2),
    ),
    "ia3-bitfit-least-memory": (
        {_low("ia3"): {"peak_bytes": [GiB, int(1.1 * GiB), int(0.9 * GiB)]},
         _low("bitfit"): {"peak_bytes": [int(1.01 * GiB), int(1.11 * GiB), int(0.91 * GiB)]},
         _low("full"): {"peak_bytes": [2 * GiB, int(2.11 * GiB), int(1.9 * GiB)]},
         _low("lora"): {"peak_bytes": [int(2.01 * GiB), int(2.1 * GiB), int(1.91 * GiB)]}},
        {_low("ia3"): {"peak_bytes": [GiB, int(1.1 * GiB), int(0.9 * GiB)]},
         _low("bitfit"): {"peak_bytes": [4 * GiB, int(4.1 * GiB), int(3.92 * GiB)]},
         _low("full"): {"peak_bytes": [2 * GiB, int(2.11 * GiB), int(1.9 * GiB)]},
         _low("lora"): {"peak_bytes": [int(2.01 * GiB), int(2.1 * GiB), int(1.91 * GiB)]}},
        (0, 1, 2),
    ),
    "ia3-bitfit-least-method-memory": (  # the overhead varies by more than the methods differ: never compared
        {_low("ia3"): {"breakdown": _breakdowns(1, [600, 700, 650], [900, 300, 1500])},
         _low("bitfit"): {"breakdown": _breakdowns(1, [580, 690, 640], [300, 1400, 800])},
         _low("full"): {"breakdown": _breakdowns(500, [800, 920, 840], [1000, 900, 600])},
         _low("lora"): {"breakdown": _breakdowns(3, [640, 745, 690], [700, 200, 1100])}},
        {_low("ia3"): {"breakdown": _breakdowns(1, [600, 700, 650], [900, 300, 1500])},
         _low("bitfit"): {"breakdown": _breakdowns(1, [580, 690, 640], [300, 1400, 800])},
         _low("full"): {"breakdown": _breakdowns(500, [800, 920, 840], [1000, 900, 600])},
         _low("lora"): {"breakdown": _breakdowns(3, [540, 640, 592], [700, 200, 1100])}},
        (0, 1, 2),
    ),
    "peft-forgets-less": (
        {_low("full"): {"forgetting": [0.90, 1.20, 0.70]}, _low("lora"): {"forgetting": [0.30, 0.45, 0.20]},
         _low("ia3"): {"forgetting": [0.10, 0.22, 0.05]}, _low("bitfit"): {"forgetting": [0.40, 0.62, 0.31]}},
        {_low("full"): {"forgetting": [0.01, 0.03, 0.02]}, _low("lora"): {"forgetting": [0.31, 0.34, 0.32]},
         _low("ia3"): {"forgetting": [0.10, 0.22, 0.05]}, _low("bitfit"): {"forgetting": [0.40, 0.62, 0.31]}},
        (0, 1, 2),
    ),
    "prompt-scores-lowest": (
        {_low("prompt"): {"score": [0.10, 0.20, 0.15]}, _low("lora"): {"score": [0.50, 0.61, 0.55]},
         _low("full"): {"score": [0.60, 0.70, 0.66]}, _low("majority"): {"score": [0.05] * 3}},  # not a side
        {_low("prompt"): {"score": [0.56, 0.65, 0.61]}, _low("lora"): {"score": [0.50, 0.60, 0.55]},
         _low("full"): {"score": [0.60, 0.70, 0.66]}},
        (0, 1, 2),
    ),
    "later-layers-cost-less": (
        {_low("lora", ablation="later_layers"): {"score": [0.80, 0.70, 0.90]},
         _low("lora", ablation="early_layers"): {"score": [0.60, 0.51, 0.69]}},
        {_low("lora", ablation="later_layers"): {"score": [0.60, 0.51, 0.69]},
         _low("lora", ablation="early_layers"): {"score": [0.80, 0.70, 0.90]}},
        (0, 1, 2),
    ),
}


@pytest.mark.parametrize("claim", sorted(CLAIM_CASES))
def test_each_claim_holds_fails_and_is_inconclusive_on_results_built_for_it(tmp_path, claim):
    holding, failing, seeds = CLAIM_CASES[claim]
    held = _verdict(tmp_path / "holds", holding, claim, seeds)
    assert held.verdict == HOLDS and held.comparisons and all(x.verdict == HOLDS for x in held.comparisons)
    assert _verdict(tmp_path / "fails", failing, claim, seeds).verdict == FAILS
    one_seed = _verdict(tmp_path / "one", holding, claim, seeds=(0,))
    assert one_seed.verdict == INCONCLUSIVE and "(1 seed)" in one_seed.comparisons[0].text
    unrelated = _verdict(tmp_path / "none", {("bitfit", "ag_news", "high", None): {"score": [0.5] * 3}}, claim)
    assert unrelated.verdict == INCONCLUSIVE and unrelated.comparisons == []  # nothing to compare


def test_consistent_paired_differences_decide_although_the_per_seed_intervals_overlap(tmp_path):
    cells = {_low("lora"): {"score": [0.50, 0.70, 0.90]}, _low("full"): {"score": [0.45, 0.64, 0.86]},
             _low("bitfit"): {"score": [0.50, 0.70, 0.90]}}
    verdict = _verdict(tmp_path, cells, "peft-beats-full-low")
    assert verdict.verdict == HOLDS
    assert verdict.comparisons[0].text == (
        "lora score 0.7000 ± 0.4968 (3 seeds) > full score 0.6500 ± 0.5097 (3 seeds); "
        "difference +0.0500 [+0.0252, +0.0748], paired t p 0.013 (Holm 0.026), 3 seeds")


def test_an_undecided_comparison_states_what_it_can_detect_and_the_seeds_it_needs(tmp_path):
    cells = {_low("lora"): {"score": [0.50, 0.70, 0.90]}, _low("full"): {"score": [0.45, 0.70, 0.80]}}
    text = _verdict(tmp_path, cells, "peft-beats-full-low").comparisons[0].text
    assert text.endswith("difference +0.0500 [-0.0742, +0.1742], paired t p 0.225, 3 seeds; detects ±0.1548 at "
                         "80% power with 3 seeds; the observed difference needs 10 seeds")


def test_an_undecided_claim_sums_up_what_would_decide_it_in_text_and_markdown(tmp_path):
    cells = {_low("lora"): {"score": [0.50, 0.70, 0.90]}, _low("full"): {"score": [0.45, 0.70, 0.80]},
             _low("lora", "ag_news"): {"score": [0.5, 0.6, 0.7]}, _low("full", "ag_news"): {"score": [0.5, 0.6, 0.7]}}
    verdict = _verdict(tmp_path, cells, "peft-beats-full-low")  # bitfit missing; ag_news's difference is 0
    assert verdict.to_decide() == ("to decide: 4 of 4 comparisons undecided; their observed differences need "
                                   "13 to more than 1000 seeds; 2 lack a side or a shared seed")
    decided = _verdict(tmp_path / "decided", CLAIM_CASES["peft-beats-full-low"][0], "peft-beats-full-low")
    assert decided.verdict == HOLDS and decided.to_decide() == ""


def test_a_missing_cell_makes_the_claim_inconclusive_and_is_named(tmp_path):
    cells = {_low("prompt"): {"score": [0.10, 0.20, 0.15]}, _low("lora"): {"score": [0.50, 0.61, 0.55]},
             _low("prompt", "ag_news"): {"score": [0.10, 0.20, 0.15]}}
    verdict = _verdict(tmp_path, cells, "prompt-scores-lowest")
    assert verdict.verdict == INCONCLUSIVE
    assert [(x.verdict, x.where) for x in verdict.comparisons] == [
        (INCONCLUSIVE, f"{MODEL}, ag_news, low"), (HOLDS, f"{MODEL}, cola, low")]
    assert verdict.comparisons[0].text == "missing: lora (missing)"


def test_tied_best_epochs_on_one_side_do_not_decide_with_three_seeds(tmp_path):
    cells = {_low("full"): {"best_epoch": [1, 1, 1]}, _low("lora"): {"best_epoch": [6, 7, 7]}}
    verdict = _verdict(tmp_path, cells, "full-converges-first")
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.comparisons[0].text.split("; ", 1)[1] == (
        "difference -5.67 [-inf, +inf], sign-flip p 0.250, 3 seeds; cannot reach p < 0.05 with 3 seeds "
        "(smallest p 0.25): needs at least 6 seeds")


def test_seeds_on_one_side_only_or_on_other_samples_are_named_and_left_out(tmp_path):
    runs = _results({_low("lora"): {"score": [0.80, 0.70, 0.90, 0.75]}}, seeds=(0, 1, 2, 4))
    runs += _results({_low("full"): {"score": [0.60, 0.50, 0.71, 0.2]}}, seeds=(0, 1, 2, 3))
    runs[3]["data"]["sample_hash"] = "another sample"  # lora's seed 4 has no partner anyway
    runs[5]["data"]["sample_hash"] = "another sample"  # full's seed 1
    text = _verdict(tmp_path, {}, "peft-beats-full-low", runs=runs).comparisons[0].text
    assert "(seed 4 only in lora; seed 3 only in full; seed 1 refused: the sides' samples differ " \
           "(data.sample_hash))" in text
    assert "paired t p 0.016, 2 seeds" in text


def test_seeds_paired_across_machine_kinds_are_named(tmp_path):
    runs = _results({_low("lora"): {"score": [0.80, 0.70, 0.90]}, _low("full"): {"score": [0.60, 0.50, 0.71]}})
    for run in runs:  # lora's seeds 1 and 2 ran on another machine kind, in fp32
        other = run["config"]["method"] == "lora" and run["seed"] > 0
        run["hardware"]["instruction_set"] = "avx512" if other else "amx-bf16"
        run["optimizer"] = {"precision": "no" if other else "bf16"}
    text = _verdict(tmp_path, {}, "peft-beats-full-low", runs=runs).comparisons[0].text
    assert "(seed 1, 2 paired across machine kinds or precisions (avx512, fp32 against amx-bf16, bf16))" in text


def _with_outcomes(tmp_path: Path, cells: Cells, correct: dict[str, int], metric: str = "accuracy") -> list[dict]:
    """One seed per cell, each run's outcomes: the first ``correct[method]`` of 100 examples answered right."""
    runs = _results(cells, seeds=(0,))
    references = ["acceptable", "unacceptable"] * 50  # CoLA's label words
    for run in runs:
        method = run["config"]["method"]
        wrong = {"acceptable": "unacceptable", "unacceptable": "acceptable"}
        predictions = [r if i < correct[method] else wrong[r] for i, r in enumerate(references)]
        write_outcomes_of(tmp_path / "results", run, outcome_rows(predictions, references, metric))
    return runs


def test_one_seed_cells_get_the_example_level_view_labelled_test_sample_only(tmp_path):
    cells = {_low("lora"): {"score": [0.9]}, _low("full"): {"score": [0.7]}}
    runs = _with_outcomes(tmp_path, cells, {"lora": 90, "full": 70})
    verdict = _verdict(tmp_path, {}, "peft-beats-full-low", runs=runs)
    assert verdict.verdict == INCONCLUSIVE  # one seed: the training variance is not covered
    assert ("test sample only: difference +0.2000 [+0.1216, +0.2784], McNemar p 0.000, 100 test examples"
            in verdict.comparisons[0].text)


def test_an_undecided_example_level_view_states_the_test_examples_it_would_need(tmp_path):
    cells = {_low("lora"): {"score": [0.75]}, _low("full"): {"score": [0.70]}}
    runs = _with_outcomes(tmp_path, cells, {"lora": 75, "full": 70})
    text = _verdict(tmp_path, {}, "peft-beats-full-low", runs=runs).comparisons[0].text
    assert text.endswith("McNemar p 0.062, 100 test examples (80% power at this difference: 150 test examples)")


def test_a_corpus_headline_is_resampled_whole_by_the_paired_bootstrap(tmp_path):
    cells = {_low("lora"): {"score": [0.8]}, _low("full"): {"score": [0.0]}}
    runs = _with_outcomes(tmp_path, cells, {"lora": 90, "full": 50}, metric="mcc")
    for run in runs:
        run["metrics"]["headline"] = "mcc"
    text = _verdict(tmp_path, {}, "peft-beats-full-low", runs=runs).comparisons[0].text
    assert "test sample only: difference +0.8000 [" in text and "paired bootstrap p 0.002, 100 test examples" in text


def test_the_time_ratio_reads_train_to_best_when_every_run_records_it(tmp_path):
    holding = CLAIM_CASES["peft-time-ratio-falls"][0]
    runs = _results(holding)
    for run in runs:  # results of schema 1 have no train_to_best_s
        run["time"].pop("train_to_best_s", None)
    text = _verdict(tmp_path / "a", {}, "peft-time-ratio-falls", runs=runs).comparisons[0].text
    assert text.startswith("lora time / full's (time.total_s): medium 1.499 ± ")
    for run in runs:
        run["time"]["train_to_best_s"] = run["time"]["total_s"] / 2
    text = _verdict(tmp_path / "b", {}, "peft-time-ratio-falls", runs=runs).comparisons[0].text
    assert text.startswith("lora time / full's (time.train_to_best_s): medium 1.499 ± ")


def test_the_paper_s_claims_compare_fixed_rate_cells_and_the_tuned_lr_claim_names_a_missing_tuned_cell(tmp_path):
    cells = {_low("full"): {"score": [0.60, 0.50, 0.71]}, _low("lora"): {"score": [0.80, 0.70, 0.90]},
             _low("bitfit"): {"score": [0.81, 0.72, 0.90]}, _low("full+lr_search"): {"score": [0.9, 0.9, 0.9]},
             _low("lora+lr_search"): {"score": [0.95, 0.95, 0.95]}}
    fixed = _verdict(tmp_path / "a", cells, "peft-beats-full-low")
    assert fixed.verdict == HOLDS and [x.text.split(" score")[0] for x in fixed.comparisons] == ["lora", "bitfit"]
    tuned = _verdict(tmp_path / "b", cells, "peft-beats-full-low-tuned-lr")
    assert tuned.verdict == INCONCLUSIVE and tuned.comparisons[1].text == "missing: bitfit+lr_search (missing)"
    assert tuned.comparisons[0].text.startswith("lora+lr_search score 0.9500 ± 0.0000 (3 seeds) > "
                                                "full+lr_search score 0.9000 ± 0.0000 (3 seeds)")
    prompt = _verdict(tmp_path / "c", {**cells, _low("prompt"): {"score": [0.1, 0.1, 0.1]}}, "prompt-scores-lowest")
    assert {x.text.split(" score ")[1].rsplit(" ", 1)[1] for x in prompt.comparisons} == {"full", "lora", "bitfit"}


def test_claims_command_prints_a_verdict_for_every_claim_from_several_directories(tmp_path, capsys):
    holding, _, _ = CLAIM_CASES["lora-matches-full-low-generation"]
    first = write_results(tmp_path / "a", _results({k: v for k, v in holding.items() if k[0] == "full"}))
    second = write_results(tmp_path / "b", _results({k: v for k, v in holding.items() if k[0] == "lora"}))
    assert len(collect_many([first, second]).runs) == 6
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["claims", str(first), str(second)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "[holds] At low scale on generation tasks LoRA scores at least as well as full tuning" in out
    assert ("holds: smollm2-135m-q4, e2e_nlg, low: lora score 0.4120 ± 0.0269 (3 seeds) > full score 0.4100 ± 0.0248 "
            "(3 seeds); difference +0.0020 [-0.0046, +0.0086], non-inferiority (paired t, margin 0.01) p 0.008, 3 seeds"
            ) in out
    assert out.count("[inconclusive]") == 9 and "1 holds, 0 does not hold, 9 inconclusive of 10 claims." in out


def test_the_method_memory_is_the_breakdown_less_runtime_and_overhead_and_names_runs_without_one(tmp_path):
    cells = {_low("ia3"): {"breakdown": _breakdowns(1, [600, 700, 650], [900, 300, 1500])},
             _low("lora"): {"breakdown": _breakdowns(3, [640, 745, 690], [700, 200, 1100])}}
    runs = _results(cells)
    for run in runs:  # the process peak holds every part
        run["memory"]["peak_bytes"] = sum(run["memory"]["breakdown"].values())
    from peftbench.analysis.report.memory import method_bytes

    assert method_bytes(runs[0]) == (500 + 1 + 2 + 600) * MiB  # weights + gradients + AdamW + activations
    by_peak = _verdict(tmp_path / "peak", {}, "ia3-bitfit-least-memory", runs=runs)
    assert by_peak.verdict == INCONCLUSIVE  # ia3 − lora: +100, +100, +350 MiB of peak, overhead and all
    own = _verdict(tmp_path / "own", {}, "ia3-bitfit-least-method-memory", runs=runs)
    assert own.verdict == HOLDS and own.comparisons[0].text.startswith(
        "ia3 method's MiB 1153 ± 124 (3 seeds) < lora method's MiB 1201 ± 130 (3 seeds); difference -48 [-55, -40]")
    del runs[3]["memory"]["breakdown"]  # lora, seed 0: a result from before the breakdown
    older = _verdict(tmp_path / "older", {}, "ia3-bitfit-least-method-memory", runs=runs)
    assert "seed 0 only in ia3" in older.comparisons[0].text
    assert "1 run of lora without method_bytes" in older.comparisons[0].text


def test_a_verdict_counts_the_runs_behind_its_comparisons_once_and_the_time_they_took(tmp_path):
    cells = {(method, "ag_news", "low", None): {"score": [0.5, 0.6, 0.7], "total_s": [600.0, 600.0, 600.0]}
             for method in ("full", "lora", "bitfit")}  # lora > full and bitfit > full: full's runs in both
    verdict = _verdict(tmp_path, cells, "peft-beats-full-low")
    assert (verdict.runs, verdict.spent_s) == (9, pytest.approx(9 * 660.0))  # time.total_s: 1.1 × 600 a run
    assert verdict.spent() == "spent: 9 runs, 99.0 min of run time"


def test_claims_json_gives_each_comparison_its_cells_difference_interval_and_p_values(tmp_path, capsys):
    import json

    holding, _, seeds = CLAIM_CASES["ia3-bitfit-least-method-memory"]
    results = write_results(tmp_path / "r", _results(holding, seeds))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["claims", str(results), "--json"])
    assert args.func(args) == 0
    verdicts = {v["id"]: v for v in json.loads(capsys.readouterr().out)}
    memory = verdicts["ia3-bitfit-least-method-memory"]
    assert memory["verdict"] == HOLDS and memory["runs"] == 12 and memory["needs"] is None
    first = memory["comparisons"][0]
    assert first["where"] == f"{MODEL}, cola, low" and first["measure"] == "method's MiB"
    assert [c["method"] for c in first["cells"]] == ["ia3", "full"] and first["seeds"] == [0, 1, 2]
    assert first["test"] == "paired t" and first["n"] == 3 and first["unit"] == "seeds"
    assert first["difference"]["estimate"] == pytest.approx(-1700 - 1 / 3)  # MiB: ia3 1,153 vs full 2,853.3
    assert first["difference"]["low"] < first["difference"]["estimate"] < first["difference"]["high"] < 0
    assert first["p"] < first["p_holm"] < 0.05 and first["seeds_needed"] is None
    later = verdicts["later-layers-cost-less"]
    assert later["verdict"] == INCONCLUSIVE and later["comparisons"] == []
    assert later["needs"] == "a method with ablations=[early_layers,later_layers]"
