"""``peftbench export RESULTS_DIR``: every run's result as one flat row, for pandas and friends.

    peftbench export results/quickstart --format parquet --out runs.parquet
    pandas.read_parquet("runs.parquet")      # or read_csv / read_json(lines=True)

One row per result file (any status), sorted by run id; the columns are ``COLUMNS``, in that order, with
the types given there; a field a result lacks (older results have no ``time.load_s`` or ``memory.scope``,
failed runs have no scores) is null. ``schema_version`` is this table's column schema: it is raised only
when a column is renamed, removed or changes meaning; new columns may be added at the end of a group
without raising it. docs/export.md lists the columns with their meaning.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UserError
from peftbench.running.results import iter_results

EXPORT_SCHEMA_VERSION = 1
FORMATS = ("csv", "parquet", "jsonl")


@dataclass(frozen=True)
class Column:
    """One exported column: its name, type (str, int, float, bool) and how to read it from a result."""

    name: str
    type: type
    get: Callable[[dict[str, Any]], Any]


def _breakdown(result: dict[str, Any], part: str) -> int | None:
    """One part of ``memory.breakdown`` (schema-1 results: their trainable and optimiser-state bytes)."""
    from peftbench.analysis.report.memory import breakdown_of

    memory = result.get("memory")
    return breakdown_of(memory).get(part) if isinstance(memory, dict) else None


def at(*path: str) -> Callable[[dict[str, Any]], Any]:
    """The value at ``path`` in a result, None where any part of it is missing."""
    def get(result: dict[str, Any]) -> Any:
        value: Any = result
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value
    return get


def _validation_score(result: dict[str, Any]) -> Any:
    return at("metrics", "validation", at("task", "metric")(result) or "")(result)


def _first_line(result: dict[str, Any]) -> str | None:
    message = at("error", "message")(result)
    return str(message).splitlines()[0] if message else None


def _scale(result: dict[str, Any]) -> str | None:
    scale = at("config", "scale")(result)
    return None if scale is None else str(scale)


COLUMNS: tuple[Column, ...] = (
    Column("schema_version", int, lambda _: EXPORT_SCHEMA_VERSION),
    # coordinates
    Column("run_id", str, at("run_id")),
    Column("model", str, at("config", "model")),
    Column("model_revision", str, at("config", "model_revision")),
    Column("method", str, at("config", "method")),
    Column("task", str, at("config", "task")),
    Column("scale", str, _scale),
    Column("seed", int, at("config", "seed")),
    Column("ablation", str, at("config", "ablation")),
    Column("speedups", str, at("speedups", "setting")),
    # status
    Column("status", str, at("status")),
    Column("error_type", str, at("error", "type")),
    Column("error_message", str, _first_line),
    # scores
    Column("task_type", str, at("task", "type")),
    Column("metric", str, at("task", "metric")),
    Column("headline_metric", str, lambda r: at("task", "headline_metric")(r) or at("task", "metric")(r)),
    Column("score", float, at("metrics", "score")),
    Column("test_accuracy", float, at("metrics", "test", "accuracy")),
    Column("test_mcc", float, at("metrics", "test", "mcc")),
    Column("test_macro_f1", float, at("metrics", "test", "macro_f1")),
    Column("test_rouge_l", float, at("metrics", "test", "rouge_l")),
    Column("test_rank_accuracy", float, at("metrics", "test", "rank_accuracy")),
    Column("test_rank_mcc", float, at("metrics", "test", "rank_mcc")),
    Column("validation_score", float, _validation_score),
    # times
    Column("time_total_s", float, at("time", "total_s")),
    Column("time_load_s", float, at("time", "load_s")),
    Column("time_train_s", float, at("time", "train_s")),
    Column("time_eval_s", float, at("time", "eval_s")),
    Column("time_rank_eval_s", float, at("time", "rank_eval_s")),
    Column("time_train_to_best_s", float,
           lambda r: at("time", "train_to_best_s")(r) if at("time", "train_to_best_s")(r) is not None
           else at("time", "to_best_s")(r)),  # schema 1 named it to_best_s
    Column("time_val_metric_s", float, at("time", "val_metric_s")),
    Column("train_tokens_per_s", float, at("throughput", "train_tokens_per_s")),
    # memory
    Column("memory_peak_bytes", int, at("memory", "peak_bytes")),
    Column("memory_kind", str, at("memory", "kind")),
    Column("memory_scope", str, at("memory", "scope")),
    Column("memory_trainable_param_bytes", int, lambda r: _breakdown(r, "gradients")),
    Column("memory_optimizer_state_bytes", int, lambda r: _breakdown(r, "optimizer_state")),
    *[Column(f"memory_{part}_bytes", int, lambda r, part=part: _breakdown(r, part))
      for part in ("runtime", "weights", "activations", "overhead")],
    Column("adapter_bytes", int, at("adapter", "bytes")),
    # parameters, data, epochs
    Column("params_trainable", int, at("params", "trainable")),
    Column("params_total", int, at("params", "total")),
    Column("train_examples", int, at("data", "train_examples")),
    Column("test_examples", int, at("data", "test_examples")),
    Column("epochs", int, at("epochs")),
    Column("best_epoch", int, at("best_epoch")),
    Column("max_epochs", int, at("max_epochs")),
    # model provenance
    Column("model_family", str, at("model", "family")),
    Column("model_architecture", str, at("model", "architecture")),
    Column("model_source", str, at("model", "source")),
    Column("model_commit", str, at("model", "provenance", "commit")),
    Column("model_sha256", str, at("model", "provenance", "sha256")),
    # versions
    Column("peftbench_version", str, at("versions", "peftbench")),
    Column("git_sha", str, at("versions", "git_sha")),
    Column("git_dirty", bool, at("versions", "git_dirty")),
    Column("python_version", str, at("versions", "python")),
    Column("torch_version", str, at("versions", "torch")),
    Column("transformers_version", str, at("versions", "transformers")),
    Column("peft_version", str, at("versions", "peft")),
    # hardware
    Column("device", str, at("hardware", "device")),
    Column("accelerator", str, at("hardware", "accelerator")),
    Column("processor", str, at("hardware", "processor")),
    Column("cpu_count", int, at("hardware", "cpu_count")),
    Column("torch_threads", int, at("hardware", "torch_threads")),
    Column("instruction_set", str, at("hardware", "instruction_set")),
    Column("precision", str, at("optimizer", "precision")),
    Column("result_schema_version", int, at("schema_version")),
)


def rows(results_dir: Path) -> list[dict[str, Any]]:
    """One flat row per readable result under ``results_dir``, in ``COLUMNS`` order."""
    return [{column.name: _typed(column, column.get(result)) for column in COLUMNS}
            for result in iter_results(results_dir)]


def _typed(column: Column, value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return None
    if column.type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def export(results_dir: Path, fmt: str, out: Path | None) -> int:
    """Write the table to ``out`` (stdout when None; parquet needs a file); returns the number of rows."""
    if fmt not in FORMATS:
        raise UserError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not Path(results_dir).is_dir():
        raise UserError(f"results directory not found: {results_dir}")
    table = rows(results_dir)
    if fmt == "parquet":
        if out is None:
            raise UserError("--format parquet writes a binary file: give --out FILE")
        _write_parquet(table, out)
    elif out is None:
        _write_text(table, fmt, sys.stdout)
    else:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            _write_text(table, fmt, handle)
    return len(table)


def _write_text(table: list[dict[str, Any]], fmt: str, handle) -> None:
    if fmt == "jsonl":
        for row in table:
            handle.write(json.dumps(row) + "\n")
        return
    writer = csv.DictWriter(handle, fieldnames=[column.name for column in COLUMNS])
    writer.writeheader()
    writer.writerows(table)


def _write_parquet(table: list[dict[str, Any]], out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("--format parquet needs pyarrow: pip install 'peftbench[parquet]'") from None
    arrow_types = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    schema = pa.schema([(column.name, arrow_types[column.type]) for column in COLUMNS])
    pq.write_table(pa.Table.from_pylist(table, schema=schema), out)


def add_commands(subparsers) -> None:
    """Add ``export`` to the command line."""
    command = subparsers.add_parser(
        "export", help="every run's result as one flat row (CSV, Parquet or JSON lines)",
        description="One row per result file under RESULTS_DIR with documented, stable columns (docs/export.md).")
    command.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    command.add_argument("--format", choices=FORMATS, default="csv", dest="fmt")
    command.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: standard output")
    command.set_defaults(func=_run)


def _run(args) -> int:
    count = export(args.results_dir, args.fmt, args.out)
    if args.out is not None:
        print(f"{count} run(s) → {args.out}", file=sys.stderr)
    return 0
