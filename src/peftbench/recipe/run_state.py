"""What a run's checkpoint holds beyond the weights: where training stands, and how it is saved and resumed.

``RunState`` is the loop's bookkeeping (epoch, optimiser step, history, early stopping, timing, the
micro-batch after out-of-memory halvings); ``save_run`` writes it with the weights, optimiser, scheduler
and RNG states through ``checkpoint.BackgroundWriter``; ``resume_run`` loads them back into the live
objects, so a re-run continues bit-identically from the last checkpoint (tests/test_resume.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from peftbench.config import TrainConfig
from peftbench.recipe import checkpoint
from peftbench.recipe.protocol import EarlyStopping
from peftbench.running import distributed


@dataclass
class RunState:
    """What an epoch checkpoint restores."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopper: EarlyStopping = field(default_factory=EarlyStopping)
    train_tokens: int = 0
    train_seconds: float = 0.0
    """The paper's clock: optimiser steps and the per-epoch validation loss that early stopping needs."""
    to_best_s: float = 0.0
    """``train_seconds`` at the end of the best epoch (``time.train_to_best_s``)."""
    val_metric_seconds: float = 0.0
    """Per-epoch decoding of ``val_metric_examples``: evaluation, off the training clock."""
    checkpointed_s: float = 0.0
    """``train_seconds`` when the last epoch checkpoint was taken."""
    batches_done: int = 0
    """Batches of the unfinished epoch already trained (non-zero only in a checkpoint left by a stop)."""
    epoch_losses: list[float] = field(default_factory=list)
    """Training losses of those batches, one per configured batch."""
    micro_splits: int = 1
    """Each configured batch runs as this many micro-batches (doubled by each CUDA out-of-memory error)."""
    oom_retries: int = 0

    def to_checkpoint(self) -> dict[str, Any]:
        """The fields as ``state.pt`` stores them; lists are copied (training appends to them while the
        checkpoint is written in the background)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**values, "history": list(self.history), "epoch_losses": list(self.epoch_losses),
                "stopper": vars(self.stopper).copy()}

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> RunState:
        """The state ``to_checkpoint`` wrote; fields an older checkpoint lacks keep their defaults."""
        values = {f.name: payload[f.name] for f in fields(cls) if f.name in payload}
        return cls(**{**values, "stopper": EarlyStopping(**payload["stopper"])})

    def batch_plan(self, cfg: TrainConfig) -> dict[str, int | None]:
        """The micro-batch actually used; micro_batch_size × grad_accum stays batch_size × cfg.grad_accum.
        ``max_tokens_per_pass``: the token budget that may split a micro-batch further (None: none)."""
        return {"micro_batch_size": math.ceil(cfg.batch_size / self.micro_splits),
                "grad_accum": cfg.grad_accum * self.micro_splits,
                "effective_batch_size": cfg.batch_size * cfg.grad_accum, "oom_retries": self.oom_retries,
                "max_tokens_per_pass": cfg.max_tokens_per_pass}



def save_run(writer: checkpoint.BackgroundWriter, run_dir: Path, trainable, best_weights, optimizer, scheduler,
          state: RunState, scaler=None) -> None:
    state.checkpointed_s = state.train_seconds  # in every process: the interval counts from here
    if not distributed.is_main_process():  # one writer; the RNG states saved are the main process's
        return
    payload = {**state.to_checkpoint(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "rng": checkpoint.rng_state(),
               "scaler": scaler.state_dict() if scaler is not None else None}  # fp16 loss scale, if any
    # The live weights are written as they are, on the writer's thread (the next optimiser step waits for it);
    # at an epoch's end, the best weights are these very ones when that epoch improved.
    best_is_current = state.batches_done == 0 and state.stopper.best_epoch == state.epoch
    writer.save(run_dir, trainable, best_weights, payload, best_is_trainable=best_is_current)


def resume_run(run_dir: Path, trainable, optimizer, scheduler,
            scaler=None) -> tuple[RunState, dict[str, torch.Tensor]] | None:
    """Load the last checkpoint into the live objects; returns its run state and best weights, or None."""
    try:
        loaded = checkpoint.load_checkpoint(run_dir)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint costs the progress, never the run
        warnings.warn(f"{run_dir}: unreadable checkpoint ({type(exc).__name__}); starting afresh", stacklevel=2)
        return None
    if loaded is None:
        return None
    current, best, payload = loaded
    if set(current) != set(trainable):
        return None  # a checkpoint of another configuration: start afresh
    checkpoint.restore(trainable, current)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    checkpoint.set_rng_state(payload["rng"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return RunState.from_checkpoint(payload), best
