"""An epoch of optimiser steps: each step's batches as forward/backward passes into one gradient, a CUDA
out-of-memory error answered by halving the micro-batch, a non-finite loss stopped before the weights move.

``train.py``'s recipe calls ``train_epoch`` once per epoch; ``RunState`` (run_state.py) carries where it stands,
so a stop request can checkpoint the very step it came after.
"""

from __future__ import annotations

import math

import torch

from peftbench.config import TrainConfig
from peftbench.recipe import memory
from peftbench.recipe.batching import IGNORE, collate, plan_passes
from peftbench.recipe.loss import segment_losses
from peftbench.recipe.run_state import RunState
from peftbench.running import distributed
from peftbench.speedups import SpeedupPlan


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at optimiser step {step}")
        self.step = step


class Interrupted(RuntimeError):
    """A stop was requested (SIGINT/SIGTERM); a checkpoint of the last optimiser step is kept for resuming."""


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory even at the smallest micro-batch the run may fall back to."""


def train_epoch(model, optimizer, scheduler, accelerator, items, order, cfg: TrainConfig, family: str,
                pad_id: int, state: RunState, stop_requested, speedups: SpeedupPlan, on_step=None) -> float:
    """One pass over the training batches (from ``state.batches_done`` when a stopped epoch resumes);
    returns the mean training loss per batch. ``on_step(state, losses)`` follows each optimiser step."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for start in range(state.batches_done, len(order), cfg.grad_accum):
        group = order[start: start + cfg.grad_accum]
        losses = optimizer_step(model, optimizer, scheduler, accelerator, items, group, cfg, family, pad_id,
                                state, speedups)
        state.step += 1
        state.batches_done = start + len(group)
        state.epoch_losses.extend(losses)
        if on_step is not None:
            on_step(state, losses)
        if stop_requested():
            raise Interrupted(f"stop requested during epoch {state.epoch + 1}, after optimiser step {state.step}")
    mean = float(torch.tensor(state.epoch_losses, dtype=torch.float32).mean())
    state.batches_done, state.epoch_losses = 0, []
    return mean


def optimizer_step(model, optimizer, scheduler, accelerator, items, group: list[list[int]], cfg: TrainConfig,
                   family: str, pad_id: int, state: RunState, speedups: SpeedupPlan) -> list[float]:
    """Accumulate the gradients of ``group``'s batches and step; returns each batch's training loss.

    A CUDA out-of-memory error discards the step's gradients, halves the micro-batch (doubling the
    accumulation, so the effective batch is unchanged) and tries the step again, at most
    ``cfg.max_oom_retries`` times per run. A non-finite loss raises ``Diverged`` before the optimiser
    touches the weights.
    """
    while True:
        try:
            losses, tokens = distributed.accumulate_step(  # this process's share of the group, summed over all
                lambda batches: accumulate(model, accelerator, items, batches, cfg, family, pad_id, state.micro_splits,
                                           speedups),
                group, state.step, optimizer)
            break
        except torch.cuda.OutOfMemoryError:
            micro = math.ceil(cfg.batch_size / state.micro_splits)
            if state.oom_retries >= cfg.max_oom_retries or micro == 1:
                raise OutOfMemory(
                    f"CUDA out of memory at micro-batch {micro} × accumulation {cfg.grad_accum * state.micro_splits}"
                    f" after {state.oom_retries} halving(s) (train.max_oom_retries={cfg.max_oom_retries}); "
                    f"lower train.batch_size or train.max_source_tokens") from None
            state.micro_splits, state.oom_retries = state.micro_splits * 2, state.oom_retries + 1
        optimizer.zero_grad(set_to_none=True)  # outside the except block: the error's frames are freed
        torch.cuda.empty_cache()
    if not all(math.isfinite(loss) for loss in losses):
        raise Diverged(state.step + 1, sum(losses) / len(losses))
    if cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.train_tokens += tokens
    return losses


def accumulate(model, accelerator, items, group: list[list[int]], cfg: TrainConfig, family: str, pad_id: int,
               splits: int, speedups: SpeedupPlan) -> tuple[list[float], int]:
    """Forward and backward every batch of ``group`` in the passes ``batching.plan_passes`` plans (with the
    ``fused_passes`` speed-up: small batches share a pass).

    Returns each batch's loss (its pieces' means weighted by their shares of its target tokens) and the tokens
    processed; one host synchronisation per optimiser step.
    """
    piece_losses: list[list[torch.Tensor]] = [[] for _ in group]
    tokens = 0
    for segments in plan_passes(items, group, family, cfg.batch_size, splits, fuse=speedups.fused_passes,
                               virtual_tokens=speedups.virtual_tokens, max_tokens=cfg.max_tokens_per_pass):
        batch = collate([items[i] for _, piece, _ in segments for i in piece], family, pad_id)
        with accelerator.autocast(), memory.ACTIVATIONS.measure(batch):  # saved bytes, at the widest pass
            means = segment_losses(model, batch, segments, speedups)
        shares = [share for _, _, share in segments]  # of its batch's target tokens (1.0: the whole batch)
        weights = torch.tensor([share / cfg.grad_accum for share in shares], device=means.device)
        accelerator.backward((means * weights).sum())
        for (position, _, _), share, mean in zip(segments, shares, means.detach(), strict=True):
            piece_losses[position].append(mean * share if share != 1.0 else mean)
        tokens += int(batch["attention_mask"].sum())  # host tensors: no synchronisation
        if family == "seq2seq":
            tokens += int((batch["labels"] != IGNORE).sum())
    return torch.stack([torch.stack(losses).sum() for losses in piece_losses]).tolist(), tokens
