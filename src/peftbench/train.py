"""The recipe: one benchmark cell, top to bottom.

load data at the scale → load the model → apply the method (+ layer/module selection) → train with the
paper's schedule (AdamW, linear warm-up then linear anneal, batch 16 × accumulation 4), validate each
epoch, stop early when validation loss stops falling → test the best epoch's weights → measure.

Returns the result dict that ``results.py`` describes. Failures are raised (``Diverged``,
``Interrupted`` or an ordinary exception); the sweep turns them into result files.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import get_mixed_precision_context_manager
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from peftbench import checkpoint, distributed, environment, run_state
from peftbench.ablations import resolve_selection
from peftbench.batching import IGNORE, Encoded, collate, length_grouped_batches, plan_passes
from peftbench.config import RunConfig, TrainConfig
from peftbench.datacache import encode_cached
from peftbench.dropout import cpu_dropout
from peftbench.evaluate import causal_target_loss, score, target_token_losses
from peftbench.kernels import pass_attention
from peftbench.methods import LRSchedule, apply_method
from peftbench.models import LoadedModel, load_model
from peftbench.precision import store_frozen_linears_in
from peftbench.prefix import prefix_to_share
from peftbench.protocol import EarlyStopping, paper_lr_lambda, resolved_lr
from peftbench.run_state import RunState
from peftbench.tasks import TaskSpec, get_task
from peftbench.tasks.data import TaskData, load_task_data, scale_cap_and_epochs


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at optimiser step {step}")
        self.step = step


class Interrupted(RuntimeError):
    """A stop was requested (SIGINT/SIGTERM); a checkpoint of the last optimiser step is kept for resuming."""


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory even at the smallest micro-batch the run may fall back to."""


# --- one cell ----------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(precision: str, model_type: str) -> Accelerator:
    """bf16 autocast where supported ("auto"), except T5 on GPUs without bf16 (fp16 overflows in T5)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # each run picks its own precision
    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 or not torch.cuda.is_available() else "fp32"
        if torch.cuda.is_available() and not cuda_bf16 and model_type != "t5":
            precision = "fp16"
    return Accelerator(mixed_precision="no" if precision == "fp32" else precision)


@dataclass
class Cell:
    """One cell before training: the task and its data at the run's scale, the model with the method
    applied (``trainable``: its declared trainable parameters), and the tokenised splits."""

    task: TaskSpec
    data: TaskData
    loaded: LoadedModel
    model: nn.Module
    trainable: dict[str, nn.Parameter]
    params: dict[str, Any]
    encoded: dict[str, list[Encoded]]
    max_epochs: int


def prepare_cell(run: RunConfig, device_map: str | None = None) -> Cell:
    """Load the data and the model, apply the method (+ layer/module selection), tokenise the splits."""
    cfg = run.train
    seed_everything(run.seed)
    # Identical splits for every method of a cell: they depend on task, scale and seed only.
    task = get_task(run.task)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, cfg.eval_examples)
    loaded = load_model(run.model, run.trust_remote_code, device_map)
    # Seed again: the first load in a process may draw random numbers (tiny models are built from seed 0),
    # and a run must not depend on whether an earlier run in the same process loaded the model already.
    seed_everything(run.seed)
    layers, modules = resolve_selection(run.ablation, run.layers, run.modules)
    applied = apply_method(loaded.model, loaded.family, run.method, run.method_options,
                           layers=layers, modules=modules, seed=run.seed)
    params = {"trainable": sum(p.numel() for p in applied.trainable.values()),
              "total": sum(p.numel() for p in {id(p): p for p in applied.model.parameters()}.values()),
              "selected_layers": applied.selected_layers or None}
    # Tokenise once per split (cached on disk across runs and processes).
    encoded = {split: encode_cached(task, getattr(data, split), loaded.tokenizer, loaded.family,
                                    cfg.max_source_tokens, cfg.max_target_tokens)
               for split in ("train", "validation", "test")}
    max_epochs = cfg.max_epochs or scale_cap_and_epochs(run.scale)[1]
    return Cell(task, data, loaded, applied.model, applied.trainable, params, encoded, max_epochs)


@dataclass
class Schedule:
    """The learning rates (``LRSchedule``: initial, peak, final) and the optimiser steps they span."""

    lr: LRSchedule
    total_steps: int
    warmup_steps: int


def build_optimizer(cfg: TrainConfig, method: str, trainable: dict[str, nn.Parameter], train_examples: int,
                    max_epochs: int) -> tuple[torch.optim.Optimizer, LambdaLR, Schedule]:
    """AdamW over the trainable parameters and the paper's schedule: linear warm-up, then linear anneal.
    The optimiser's lr is the peak; LambdaLR scales it."""
    lr = resolved_lr(cfg, method)
    steps_per_epoch = math.ceil(math.ceil(train_examples / cfg.batch_size) / cfg.grad_accum)
    total_steps = steps_per_epoch * max_epochs
    warmup_steps = max(1, round(cfg.warmup_fraction * total_steps)) if cfg.warmup_fraction > 0 else 0
    # fused: one kernel per step over all tensors (CPU: 0.07 s against foreach's 0.25-0.30 s for 135M
    # weights), the transformers Trainer's default optimiser since torch 2.8.
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=lr.peak, weight_decay=cfg.weight_decay,
                                  fused=True)
    scheduler = LambdaLR(optimizer, paper_lr_lambda(lr, total_steps, warmup_steps))
    return optimizer, scheduler, Schedule(lr, total_steps, warmup_steps)


