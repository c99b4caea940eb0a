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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
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


def save_checkpoint(run_dir: Path, trainable: dict[str, torch.Tensor], best: Mapping[str, torch.Tensor],
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
    elif isinstance(best, WeightsOnDisk):  # already a file: linked, not read into memory
        _link_or_copy(best.path, tmp / "best.safetensors")
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
    (Path(run_dir) / BEST_FILE).unlink(missing_ok=True)


SPILL_BYTES = 64 * 2**20
"""Best weights this large or larger are kept on disk, not as a second copy in memory (full tuning of SmolLM2:
0.54 GB); an adapter's stay in memory."""
BEST_FILE = ".best_weights.safetensors"
"""The best weights on disk, in the run directory (``remove_checkpoint`` removes it)."""


class WeightsOnDisk(Mapping[str, torch.Tensor]):
    """Weights in a safetensors file, read when asked for, the file mapped only while they are read."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path, self.names = Path(path), list(names)

    def __getitem__(self, name: str) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def snapshot(trainable: dict[str, torch.nn.Parameter], spill_dir: Path | None = None,
             spill_bytes: int = SPILL_BYTES) -> Mapping[str, torch.Tensor]:
    """A CPU copy of the trainable weights (the best epoch's, kept while training goes on); with ``spill_dir``,
    weights of ``spill_bytes`` or more are written to ``spill_dir/BEST_FILE`` instead (replacing it whole) and
    read back from there."""
    if spill_dir is None or sum(p.nbytes for p in trainable.values()) < spill_bytes:
        return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}
    path = Path(spill_dir) / BEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_on_cpu(trainable), tmp)
    os.replace(tmp, path)  # a new file: a checkpoint still linking or reading the old one keeps it
    return WeightsOnDisk(path, list(trainable))


@torch.no_grad()
def restore(trainable: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` back into the live trainable parameters, on their own devices."""
    for name, param in trainable.items():
        param.copy_(weights[name].to(param.device))
