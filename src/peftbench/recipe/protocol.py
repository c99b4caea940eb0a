"""The paper's training protocol: AdamW with its learning-rate schedule, and its early-stopping rule.

AdamW's learning rate rises linearly from ``initial`` to ``peak`` over the warm-up steps, then falls
linearly to ``final`` by the last step (``LRSchedule``, per method in ``peftbench.catalog.methods``, overridable in
``TrainConfig``). Training stops after ``patience`` epochs without a new best validation loss; the best
epoch's weights are tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from peftbench.catalog.methods import LRSchedule, get_method
from peftbench.config import TrainConfig
from peftbench.errors import UserError


def paper_lr_lambda(lr: LRSchedule, total_steps: int, warmup_steps: int):
    """LambdaLR multiplier (of ``lr.peak``): initial → peak linearly over warm-up, then → final linearly."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            value = lr.initial + (lr.peak - lr.initial) * step / warmup_steps
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            value = lr.peak + (lr.final - lr.peak) * progress
        return value / lr.peak if lr.peak else 0.0  # a zero peak (initial and final 0 too): no step moves
    return multiplier


@dataclass
class EarlyStopping:
    """Stop after ``patience`` epochs whose validation loss is not below the best by ``min_delta``."""

    patience: int = 1
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch; True when this epoch is the new best."""
        if val_loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


def resolved_lr(train: TrainConfig, method: str) -> LRSchedule:
    """The method's learning rates, each overridden by ``train``'s when set, all times ``train.lr_scale``. A peak
    of 0 (the optimiser's own rate, which the schedule scales) holds every step's rate at 0, so it needs initial
    and final 0 too: a run whose optimiser steps leave the weights as they started (its forgetting is 0)."""
    default = get_method(method).lr
    lr = LRSchedule(*(train.lr_scale * (own if own is not None else fallback) for own, fallback in (
        (train.lr_initial, default.initial), (train.lr_peak, default.peak), (train.lr_final, default.final))))
    if lr.peak == 0 and (lr.initial or lr.final):
        raise UserError(f"train.lr_peak=0 scales every step's rate to 0: set train.lr_initial=0 and "
                        f"train.lr_final=0 too (resolved: initial {lr.initial}, final {lr.final})")
    return lr


@dataclass
class Schedule:
    """The learning rates (``LRSchedule``: initial, peak, final) and the optimiser steps they span."""

    lr: LRSchedule
    total_steps: int
    warmup_steps: int

    def record(self, steps_done: int, precision: str) -> dict[str, Any]:
        """The result's ``optimizer``: the schedule as planned, the steps taken and the precision."""
        return {"name": "AdamW", "lr_initial": self.lr.initial, "lr_peak": self.lr.peak, "lr_final": self.lr.final,
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps, "steps_done": steps_done,
                "precision": precision}


def schedule_steps(cfg: TrainConfig, train_examples: int, max_epochs: int) -> int:
    """Optimiser steps the schedule spans: batches per epoch / accumulation, times the epochs."""
    return math.ceil(math.ceil(train_examples / cfg.batch_size) / cfg.grad_accum) * max_epochs


def build_optimizer(cfg: TrainConfig, method: str, trainable: dict[str, nn.Parameter], train_examples: int,
                    max_epochs: int, fused: bool = False) -> tuple[torch.optim.Optimizer, LambdaLR, Schedule]:
    """AdamW over the trainable parameters and the paper's schedule: linear warm-up, then linear anneal.
    The optimiser's lr is the peak; LambdaLR scales it. ``fused``: one kernel per step over all tensors
    (the ``fused_adamw`` speed-up; torch's default is ``foreach``)."""
    lr = resolved_lr(cfg, method)
    total_steps = schedule_steps(cfg, train_examples, max_epochs)
    warmup_steps = max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=lr.peak, weight_decay=cfg.weight_decay,
                                  fused=fused)
    scheduler = LambdaLR(optimizer, paper_lr_lambda(lr, total_steps, warmup_steps))
    return optimizer, scheduler, Schedule(lr, total_steps, warmup_steps)