@dataclass
class Loop:
    """The live objects of one run's training loop (``model`` and ``optimizer`` as accelerate prepared them)."""

    run: RunConfig
    run_dir: Path
    cell: Cell
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    accelerator: Accelerator
    writer: checkpoint.BackgroundWriter

    def autocast(self):
        """Re-enterable (torch.autocast or nullcontext): evaluation enters the one it is given once per batch,
        which accelerator.autocast(), a one-shot generator context manager, does not survive."""
        return get_mixed_precision_context_manager(self.accelerator.native_amp, self.accelerator.autocast_handler)

    def save(self, state: RunState, best_weights: dict[str, torch.Tensor]) -> None:
        run_state.save_run(self.writer, self.run_dir, self.cell.trainable, best_weights, self.optimizer,
                           self.scheduler, state, self.accelerator.scaler)


def run_cell(run: RunConfig, run_dir: Path, *, progress: bool = True, stop_requested=lambda: False,
             device_map: str | None = None) -> dict:
    """Train, validate and test one cell; returns the result dict (status ok).

    ``device_map`` splits the model over the visible GPUs (``models.place_on_gpus``): where the run
    executes, not what it computes, so it is not part of the run's config or id.
    """
    started = time.perf_counter()
    cfg = run.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cell = prepare_cell(run, device_map)
    optimizer, scheduler, schedule = build_optimizer(cfg, run.method, cell.trainable, len(cell.encoded["train"]),
                                                     cell.max_epochs)
    # Checkpoints are written while training goes on (checkpoint.BackgroundWriter): no optimiser step may
    # change the weights and moments being written. On the bare optimiser, which accelerate wraps below.
    writer = checkpoint.BackgroundWriter()
    optimizer.register_step_pre_hook(lambda *_: writer.wait())
    accelerator = make_accelerator(cfg.precision, cell.loaded.architecture)
    # Frozen linears stored in bf16 once rather than re-cast by autocast at every call (see precision.py).
    bf16 = accelerator.mixed_precision == "bf16"
    frozen_bf16 = store_frozen_linears_in(cell.model, torch.bfloat16) if bf16 else 0
    model, optimizer = distributed.prepare(accelerator, cell.model, optimizer)  # no DDP wrapper: distributed.py
    environment.reset_peak_memory(accelerator.device)
    loop = Loop(run, Path(run_dir), cell, model, optimizer, scheduler, accelerator, writer)

    state = RunState(stopper=EarlyStopping(cfg.patience, cfg.min_delta))
    best_weights = checkpoint.snapshot(cell.trainable)
    resumed = run_state.resume_run(loop.run_dir, cell.trainable, optimizer, scheduler, accelerator.scaler)
    if resumed is not None:
        state, best_weights = resumed
    resumed_from = state.epoch if resumed is not None else None
    distributed.check_in_sync(cell.trainable, state.epoch, state.step)
    with writer:  # leaving it waits for the last write: the best weights are restored below
        best_weights = train_until_stopped(loop, state, best_weights, progress, stop_requested)

    # Test the best epoch's weights (the paper's protocol).
    checkpoint.restore(cell.trainable, best_weights)
    eval_started = time.perf_counter()
    tokenizer, family = cell.loaded.tokenizer, cell.loaded.family
    predictions = distributed.generate(model, cell.encoded["test"], tokenizer, family, cell.task.generation_budget,
                                       cfg.eval_batch_size, accelerator.device, loop.autocast())
    test_score = score(cell.task, predictions, cell.data.test)
    eval_s = time.perf_counter() - eval_started
    adapter = _save_adapter(accelerator.unwrap_model(model), tokenizer, loop.run_dir, cfg.save_adapter)
    # The last checkpoint stays until the caller has written the result (sweep.execute_run removes it).
    times = {"train_s": state.train_seconds, "eval_s": eval_s, "total_s": time.perf_counter() - started,
             "to_best_s": state.to_best_s}
    optimizer_info = {"name": "AdamW", "lr_initial": schedule.lr.initial, "lr_peak": schedule.lr.peak,
                      "lr_final": schedule.lr.final, "total_steps": schedule.total_steps,
                      "warmup_steps": schedule.warmup_steps, "steps_done": state.step,
                      "precision": accelerator.mixed_precision, "frozen_bf16_linears": frozen_bf16}
    return {**_result(run, cell, state, predictions, test_score), "optimizer": optimizer_info, "time": times,
            "hardware": {**environment.hardware(accelerator.device), "device_map": device_map},
            "memory": environment.peak_memory(accelerator.device), "adapter": adapter,
            "resumed_from_epoch": resumed_from}


