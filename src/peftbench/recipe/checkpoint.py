"""Epoch checkpoints: everything needed to continue a run exactly where it stopped.

Layout of ``<run_dir>/checkpoint/``: ``trainable.safetensors`` (current trainable weights),
``best.safetensors`` (the best epoch's trainable weights) and ``state.pt`` (optimiser, scheduler, RNG
states, history, early-stopping state; read back with ``weights_only=True``, so no code can run).
A checkpoint is written to a temporary directory and renamed into place: it is whole or absent.
Training writes it on a background thread (``BackgroundWriter``) and goes on meanwhile.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as ``save_file`` takes them: on the CPU, contiguous, no two sharing memory. A CPU tensor is
    not copied (full tuning of a 135M model: 540 MB less to copy per checkpoint)."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        out[name] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return out


def save_checkpoint(run_dir: Path, trainable: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
                    state: dict[str, Any], best_is_trainable: bool = False) -> None:
    """Write the checkpoint. ``best_is_trainable``: the best weights are the current ones (the epoch just
    finished is the best so far), so ``best.safetensors`` is a hard link to ``trainable.safetensors``."""
    target = Path(run_dir) / CHECKPOINT_DIR
    tmp = Path(run_dir) / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_on_cpu(trainable), tmp / "trainable.safetensors")
    if best_is_trainable:
        _link_or_copy(tmp / "trainable.safetensors", tmp / "best.safetensors")
    else:
        save_file(_on_cpu(best), tmp / "best.safetensors")
    torch.save(state, tmp / "state.pt")
    old = Path(run_dir) / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


class BackgroundWriter:
    """Writes checkpoints on a background thread while training goes on; at most one write is in flight.

    A checkpoint of full tuning is 12 bytes per parameter (weights and AdamW's two moments; 1.6 GB for
    135M), seconds to write on a CPU machine. Training computes meanwhile. On a small CPU machine copying
    into the page cache competes with training for the cores, so only part of the write hides (measured:
    bench/RESULTS.md); where the CPU idles while a GPU trains, more of it can hide (not measured). The tensors handed to ``save`` are written as they are, not copied, so nothing may change
    them until ``wait`` returns: the recipe registers ``wait`` as an optimiser step pre-hook and leaves the
    ``with`` block before it restores the best weights. A failed write is raised by the next ``wait``.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, run_dir: Path, trainable: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
             state: dict[str, Any], best_is_trainable: bool = False) -> None:
        """Start writing a checkpoint (``save_checkpoint``'s arguments), after the previous one is written."""
        self.wait()

        def write() -> None:
            try:
                save_checkpoint(run_dir, trainable, best, state, best_is_trainable)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="peftbench-checkpoint")
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.wait()
            return
        try:  # an error already on its way out wins over a failed write
            self.wait()
        except Exception as write_error:  # noqa: BLE001
            warnings.warn(f"checkpoint write failed: {write_error!r}", stacklevel=2)


def _link_or_copy(source: Path, link: Path) -> None:
    try:
        os.link(source, link)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, link)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
    """(trainable, best, state) of the last completed epoch, or None when there is no whole checkpoint.

    A process killed inside ``save_checkpoint`` between its two renames leaves no ``checkpoint`` but the
    previous one whole under ``.checkpoint.old``: resume from that rather than from the start.
    """
    for target in (Path(run_dir) / CHECKPOINT_DIR, Path(run_dir) / f".{CHECKPOINT_DIR}.old"):
        files = [target / name for name in ("trainable.safetensors", "best.safetensors", "state.pt")]
        if all(f.is_file() for f in files):
            break
    else:
        return None
    state = torch.load(files[2], map_location="cpu", weights_only=True)
    return load_file(files[0]), load_file(files[1]), state


_ALL_DIRS = (CHECKPOINT_DIR, f".{CHECKPOINT_DIR}.old", f".{CHECKPOINT_DIR}.tmp")


def has_checkpoint_files(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in _ALL_DIRS)


def remove_checkpoint(run_dir: Path) -> None:
    for name in _ALL_DIRS:
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def snapshot(trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable weights (the best epoch's, kept while training goes on)."""
    return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}


@torch.no_grad()
def restore(trainable: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` back into the live trainable parameters, on their own devices."""
    for name, param in trainable.items():
        param.copy_(weights[name].to(param.device))
