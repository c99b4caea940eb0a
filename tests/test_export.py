"""``peftbench export``: one flat row per result with the documented columns, read back by pandas from CSV,
Parquet and JSON lines; fields an older or failed result lacks are null."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sweep_helpers import read_results, tiny_overrides

from peftbench.analysis.export import COLUMNS, EXPORT_SCHEMA_VERSION
from peftbench.cli import main
from peftbench.config import load_sweep
from peftbench.running.sweep import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

pd = pytest.importorskip("pandas")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
FAILED_RUN = "t5_tiny_random-prompt-synthetic_classification-8-s0-0000000000"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """Two ok tiny runs and the result file of a failed one (no scores, times or memory)."""
    results_dir = tmp_path_factory.mktemp("export")
    run_sweep(load_sweep(None, tiny_overrides(results_dir, methods=("lora", "bitfit"), epochs=1)), progress=False)
    failed = {"schema_version": 1, "run_id": FAILED_RUN, "status": "failed", "seed": 0,
              "config": {"model": "t5-tiny-random", "method": "prompt", "task": "synthetic_classification",
                         "scale": 8, "seed": 0, "ablation": None},
              "error": {"type": "UserError", "message": "a first line\nand a second"}}
    (results_dir / FAILED_RUN).mkdir()
    (results_dir / FAILED_RUN / "result.json").write_text(json.dumps(failed))
    return results_dir


def read_back(path: Path, fmt: str):
    readers = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}
    return readers[fmt](path)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_one_row_per_run_with_the_documented_columns(results_dir, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"runs.{fmt}"
    assert main(["export", str(results_dir), "--format", fmt, "--out", str(out)]) == 0
    table = read_back(out, fmt).set_index("run_id", drop=False)
    results = read_results(results_dir)
    assert list(table.columns) == [column.name for column in COLUMNS]
    assert sorted(table.index) == sorted(results) and len(table) == 3
    assert set(table.schema_version) == {EXPORT_SCHEMA_VERSION}
    for run_id, result in results.items():
        row = table.loc[run_id]
        assert (row.model, row.method, row.status) == ("t5-tiny-random", result["config"]["method"], result["status"])
        if result["status"] == "ok":
            assert row.score == pytest.approx(result["metrics"]["score"])
            assert row.params_trainable == result["params"]["trainable"]
            assert row.time_total_s == pytest.approx(result["time"]["total_s"])
            assert row.memory_peak_bytes == result["memory"]["peak_bytes"]
            assert (row.epochs, row.best_epoch, str(row.scale)) == (1, 1, "8")  # CSV readers infer 8
            assert row.torch_version == result["versions"]["torch"] and row.device == "cpu"
            assert (row.instruction_set, row.precision) == (result["hardware"]["instruction_set"],
                                                            result["optimizer"]["precision"])
            assert row.time_load_s == pytest.approx(result["time"]["load_s"])
            assert pd.isna(row.test_rouge_l)  # a classification task's results have no ROUGE-L
    failed = table.loc[FAILED_RUN]
    assert (failed.error_type, failed.error_message) == ("UserError", "a first line")
    assert pd.isna(failed.score) and pd.isna(failed.params_trainable) and pd.isna(failed.time_total_s)


def test_parquet_columns_keep_their_types_when_all_null(results_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "runs.parquet"
    main(["export", str(results_dir), "--format", "parquet", "--out", str(out)])
    types = {field.name: str(field.type) for field in pq.read_schema(out)}
    expected = {str: "string", int: "int64", float: "double", bool: "bool"}
    assert types == {column.name: expected[column.type] for column in COLUMNS}
    assert types["time_load_s"] == "double"
    assert types["model_commit"] == "string"  # null in every row here (no hub model)


def test_csv_goes_to_standard_output_without_out(results_dir, capsys):
    assert main(["export", str(results_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(column.name for column in COLUMNS) and len(lines) == 4


def test_every_column_is_documented():
    documented = re.findall(r"^\| `(\w+)` \| (\w+) \|", DOCS.read_text(), flags=re.M)
    assert documented == [(column.name, column.type.__name__) for column in COLUMNS]


def test_a_missing_results_directory_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == f"peftbench: error: results directory not found: {tmp_path / 'none'}"