def train_until_stopped(loop: Loop, state: RunState, best_weights: dict[str, torch.Tensor], progress: bool,
                        stop_requested) -> dict[str, torch.Tensor]:
    """Train epoch after epoch, from ``state`` on, until ``max_epochs`` or early stopping; returns the best
    epoch's weights. A stop request checkpoints the last optimiser step and raises ``Interrupted``."""
    cfg, cell = loop.run.train, loop.cell
    bar = tqdm(total=cell.max_epochs, initial=state.epoch, desc=f"{loop.run.method}/{loop.run.task}",
               unit="epoch", disable=not progress, leave=False)
    while state.epoch < cell.max_epochs and not state.stopper.should_stop:
        epoch_started = time.perf_counter()
        order = length_grouped_batches(cell.encoded["train"], cfg.batch_size,
                                       seed=loop.run.seed * 1000 + state.epoch + 1,
                                       group_by_length=cfg.group_by_length)
        try:
            train_loss = _train_epoch(loop.model, loop.optimizer, loop.scheduler, loop.accelerator,
                                      cell.encoded["train"], order, cfg, cell.loaded.family,
                                      cell.loaded.tokenizer.pad_token_id, state, stop_requested)
        except Interrupted:  # keep the steps done so far: the re-run continues from this very step
            state.train_seconds += time.perf_counter() - epoch_started
            loop.save(state, best_weights)
            raise
        best_weights = _end_epoch(loop, state, best_weights, train_loss, epoch_started)
        bar.update(1)
        bar.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{state.history[-1]['val_loss']:.3f}")
    bar.close()
    return best_weights


