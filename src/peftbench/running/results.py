"""Result files: the unit of truth.

One finished run is one ``result.json`` under ``<results_dir>/<run_id>/``. Everything a table or a
recommendation shows is read back from these files alone. Writes are atomic (temporary file, fsync,
rename) so a crash leaves either the old file or the new one, never half of one.

Schema (``schema_version`` 1), the fields every consumer may rely on:

    run_id            str     stable id derived from the resolved run config
    status            str     "ok" | "failed" | "diverged" | "interrupted" | "running"
    error             dict?   {"type", "message", "step"?} when status is not ok
    config            dict    the resolved RunConfig (model, method, task, scale, seed, layers, modules, ...)
    seed              int
    task              dict    {"name", "type": "classification"|"generation", "metric", "version"}
    model             dict    {"name", "source", "family": "seq2seq"|"causal", "architecture", "revision",
                               "provenance": {"kind": "hub"|"gguf"|"directory"|"built", ...}} (models.py)
    data              dict    {"train_examples", "validation_examples", "test_examples",
                               "requested_train_examples", "sample_hash", "splits": {...},
                               "source": "synthetic" | "huggingface-hub" | a local data folder}
    versions          dict    {"peftbench", "git_sha", "git_dirty", "python", "torch", "transformers", ...}
    hardware          dict    {"device", "accelerator", "cpu_count", "platform", ...}
    params            dict    {"trainable", "total" (with what the method adds), "base" (the base model's,
                               before the method), "selected_layers"?}
    epochs            int     epochs actually run (early stopping may end before the maximum)
    best_epoch        int     1-based epoch whose checkpoint was tested
    history           list    per epoch {"epoch", "train_loss", "val_loss", "val_metric", "seconds", "steps"}
    method            dict    {"name", "kind": "fine_tuning" | "reference"} (reference rows: majority, zero_shot,
                              in_context; they train nothing: params.trainable 0, epochs 0, optimizer None)
    reference         dict    reference rows only: {"answer", "train_counts"} (majority), {"k", "shown_mean"}
                              (in_context), {} (zero_shot)
    metrics           dict    {"test": {<metric>: float, "rank_accuracy": float (classification, by default)},
                               "score": float (the task's metric, from ``metrics.METRICS``)}
    time              dict    {"train_s", "eval_s", "rank_eval_s" (None unless ranked), "load_s" (the model's
                               read or copy), "total_s" (the run's wall time without load_s), "to_best_s",
                               "forgetting_s" (the general-text passes, an evaluation time; absent in older
                               results)}
    forgetting        dict    {"loss", "reference_loss", "base_loss", "sample": {"source", "paragraphs", "tokens",
                               "hash"}, "reason"} beside ``metrics.forgetting`` = loss − reference_loss (nats per
                               token; None with the reason where not measured) (``recipe/forgetting.py``)
    throughput        dict    {"train_tokens_per_s", "train_tokens"}
    memory            dict    {"peak_bytes", "kind": "cuda_max_allocated" | "process_peak_rss",
                               "scope": "run" | "run_process" | "shared_process", "after_load_bytes",
                               "increment_bytes", "trainable_param_bytes", "optimizer_state_bytes",
                               "adapter_bytes"} (memory.py)
    adapter           dict    {"path", "bytes"}
    serving           dict?   the serve stage's figures with ``serve.enabled`` (``serving.py``), else null
    speedups          dict    {"setting": "all"|"none"|"custom", "levers": {<lever>: {"status": "applied" |
                              "not_applicable" | "off", "reason": str?}}} (``speedups/plan.py``)
    decoding_revision int     ``DECODING_REVISION`` of the code that decoded the test (absent before 2)
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftbench.running.redaction import redact

SCHEMA_VERSION = 2
"""2: ``time.train_to_best_s`` (the paper's clock) replaces ``time.to_best_s``, evaluation has its own time
fields; per-example outcomes; ``metrics.headline``. Readers accept 1."""
RESULT_FILE = "result.json"
STATUSES = ("ok", "failed", "diverged", "interrupted", "running")


class CorruptResult(ValueError):
    """A result file that exists but cannot be read as a result."""


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a mix.

    Secrets from the environment (tokens, API keys) are redacted from every string on the way out.
    """
    path = Path(path)
    payload = redact(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def result_path(results_dir: Path, run_id: str) -> Path:
    return Path(results_dir) / run_id / RESULT_FILE


def read_result(path: Path) -> dict[str, Any]:
    """Read one result file; raise CorruptResult naming the file when it is not a valid result."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResult(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise CorruptResult(f"{path}: top level is {type(payload).__name__}, not an object")
    missing = [key for key in ("run_id", "status", "config") if key not in payload]
    if missing:
        raise CorruptResult(f"{path}: missing field(s) {', '.join(missing)}")
    if payload["status"] not in STATUSES:
        raise CorruptResult(f"{path}: unknown status {payload['status']!r}")
    return payload


def iter_results(results_dir: Path, *, warn: bool = True) -> Iterator[dict[str, Any]]:
    """Every readable result under ``results_dir`` (sorted by run id); corrupt files are reported and skipped."""
    for path in sorted(Path(results_dir).glob(f"*/{RESULT_FILE}")):
        try:
            yield read_result(path)
        except CorruptResult as exc:
            if warn:
                warnings.warn(f"skipping corrupt result: {exc}", stacklevel=2)


def load_status(results_dir: Path, run_id: str) -> str | None:
    """The status of a run's result, ``None`` when absent, ``"corrupt"`` when unreadable, ``"stale"`` when
    an ok result's decoding predates a fix that changes it (``is_stale``)."""
    path = result_path(results_dir, run_id)
    if not path.exists():
        return None
    try:
        result = read_result(path)
    except CorruptResult as exc:
        warnings.warn(f"corrupt result, the run counts as unfinished: {exc}", stacklevel=1)
        return "corrupt"
    if is_stale(result):
        warnings.warn(f"{run_id}: its test was decoded before decoding revision {DECODING_REVISION} (prompt "
                      "learning on a causal model re-injected its soft prompt at every step); it runs again",
                      stacklevel=1)
        return "stale"
    return result["status"]


DECODING_REVISION = 2
"""Raised when a fix changes what decoding produced for runs that were ok; results record theirs as
``decoding_revision``. 2: PEFT prompt learning on causal models decodes with its cache (peft_compat.py)."""
PROMPT_LEARNING_METHODS = frozenset({"prompt", "prompt_tuning", "prefix_tuning", "p_tuning"})
"""peftbench's prompt tuning, and PEFT's prompt-learning methods by their PEFT names."""


def is_stale(result: dict[str, Any]) -> bool:
    """An ok result of causal-model prompt learning decoded before ``DECODING_REVISION`` 2."""
    return (result.get("status") == "ok" and result.get("decoding_revision", 1) < 2
            and result.get("model", {}).get("family") == "causal"
            and result.get("config", {}).get("method") in PROMPT_LEARNING_METHODS)
