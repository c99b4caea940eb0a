"""Per-example outcomes (peftbench.outcomes) and the metrics scored from them (catalog/metrics.py)."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from sweep_helpers import tiny_overrides

from peftbench.catalog.metrics import METRICS, macro_f1, matthews_corrcoef, score
from peftbench.config import load_sweep
from peftbench.outcomes import (
    OUTCOMES_FILE,
    OutcomesError,
    encode_rows,
    example_id,
    read_outcomes,
    write_outcomes,
)
from peftbench.recipe.train import run_cell

pytestmark = pytest.mark.unit


def test_mcc_is_scikit_learns_and_zero_for_a_constant_answer():
    # scikit-learn's documented example: y_true [+1, +1, +1, -1], y_pred [+1, -1, +1, +1] → -0.333...
    assert matthews_corrcoef(["p", "n", "p", "p"], ["p", "p", "p", "n"], ["p", "n"]) == pytest.approx(-1 / 3)
    assert matthews_corrcoef(["p"] * 4, ["p", "p", "p", "n"], ["p", "n"]) == 0.0
    assert matthews_corrcoef(["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)


def test_an_answer_outside_the_label_set_is_its_own_wrong_class():
    # "maybe" is neither label: it counts as wrong for MCC and macro-F1 (a class no example has).
    labels, classes = ["yes", "no", "yes", "no"], ["no", "yes"]
    assert macro_f1(["yes", "no", "maybe", "no"], labels, classes) == pytest.approx((1.0 + 2 / 3) / 2)
    # Confusion [[2, 0, 0], [0, 1, 1], [0, 0, 0]]: (3·4 − 6) / √((16 − 6)(16 − 8)) = 6 / √80.
    assert matthews_corrcoef(["yes", "no", "maybe", "no"], labels, classes) == pytest.approx(6 / 80 ** 0.5)
    assert score("accuracy", ["yes.", " no"], [["yes"], ["yes"]]) == 0.5


def test_metrics_declare_what_comparisons_need():
    assert METRICS.get("accuracy").aggregate == "mean" and METRICS.get("mcc").aggregate == "corpus"
    assert METRICS.get("mcc").bounds == (-1.0, 1.0) and METRICS.get("rouge_l").bounds == (0.0, 1.0)
    assert all(METRICS.get(name).higher_is_better and METRICS.get(name).smallest_effect > 0 for name in METRICS)


def test_outcomes_round_trip_with_the_same_bytes_and_refuse_another_file(tmp_path):
    rows = [{"id": example_id("test:0", "prompt", ["yes"]), "prediction": "yes", "scores": {"accuracy": 1.0}}]
    entry = write_outcomes(tmp_path / "a", rows)
    assert read_outcomes(tmp_path / "a", entry) == rows and entry["examples"] == 1
    assert write_outcomes(tmp_path / "b", rows)["sha256"] == entry["sha256"]  # no timestamp in the gzip
    (tmp_path / "a" / OUTCOMES_FILE).write_bytes(gzip.compress(json.dumps({**rows[0], "prediction": "no"}).encode()))
    with pytest.raises(OutcomesError, match="not the one its result.json recorded"):
        read_outcomes(tmp_path / "a", entry)
    with pytest.raises(OutcomesError, match="records no per-example outcomes"):
        read_outcomes(tmp_path / "a", None)


@pytest.mark.integration
def test_every_method_and_reference_row_of_a_cell_writes_outcomes_of_the_same_examples(tmp_path):
    overrides = [*tiny_overrides(tmp_path), "models=[llama-tiny-random]", "methods=[lora,full,majority]",
                 "tasks=[synthetic_classification]", "train.test_examples=12"]
    runs = load_sweep(None, overrides).expand()
    ids = {}
    for run in runs:
        result = run_cell(run, tmp_path / run.run_id(), progress=False)
        rows = read_outcomes(tmp_path / run.run_id(), result["outcomes"])
        ids[run.method] = [row["id"] for row in rows]
        assert result["data"]["test_examples"] == len(rows) == 12
        assert result["metrics"]["test"]["accuracy"] == pytest.approx(sum(r["scores"]["accuracy"] for r in rows) / 12)
        assert result["metrics"]["score"] == result["metrics"]["test"][result["metrics"]["headline"]]
    assert ids["lora"] == ids["full"] == ids["majority"] and len(set(ids["lora"])) == 12


def test_references_are_stored_once_beside_the_runs_and_read_back_into_each_row(tmp_path):
    rows = [{"id": example_id(f"test:{i}", "prompt", [word]), "source": f"test:{i}", "prediction": "yes",
             "references": [word], "scores": {"accuracy": float(word == "yes")}} for i, word in enumerate(["yes", "no"])]
    lora, full = (write_outcomes(tmp_path / name, rows) for name in ("lora", "full"))
    assert lora["version"] == 2 and lora["references"] == full["references"]  # one file for both runs
    assert [p.name for p in (tmp_path / "references").iterdir()] == [lora["references"]["file"].rsplit("/", 1)[1]]
    assert read_outcomes(tmp_path / "lora", lora) == rows == read_outcomes(tmp_path / "full", full)
    stored = gzip.decompress((tmp_path / "lora" / OUTCOMES_FILE).read_bytes()).decode()
    assert "references" not in stored and '"prediction": "yes"' in stored
    other = [{**rows[0], "references": ["maybe"]}]  # another sample's references: a file of their own
    assert write_outcomes(tmp_path / "ia3", other)["references"] != lora["references"]
    (tmp_path / lora["references"]["file"].removeprefix("../")).unlink()
    with pytest.raises(OutcomesError, match="cannot be read"):
        read_outcomes(tmp_path / "lora", lora)
    version_1 = {k: v for k, v in write_outcomes(tmp_path / "old", [{**rows[0]}]).items() if k != "references"}
    (tmp_path / "old" / OUTCOMES_FILE).write_bytes(encode_rows(rows))  # references in every row, as version 1
    version_1.update(version=1, examples=2, sha256=hashlib.sha256(encode_rows(rows)).hexdigest())
    assert read_outcomes(tmp_path / "old", version_1) == rows