def _end_epoch(loop: Loop, state: RunState, best_weights: dict[str, torch.Tensor], train_loss: float,
               epoch_started: float) -> dict[str, torch.Tensor]:
    """Validate the epoch just trained, record it, keep its weights if they are the best so far (returns the
    best weights), and checkpoint when one is due."""
    cfg, cell, epoch = loop.run.train, loop.cell, state.epoch + 1
    family, pad_id, device = cell.loaded.family, cell.loaded.tokenizer.pad_token_id, loop.accelerator.device
    val_loss = distributed.validation_loss(loop.model, cell.encoded["validation"], family, pad_id,
                                           cfg.eval_batch_size, device, loop.autocast())
    val_metric = _validation_metric(loop, cfg.val_metric_examples) if cfg.val_metric_examples else None
    seconds = time.perf_counter() - epoch_started
    state.train_seconds += seconds
    if state.stopper.update(epoch, val_loss):
        best_weights = checkpoint.snapshot(cell.trainable)
        state.to_best_s = state.train_seconds
    state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": val_metric,
                          "seconds": seconds, "steps": state.step, "lr": loop.scheduler.get_last_lr()[0]})
    state.epoch = epoch
    # No checkpoint after the last epoch: its best weights are tested at once, from memory. A process that
    # dies during that test re-trains from the previous checkpoint or the start (bit-identically), which
    # costs less over a sweep than writing one more checkpoint per run (full tuning: weights and AdamW
    # state, 12 bytes per parameter). For the same reason, epochs closer than checkpoint_interval_s to
    # the last checkpoint write none.
    last_epoch = state.epoch >= cell.max_epochs or state.stopper.should_stop
    due = state.train_seconds - state.checkpointed_s >= cfg.checkpoint_interval_s
    if cfg.checkpoint_every_epoch and due and not last_epoch:
        loop.save(state, best_weights)
    return best_weights


def _result(run: RunConfig, cell: Cell, state: RunState, predictions: list[str], test_score: float) -> dict:
    """The result fields that describe the cell, its training and its test (``results.py``)."""
    task, loaded = cell.task, cell.loaded
    best_val_metric = state.history[state.stopper.best_epoch - 1]["val_metric"]
    return {
        "status": "ok", "error": None, "seed": run.seed,
        "task": {"name": task.name, "type": task.type, "metric": task.metric, "version": task.version},
        "model": {"name": loaded.name, "source": loaded.source, "family": loaded.family,
                  "architecture": loaded.architecture},
        "data": {**cell.data.info, "scale": run.scale},
        "batch": state.batch_plan(run.train),
        "versions": environment.versions(),
        "params": cell.params, "epochs": state.epoch, "max_epochs": cell.max_epochs,
        "best_epoch": state.stopper.best_epoch, "history": state.history,
        "metrics": {"test": {task.metric: test_score}, "score": test_score,
                    "validation": {task.metric: best_val_metric}},
        "predictions_sample": [{"prompt": e.prompt[-200:], "prediction": p, "references": list(e.references[:3])}
                               for e, p in list(zip(cell.data.test, predictions, strict=True))[:5]],
        "throughput": {"train_tokens": state.train_tokens,
                       "train_tokens_per_s": state.train_tokens / state.train_seconds if state.train_seconds
                       else None},
    }


