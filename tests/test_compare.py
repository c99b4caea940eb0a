"""``peftbench compare A B``: two folders of the same grid with one setting changed, paired seed by seed."""

from __future__ import annotations

import json

import pytest
from report_fixtures import make_result, outcome_rows, write_outcomes_of, write_results

from peftbench.analysis.compare import differing_settings, report
from peftbench.analysis.report.collect import collect
from peftbench.cli import main

pytestmark = pytest.mark.unit

SCORES = {  # (folder, method) → the three seeds' test accuracy on 100 examples
    ("a", "full"): (0.80, 0.82, 0.81), ("a", "lora"): (0.70, 0.72, 0.74),
    ("b", "full"): (0.80, 0.82, 0.81), ("b", "lora"): (0.85, 0.86, 0.88),
}


def _folder(root, side: str, patience: int):
    """One side's grid: full tuning and LoRA on AG News low, seeds 0-2, with per-example outcomes whose
    accuracy is the score (the first ``round(100 × score)`` of 100 examples right). The run ids are the
    same on both sides, as for one grid run on two machines."""
    results = []
    for method in ("full", "lora"):
        for seed, score in enumerate(SCORES[side, method]):
            result = make_result(method=method, seed=seed, score=score, epochs=3 + patience, best_epoch=3)
            result["config"]["train"] = {"patience": patience, "batch_size": 16}
            right = round(100 * score)
            rows = outcome_rows(["sports"] * right + ["world"] * (100 - right), ["sports"] * 100)
            results.append(write_outcomes_of(root / side, result, rows))
    return write_results(root / side, results)


@pytest.fixture
def folders(tmp_path):
    return _folder(tmp_path, "a", 1), _folder(tmp_path, "b", 2)


def test_the_folders_differ_in_the_setting_that_changed_and_nothing_else(folders):
    a, b = folders
    assert differing_settings(collect(a), collect(b)) == [("train.patience", 1, 2)]


def test_a_folder_with_more_cells_differs_in_no_more_settings(folders):
    a, b = folders
    extra = make_result(method="lora", task="cola", seed=0)
    extra["config"]["train"] = {"patience": 1, "batch_size": 16}
    write_results(a, [extra])  # A varies in its task, B does not: not a setting that differs
    assert differing_settings(collect(a), collect(b)) == [("train.patience", 1, 2)]


def test_each_cell_is_paired_seed_by_seed_and_example_by_example(folders):
    text = report(*folders)
    assert "Settings that differ: `train.patience` 1 → 2" in text
    (lora,) = [line for line in text.splitlines() if line.startswith("| lora ")]
    # B − A per seed: +0.15, +0.14, +0.14; paired t over 3 seeds, and McNemar over the 300 pooled examples
    # (43 examples right in B only, none in A only).
    assert "| 0, 1, 2 | 0.7200 | 0.8633 | +0.1433 [+0.1290, +0.1577] |" in lora
    assert "| McNemar p 0.000 | 4, 4, 4 (best 3, 3, 3) | 5, 5, 5 (best 3, 3, 3) |" in lora
    (full,) = [line for line in text.splitlines() if line.startswith("| full ")]
    # No difference on any seed: no spread for a t, so the exact sign-flip test answers, and on 3 seeds (its
    # smallest p is 0.25) it rules out no difference: the interval spans the metric's whole range.
    assert "| 0.8100 | 0.8100 | +0.0000 [-1.0000, +1.0000] (sign-flip) | 1.000 (1.000) | McNemar p 1.000 |" in full


def test_a_cell_compares_only_the_seeds_both_sides_ran(folders):
    b = folders[1]
    for seed_dir in b.glob("*lora*s2*"):
        (seed_dir / "result.json").unlink()
    (lora,) = [line for line in report(*folders).splitlines() if line.startswith("| lora ")]
    assert "| 0, 1 | 0.7100 | 0.8550 | +0.1450 [" in lora  # A's seed 2 (0.74) is left out of its mean
    assert "4, 4 (best 3, 3) | 5, 5 (best 3, 3) |" in lora


