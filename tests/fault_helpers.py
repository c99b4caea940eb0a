"""Faults injected into a sweep's worker processes (isolation.py's ``WORKER_SETUP``) or into the sweep process.

Each injector is a module-level function, so that a ``functools.partial`` of it pickles by reference into a
spawned worker. ``for_method`` arms one only in the worker of one method's run (the worker's process name
holds its run id), so the sweep's other runs go on untouched.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUST_DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
"""What safetensors (Rust) raises when the disk fills while it writes weights."""


def for_method(method: str, inject: Callable[[], object]) -> None:
    """Call ``inject`` only in the worker of a run of ``method``."""
    if f"-{method}-" in multiprocessing.current_process().name:
        inject()


def _patch(target: str, make_wrapper: Callable[[Callable], Callable]) -> None:
    """Replace ``target`` ("module:attribute") by ``make_wrapper(original)``."""
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    setattr(module, name, make_wrapper(getattr(module, name)))


def raise_oserror_from(target: str, nth: int, number: int) -> None:
    """From its ``nth`` call on, ``target`` raises OSError ``number`` (a disk that stays full)."""
    calls = [0]

    def make_wrapper(original):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] >= nth:
                raise OSError(number, os.strerror(number))
            return original(*args, **kwargs)
        return wrapper

    _patch(target, make_wrapper)


def refuse_json_writes(path_part: str, number: int, keep_running_status: bool = False) -> None:
    """``results.atomic_write_json`` raises OSError ``number`` for every path holding ``path_part``
    (``keep_running_status``: except the run's "running" status, written before training)."""
    def make_wrapper(original):
        def wrapper(path: Path, payload: dict[str, Any]) -> None:
            if path_part in str(path) and not (keep_running_status and payload.get("status") == "running"):
                raise OSError(number, os.strerror(number))
            return original(path, payload)
        return wrapper

    _patch("peftbench.running.results:atomic_write_json", make_wrapper)


def adapter_save_fills_the_disk() -> None:
    """The adapter's save writes part of its weights file, then fails as safetensors does on a full disk."""
    def make_wrapper(_original):
        def save_adapter(model, tokenizer, run_dir: Path, enabled: bool) -> dict:
            (Path(run_dir) / "adapter").mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
            raise RuntimeError(RUST_DISK_FULL)
        return save_adapter

    _patch("peftbench.recipe.train:_save_adapter", make_wrapper)


def hang_at(target: str, nth: int) -> None:
    """At its ``nth`` call, ``target`` never returns (a worker stuck in native code, a dead device)."""
    calls = [0]

    def make_wrapper(original):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            while calls[0] == nth:  # a SIGTERM's handler runs, and the sleep goes on
                time.sleep(60)
            return original(*args, **kwargs)
        return wrapper

    _patch(target, make_wrapper)