def _train_epoch(model, optimizer, scheduler, accelerator, items, order, cfg: TrainConfig, family: str,
                 pad_id: int, state: RunState, stop_requested) -> float:
    """One pass over the training batches (from ``state.batches_done`` when a stopped epoch resumes);
    returns the mean training loss per batch."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for start in range(state.batches_done, len(order), cfg.grad_accum):
        group = order[start: start + cfg.grad_accum]
        losses = _optimizer_step(model, optimizer, scheduler, accelerator, items, group, cfg, family, pad_id,
                                 state)
        state.step += 1
        state.batches_done = start + len(group)
        state.epoch_losses.extend(losses)
        if stop_requested():
            raise Interrupted(f"stop requested during epoch {state.epoch + 1}, after optimiser step {state.step}")
    mean = float(torch.tensor(state.epoch_losses, dtype=torch.float32).mean())
    state.batches_done, state.epoch_losses = 0, []
    return mean


def _optimizer_step(model, optimizer, scheduler, accelerator, items, group: list[list[int]], cfg: TrainConfig,
                    family: str, pad_id: int, state: RunState) -> list[float]:
    """Accumulate the gradients of ``group``'s batches and step; returns each batch's training loss.

    A CUDA out-of-memory error discards the step's gradients, halves the micro-batch (doubling the
    accumulation, so the effective batch is unchanged) and tries the step again, at most
    ``cfg.max_oom_retries`` times per run. A non-finite loss raises ``Diverged`` before the optimiser
    touches the weights.
    """
    while True:
        try:
            losses, tokens = distributed.accumulate_step(  # this process's share of the group, summed over all
                lambda batches: _accumulate(model, accelerator, items, batches, cfg, family, pad_id, state.micro_splits),
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


def _accumulate(model, accelerator, items, group: list[list[int]], cfg: TrainConfig, family: str, pad_id: int,
                splits: int) -> tuple[list[float], int]:
    """Forward and backward every batch of ``group`` in the passes ``batching.plan_passes`` plans (CPU: small
    batches fused).

    Returns each batch's loss (the mean of its micro-batches') and the tokens processed; one host
    synchronisation per optimiser step.
    """
    device = accelerator.device
    piece_losses: list[list[torch.Tensor]] = [[] for _ in group]
    tokens = torch.zeros((), dtype=torch.long, device=device)
    for segments in plan_passes(items, group, family, cfg.batch_size, splits, fuse=device.type == "cpu"):
        batch = collate([items[i] for _, piece, _ in segments for i in piece], family, pad_id)
        prefix = prefix_to_share(model, batch) if family == "causal" else 0  # on the host copy: no sync
        batch = {k: v.to(device) for k, v in batch.items()}
        with (accelerator.autocast(), pass_attention(model, batch["input_ids"].shape[1], device, training=True),
              cpu_dropout(device)):
            means = _segment_losses(model, batch, family, segments, prefix)
        weights = torch.tensor([1.0 / (cfg.grad_accum * pieces) for _, _, pieces in segments], device=device)
        accelerator.backward((means * weights).sum())
        for (position, _, _), mean in zip(segments, means.detach(), strict=True):
            piece_losses[position].append(mean)
        tokens += batch["attention_mask"].sum()
        if family == "seq2seq":
            tokens += (batch["labels"] != IGNORE).sum()
    return torch.stack([torch.stack(losses).mean() for losses in piece_losses]).tolist(), int(tokens)


def _segment_losses(model, batch, family: str, segments, prefix: int) -> torch.Tensor:
    """The mean loss over the target tokens of each segment of a pass (causal: the LM head runs only where a
    target token is predicted, and a ``prefix`` every row shares runs once)."""
    if len(segments) == 1:
        loss = causal_target_loss(model, batch, prefix=prefix) if family == "causal" else model(**batch).loss
        return loss.unsqueeze(0)
    losses, rows = target_token_losses(model, batch, family, prefix)
    owner = torch.tensor([s for s, (_, piece, _) in enumerate(segments) for _ in piece], device=losses.device)
    segment = owner[rows]
    sums = torch.zeros(len(segments), device=losses.device).index_add_(0, segment, losses)
    return sums / torch.bincount(segment, minlength=len(segments))


def _validation_metric(loop: Loop, n: int) -> float:
    """The task's metric on the first ``n`` validation examples (decoding is costly)."""
    cell, cfg = loop.cell, loop.run.train
    predictions = distributed.generate(loop.model, cell.encoded["validation"][:n], cell.loaded.tokenizer,
                                       cell.loaded.family, cell.task.generation_budget, cfg.eval_batch_size,
                                       loop.accelerator.device, loop.autocast())
    return score(cell.task, predictions, cell.data.validation[:n])


def _save_adapter(model, tokenizer, run_dir: Path, enabled: bool) -> dict[str, Any]:
    """The tested weights, with save_pretrained: the adapter for PEFT methods, the model for full tuning."""
    if not enabled or not distributed.is_main_process():  # one writer
        return {"path": None, "bytes": None}
    target = run_dir / "adapter"
    model.save_pretrained(target, safe_serialization=True)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return {"path": str(target), "bytes": size}