def test_a_reordered_pair_says_whether_a_had_decided_it(folders):
    text = report(*folders)
    assert "- flan-t5-xl, ag_news, low: A full 0.8100 > lora 0.7200; B lora 0.8633 > full 0.8100" in text
    # A's own comparison of full tuning with LoRA: +0.10, +0.10, +0.07 → mean +0.09, decided by paired t.
    assert "  - full above lora in A, below in B; in A decided: +0.0900 [+0.0470, +0.1330], paired t p 0.012" in text


def test_methods_level_on_one_side_are_tied_not_reordered(folders):
    b = folders[1]
    for path in b.glob("*lora*/result.json"):  # B's LoRA level with its full tuning on every seed
        result = json.loads(path.read_text())
        full = json.loads(next(b.glob(f"*full*s{result['seed']}*/result.json")).read_text())
        result["metrics"]["score"] = full["metrics"]["score"]
        result["metrics"]["test"]["accuracy"] = full["metrics"]["test"]["accuracy"]
        path.write_text(json.dumps(result))
    text = report(*folders)
    # Ties go in the order of the methods' names, with "=": the same page on every run, and no pair of
    # methods reported as swapped, since B orders neither above the other.
    assert "- flan-t5-xl, ag_news, low: A full 0.8100 > lora 0.7200; B full 0.8100 = lora 0.8100" in text
    assert "above" not in text.split("## Method rankings")[1]


def test_a_named_test_metric_is_compared_in_place_of_the_headline(folders):
    for folder in folders:  # each run's "rank_accuracy" is its accuracy less 0.1
        for path in folder.glob("*/result.json"):
            result = json.loads(path.read_text())
            result["metrics"]["test"]["rank_accuracy"] = result["metrics"]["test"]["accuracy"] - 0.1
            path.write_text(json.dumps(result))
    text = report(*folders, metric="rank_accuracy")
    (lora,) = [line for line in text.splitlines() if line.startswith("| lora ")]
    assert "| 0, 1, 2 | 0.6200 | 0.7633 | +0.1433 [" in lora
    assert "| – | 4, 4, 4 (best 3, 3, 3) |" in lora  # no outcome row scores rank_accuracy: no test over examples
    assert "A full 0.7100 > lora 0.6200; B lora 0.7633 > full 0.7100" in text


def test_a_named_metric_is_tested_over_the_examples_where_the_outcomes_score_it(folders):
    lines = report(*folders, metric="accuracy").splitlines()
    (lora,) = [line for line in lines if line.startswith("| lora ")]
    assert "| 0.7200 | 0.8633 | +0.1433 [+0.1290, +0.1577] | 0.001 (0.001) | McNemar p 0.000 |" in lora
    (full,) = [line for line in lines if line.startswith("| full ")]
    assert "| +0.0000 [-1.0000, +1.0000] (sign-flip) |" in full  # accuracy's registered range, as the headline's
    for folder in folders:  # a metric of the results that no outcome row scores
        for path in folder.glob("*/result.json"):
            result = json.loads(path.read_text())
            result["metrics"]["test"]["rouge_l"] = result["metrics"]["test"]["accuracy"] / 2
            path.write_text(json.dumps(result))
    (lora,) = [line for line in report(*folders, metric="rouge_l").splitlines() if line.startswith("| lora ")]
    assert "| 0.3600 | 0.4317 | +0.0717 [" in lora and "| – | 4, 4, 4 (best 3, 3, 3) |" in lora


def test_the_command_prints_and_writes_the_comparison(folders, tmp_path, capsys):
    out = tmp_path / "compare.md"
    assert main(["compare", str(folders[0]), str(folders[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out == out.read_text()
    assert out.read_text().startswith(f"# {folders[1]} (B) against {folders[0]} (A)")


def test_an_ablation_cell_is_named_apart_from_its_method(tmp_path):
    """LoRA on all layers and LoRA on the later ones are two cells: each row says which it is."""
    def side(name: str, patience: int):
        results = []
        for ablation in (None, "later_layers"):
            result = make_result(method="lora", seed=0, score=0.8, ablation=ablation)
            result["config"]["train"] = {"patience": patience, "batch_size": 16}
            results.append(result)
        return write_results(tmp_path / name, results)

    rows = [line.split(" |")[0] for line in report(side("a", 1), side("b", 2)).splitlines()
            if line.startswith("| lora")]
    assert rows == ["| lora (flan-t5-xl, ag_news, low)", "| lora (later_layers) (flan-t5-xl, ag_news, low)"]
