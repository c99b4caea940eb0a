"""Result files: the unit of truth.

One finished run is one ``result.json`` under ``<results_dir>/<run_id>/``. Everything a table or a
recommendation shows is read back from these files alone. Writes are atomic (temporary file, fsync,
rename) so a crash leaves either the old file or the new one, never half of one.

The file's fields, their types and which a consumer may rely on are defined once, as a JSON Schema:
``peftbench/result.schema.json`` (``SCHEMA_FILE``; described for readers in docs/results.md). The tests validate
every result a test run writes against it. ``SCHEMA_VERSION`` is raised when a listed field changes meaning
or type (adding a field does not); ``read_result`` reads every version up to it and refuses newer ones.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftbench.atomic import atomic_write_bytes
from peftbench.running.redaction import redact

SCHEMA_VERSION = 2
"""2: ``time.train_to_best_s`` (the paper's clock) replaces ``time.to_best_s``, evaluation has its own time
fields; per-example outcomes; ``metrics.headline``. Readers accept 1."""
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "result.schema.json"
RESULT_FILE = "result.json"
STATUSES = ("ok", "failed", "diverged", "interrupted", "running")


class CorruptResult(ValueError):
    """A result file that exists but cannot be read as a result."""


STORAGE_FAULT = "StorageFault"
"""The error type of a run that failed because its results folder could not take a write (disk full, quota,
read-only). Not the run's fault: a later sweep runs it again without ``retry_failed``."""
UNSAVED = "unsaved"
"""``load_status`` of a run failed by a ``STORAGE_FAULT``: unfinished, so the next sweep runs it again."""
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DENIED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class Unwritable(Exception):
    """Nothing can be written in the results folder, not even a run's failure: the sweep stops here."""

    def __init__(self, folder: Path, cause: BaseException) -> None:
        number = storage_errno(cause)
        super().__init__(f"cannot write in {folder}: {os.strerror(number) if number else cause}")
        self.folder, self.cause = Path(folder), cause


def storage_errno(exc: BaseException, folder: Path | None = None) -> int | None:
    """The errno of a write the filesystem refused (no space, over quota, read-only, no permission) behind
    ``exc``, or None. Rust writers (safetensors, tokenizers) raise their own errors, saying "(os error 28)".
    With ``folder``, a denied permission counts only for a file in it (not a model directory's file)."""
    while exc is not None:
        number = exc.errno if isinstance(exc, OSError) else None
        if number is None:
            found = _RUST_OS_ERROR.search(str(exc))
            number = int(found.group(1)) if found else None
        if number in _FULL_ERRNOS or (number in _DENIED_ERRNOS and _inside(exc, folder)):
            return number
        exc = exc.__cause__ or exc.__context__
    return None


def _inside(exc: BaseException, folder: Path | None) -> bool:
    filename = getattr(exc, "filename", None)
    if folder is None or not filename:
        return True
    return Path(os.path.abspath(filename)).is_relative_to(os.path.abspath(folder))


def is_storage_fault(exc: BaseException, folder: Path | None = None) -> bool:
    return storage_errno(exc, folder) is not None


def storage_error(exc: BaseException, run_dir: Path) -> dict[str, Any]:
    """The ``error`` of a run whose outputs could not be written: one line, naming the folder."""
    number = storage_errno(exc)
    if number in _FULL_ERRNOS:
        advice = "free space and run the sweep again to resume it"
    else:
        advice = "make it writable and run the sweep again to resume it"
    return {"type": STORAGE_FAULT, "message": f"{os.strerror(number)} while writing in {run_dir}; {advice}"}


def write_or_raise(path: Path, payload: dict[str, Any]) -> None:
    """``atomic_write_json``, turning a refused write into ``Unwritable`` (naming the folder)."""
    try:
        atomic_write_json(path, payload)
    except OSError as exc:
        raise Unwritable(Path(path).parent.parent, exc) from None


def set_aside_corrupt(results_dir: Path, run_id: str) -> Path | None:
    """Rename an unreadable result file (an earlier crash's) to ``result.json.corrupt-<UTC time>``; returns
    the new path, or None when the result is readable or absent. The run then counts as not done."""
    path = result_path(results_dir, run_id)
    if not path.exists():
        return None
    try:
        read_result(path)
        return None
    except CorruptResult:
        kept = path.with_name(f"{RESULT_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        os.replace(path, kept)
        return kept


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a mix.

    Secrets from the environment (tokens, API keys) are redacted from every string on the way out.
    """
    text = json.dumps(redact(payload), indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))


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
    if isinstance(payload.get("schema_version"), int) and payload["schema_version"] > SCHEMA_VERSION:
        raise CorruptResult(f"{path}: schema_version {payload['schema_version']} is newer than this peftbench "
                            f"reads (up to {SCHEMA_VERSION}): upgrade peftbench")
    return payload


def iter_results(results_dir: Path, *, warn: bool = True) -> Iterator[dict[str, Any]]:
    """Every readable result under ``results_dir`` (sorted by run id); corrupt files are reported and skipped."""
    for path in sorted(Path(results_dir).glob(f"*/{RESULT_FILE}")):
        try:
            yield read_result(path)
        except CorruptResult as exc:
            if warn:
                warnings.warn(f"skipping corrupt result: {exc}", stacklevel=2)


def load_status(results_dir: Path, run_id: str, *, warn: bool = True) -> str | None:
    """The status of a run's result, ``None`` when absent, ``"corrupt"`` when unreadable, ``"stale"`` when
    an ok result's decoding predates a fix that changes it (``is_stale``), ``UNSAVED`` when it failed for
    want of a writable results folder."""
    path = result_path(results_dir, run_id)
    try:
        if not path.exists():
            return None
        result = read_result(path)
    except (CorruptResult, OSError) as exc:
        if warn:
            warnings.warn(f"corrupt result, the run counts as unfinished: {exc}", stacklevel=1)
        return "corrupt"
    if result["status"] == "failed" and (result.get("error") or {}).get("type") == STORAGE_FAULT:
        return UNSAVED
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
