"""The recipe: one benchmark cell, top to bottom.

load data at the scale → load the model → apply the method (+ layer/module selection) → train with the
paper's schedule (AdamW, linear warm-up then linear anneal, batch 16 × accumulation 4), validate each
epoch, stop early when validation loss stops falling → test the best epoch's weights → measure.

Returns the result dict that ``results.py`` describes. Failures are raised (``Diverged``,
``Interrupted`` or an ordinary exception); the sweep turns them into result files.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
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

from peftbench.catalog.ablations import resolve_selection
from peftbench.catalog.methods import apply_method, get_method
from peftbench.catalog.models import LoadedModel, load_model
from peftbench.catalog.tasks import TaskSpec, get_task
from peftbench.catalog.tasks.data import TaskData, load_task_data
from peftbench.config import RunConfig, TrainConfig
from peftbench.outcomes import write_outcomes
from peftbench.recipe import (
    checkpoint,
    forgetting,
    memory,
    memory_estimate,
    peak,
    record,
    run_state,
    serving,
    steps,
)
from peftbench.recipe.batching import Encoded, length_grouped_batches, source_token_limit
from peftbench.recipe.datacache import encode_cached
from peftbench.recipe.evaluate import score, score_test
from peftbench.recipe.label_ranking import best_word
from peftbench.recipe.precision import mixed_precision
from peftbench.recipe.protocol import EarlyStopping, build_optimizer, schedule_steps
from peftbench.recipe.run_state import RunState
from peftbench.recipe.steps import Diverged, Interrupted, OutOfMemory  # noqa: F401 - the recipe's errors, raised in steps.py
from peftbench.running import distributed, environment, tracking
from peftbench.running.progress import progress_bar
from peftbench.speedups import SpeedupPlan
from peftbench.speedups import resolve as resolve_speedups


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(precision: str, model_type: str) -> Accelerator:
    """An accelerator in the run's mixed precision (``precision.mixed_precision``: bf16 autocast where the
    hardware multiplies bf16 natively)."""
    AcceleratorState._reset_state(reset_partial_state=True)  # each run picks its own precision
    return Accelerator(mixed_precision=mixed_precision(precision, model_type))


@dataclass
class PreparedCell:
    """One cell before training: the task and its data at the run's scale, the model with the method
    applied (``trainable``: its declared trainable parameters), the tokenised splits, and the seconds the
    model's read (or copy) took (``load_s``)."""

    task: TaskSpec
    data: TaskData
    loaded: LoadedModel
    model: nn.Module
    trainable: dict[str, nn.Parameter]
    params: dict[str, Any]
    encoded: dict[str, list[Encoded]]
    max_epochs: int
    load_s: float
    after_optimizer_step: Callable[[int], None] | None = None
    """The method's per-step hook (``MethodSpec.after_optimizer_step``), bound to the model."""


def prepare_cell(run: RunConfig, device_map: str | None = None) -> PreparedCell:
    """Load the data and the model, apply the method (+ layer/module selection), tokenise the splits."""
    cfg = run.train
    seed_everything(run.seed)
    # Identical splits for every method of a cell: they depend on task, scale and seed only.
    task = get_task(run.task)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, cfg.eval_examples, cfg.test_examples)
    load_started = time.perf_counter()
    classes = task.classes or None  # an encoder model's head classes
    loaded = load_model(run.model, run.trust_remote_code, device_map, revision=run.model_revision, labels=classes,
                        seed=run.seed, reuse=not memory.process_dedicated())  # one run's process: one copy
    load_s = time.perf_counter() - load_started
    # Seed again: the first load in a process may draw random numbers (tiny models are built from seed 0),
    # and a run must not depend on whether an earlier run in the same process loaded the model already.
    seed_everything(run.seed)
    layers, modules = resolve_selection(run.ablation, run.layers, run.modules)
    max_epochs = run.epoch_cap()
    base_total = sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
    applied = apply_method(loaded.model, loaded.family, run.method, run.method_options,
                           layers=layers, modules=modules, seed=run.seed,
                           total_steps=schedule_steps(cfg, len(data.train), max_epochs))
    params = {"trainable": sum(p.numel() for p in applied.trainable.values()), "base": base_total,
              "total": sum(p.numel() for p in {id(p): p for p in applied.model.parameters()}.values()),
              "selected_layers": applied.selected_layers or None}
    # Tokenise once per split (cached on disk across runs and processes).
    max_source = source_token_limit(cfg.max_source_tokens, loaded.family, applied.model)
    encoded = {split: encode_cached(task, getattr(data, split), loaded.tokenizer, loaded.family,
                                    max_source, cfg.max_target_tokens)
               for split in ("train", "validation", "test")}
    return PreparedCell(task, data, loaded, applied.model, applied.trainable, params, encoded, max_epochs, load_s,
                        applied.after_optimizer_step)


@dataclass
class Loop:
    """The live objects of one run's training loop (``model`` and ``optimizer`` as accelerate prepared them)."""

    run: RunConfig
    run_dir: Path
    cell: PreparedCell
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    accelerator: Accelerator
    writer: checkpoint.BackgroundWriter
    speedups: SpeedupPlan

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
    if get_method(run.method).is_reference:  # majority, zero_shot, in_context: nothing trains
        from peftbench.recipe.reference_rows import run_reference_cell

        return run_reference_cell(run, run_dir, progress=progress, stop_requested=stop_requested,
                                  device_map=device_map)
    started = time.perf_counter()
    memory.PHASES.begin_run()
    cfg = run.train
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # Before the model loads: its freed buffers may serve activations.
    speedups = resolve_speedups(memory.speedups_for(run.speedups, cfg.gradient_checkpointing))
    runtime_bytes = memory.runtime_bytes()  # the breakdown's runtime: the process before the model loads
    cell = prepare_cell(run, device_map)
    loop, schedule, after_load_bytes = _start_loop(run, Path(run_dir), cell, speedups)
    model, optimizer, accelerator, writer = loop.model, loop.optimizer, loop.accelerator, loop.writer
    with memory.PHASES.phase("reference"):
        general_text = forgetting.measure_reference(loop)  # the method at initialisation, before any step

    state, best_weights, resumed_from = _resume_or_start(loop)
    if cell.after_optimizer_step is not None:  # after optimizer.step(), before the gradients are cleared
        optimizer.optimizer.register_step_post_hook(lambda *_: cell.after_optimizer_step(state.step))
    tracker = tracking.RunTracker(run, loop.run_dir, loop.scheduler, cell.task.metric, state.train_tokens)
    with tracker:  # the trackers' runs end however this one does
        with writer:  # leaving it waits for the last write: the best weights are restored below
            best_weights = train_until_stopped(loop, state, best_weights, progress, stop_requested, tracker)
        with memory.PHASES.phase("test"):
            checkpoint.restore(cell.trainable, best_weights)  # the best epoch's weights are tested (the paper's)
            tested = score_test_split(loop) if cfg.run_test else Tested({}, [], None)  # an LR candidate: no test
        tracker.log_test(tested.metrics, state.step)
    with memory.PHASES.phase("forgetting"):
        forgot = forgetting.after_test(loop, general_text)
    with memory.PHASES.phase("end"):
        adapter = _save_adapter(accelerator.unwrap_model(model), cell.loaded.tokenizer, loop.run_dir,
                                cfg.save_adapter and cfg.run_test)
        outcomes = write_outcomes(loop.run_dir, tested.rows) if cfg.run_test and distributed.is_main_process() else None
    # Read before the matrix-product peak is measured below: its matrices are not the run's memory.
    memory_record = memory.run_memory(accelerator.device, after_load_bytes, cell.trainable, optimizer,
                                      adapter["bytes"], runtime=runtime_bytes, model=model,
                                      gradient_checkpointing=cfg.gradient_checkpointing)
    # The last checkpoint stays until the caller has written the result (sweep.execute_run removes it).
    times = _times(state, tested, cell, started)
    peak_record, mfu = _matmul_peak(cfg, model, cell, accelerator, state)  # after the times: not the run's time
    recorded = record.cell_result(run, cell, state, tested)
    recorded["throughput"]["mfu"] = mfu
    return forgetting.record({**recorded, "optimizer": schedule.record(state.step, accelerator.mixed_precision),
            "time": times,
            "hardware": {**environment.hardware(accelerator.device), "device_map": device_map, "peak": peak_record},
            "memory": {**memory_record, "predicted": memory_estimate.predicted_for_result(run, runtime_bytes)},
            "adapter": adapter, "outcomes": outcomes, "resumed_from_epoch": resumed_from,
            "serving": serving.serve_stage(run, adapter), "speedups": speedups.record()}, forgot)


def _start_loop(run: RunConfig, run_dir: Path, cell: PreparedCell, speedups: SpeedupPlan):
    """The prepared cell's training loop: optimiser and schedule, accelerator, speed-ups applied. Returns the
    loop, the schedule's record maker and the bytes in use once the model sits on its device."""
    cfg = run.train
    memory.enable_gradient_checkpointing(cell.model, cfg.gradient_checkpointing)
    optimizer, scheduler, schedule = build_optimizer(cfg, run.method, cell.trainable, len(cell.encoded["train"]),
                                                     cell.max_epochs, fused=speedups.fused_adamw)
    # Checkpoints are written while training goes on (checkpoint.BackgroundWriter): no optimiser step may
    # change the weights and moments being written. On the bare optimiser, which accelerate wraps below.
    writer = checkpoint.BackgroundWriter()
    optimizer.register_step_pre_hook(lambda *_: writer.wait())
    accelerator = make_accelerator(cfg.precision, cell.loaded.architecture)
    model, optimizer = distributed.prepare(accelerator, cell.model, optimizer)  # no DDP wrapper: distributed.py
    speedups.apply_to_model(model, accelerator.device, accelerator.mixed_precision)
    after_load_bytes = memory.start_of_training(accelerator.device, model)
    loop = Loop(run, run_dir, cell, model, optimizer, scheduler, accelerator, writer, speedups)
    return loop, schedule, after_load_bytes


def _times(state: RunState, tested: Tested, cell: PreparedCell, started: float) -> dict[str, float | None]:
    """The result's ``time``, in seconds. The model's read from disk (the first load in a process) or copy
    (later ones) is kept out of ``total_s``, so every run's compared time is measured alike whatever ran
    before it in the process."""
    return {"train_s": state.train_seconds, "train_to_best_s": state.to_best_s,
            "val_metric_s": state.val_metric_seconds, "eval_s": tested.eval_s, "rank_eval_s": tested.rank_eval_s,
            "load_s": cell.load_s, "total_s": time.perf_counter() - started - cell.load_s}


def _matmul_peak(cfg: TrainConfig, model: nn.Module, cell: PreparedCell, accelerator: Accelerator,
                 state: RunState) -> tuple[dict[str, Any] | None, float | None]:
    """The machine's measured matrix-product peak (``hardware.peak``) and the run's MFU against it."""
    measure = cfg.measure_peak
    if measure is None:
        measure = peak.measures_by_default(distributed.launched_world_size())
    return peak.run_peak(measure, model, cell.loaded.model.config, cell.loaded.family, accelerator.device,
                         accelerator.mixed_precision, state.train_tokens, state.step * cfg.grad_accum,
                         state.train_seconds)


def _resume_or_start(loop: Loop) -> tuple[RunState, dict[str, torch.Tensor], int | None]:
    """The run state and best weights of the last checkpoint, loaded into the live objects, or a fresh
    start; and the epoch resumed from (None: a fresh start)."""
    cfg, trainable = loop.run.train, loop.cell.trainable
    resumed = run_state.resume_run(loop.run_dir, trainable, loop.optimizer, loop.scheduler, loop.accelerator.scaler)
    if resumed is None:
        state = RunState(stopper=EarlyStopping(cfg.patience, cfg.min_delta))
        best_weights = checkpoint.snapshot(trainable, loop.run_dir)  # full tuning's: on disk
    else:
        state, best_weights = resumed
    distributed.check_in_sync(trainable, state.epoch, state.step)
    return state, best_weights, state.epoch if resumed is not None else None


@dataclass
class Tested:
    """The test split's scores (``metrics.test``), its per-example outcome rows and the seconds they took."""

    metrics: dict[str, float]
    rows: list[dict]
    eval_s: float | None
    rank_eval_s: float | None = None


def score_test_split(loop: Loop) -> Tested:
    """Decode the test prompts and score them with the task's metrics; with ``train.rank_classification``, a
    classification task's label words are also ranked (``label_ranking.py``)."""
    cell, cfg = loop.cell, loop.run.train
    started = time.perf_counter()
    predictions = distributed.generate(loop.model, cell.encoded["test"], cell.loaded.tokenizer, cell.loaded.family,
                                       cell.task.generation_budget, cfg.eval_batch_size, loop.accelerator.device,
                                       loop.autocast())
    eval_s = time.perf_counter() - started
    ranked, label_scores, rank_eval_s = None, None, None
    if cfg.rank_classification and cell.loaded.family == "encoder":  # its prediction is already a ranking
        ranked, rank_eval_s = predictions, 0.0
    elif cfg.rank_classification and cell.task.type == "classification":
        started = time.perf_counter()
        label_scores = distributed.rank_label_words(loop.model, cell.task, cell.data.test, cell.loaded.tokenizer,
                                                    cell.loaded.family, cfg.max_source_tokens, cfg.max_target_tokens,
                                                    cfg.eval_batch_size, loop.speedups, loop.autocast())
        ranked, rank_eval_s = [best_word(s) for s in label_scores], time.perf_counter() - started
    metrics, rows = score_test(cell.task, cell.data.test, predictions, ranked, label_scores)
    return Tested(metrics, rows, eval_s, rank_eval_s)


def train_until_stopped(loop: Loop, state: RunState, best_weights: dict[str, torch.Tensor], progress: bool,
                        stop_requested, tracker: tracking.RunTracker) -> dict[str, torch.Tensor]:
    """Train epoch after epoch, from ``state`` on, until ``max_epochs`` or early stopping; returns the best
    epoch's weights. A stop request checkpoints the last optimiser step and raises ``Interrupted``. Steps and
    epochs are logged to ``tracker``."""
    cfg, cell = loop.run.train, loop.cell
    bar = progress_bar(cell.max_epochs, f"{loop.run.method}/{loop.run.task}", "epoch", enabled=progress,
                       initial=state.epoch, leave=False)
    while state.epoch < cell.max_epochs and not state.stopper.should_stop:
        epoch_started = time.perf_counter()
        order = length_grouped_batches(cell.encoded["train"], cfg.batch_size,
                                       seed=loop.run.seed * 1000 + state.epoch + 1,
                                       group_by_length=cfg.group_by_length)
        try:
            with memory.PHASES.phase("train"):
                train_loss = steps.train_epoch(loop.model, loop.optimizer, loop.scheduler, loop.accelerator,
                                               cell.encoded["train"], order, cfg, cell.loaded.family,
                                               cell.loaded.tokenizer.pad_token_id, state, stop_requested,
                                               loop.speedups, on_step=tracker.log_step)
        except Interrupted:  # keep the steps done so far: the re-run continues from this very step
            state.train_seconds += time.perf_counter() - epoch_started
            loop.save(state, best_weights)
            raise
        best_weights = _end_epoch(loop, state, best_weights, train_loss, epoch_started)
        tracker.log_epoch(state.history[-1])
        bar.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{state.history[-1]['val_loss']:.3f}")
        bar.update(1)
    bar.close()
    return best_weights


def _end_epoch(loop: Loop, state: RunState, best_weights: dict[str, torch.Tensor], train_loss: float,
               epoch_started: float) -> dict[str, torch.Tensor]:
    """Validate the epoch just trained, record it, keep its weights if they are the best so far (returns the
    best weights), and checkpoint when one is due."""
    cfg, cell, epoch = loop.run.train, loop.cell, state.epoch + 1
    family, pad_id = cell.loaded.family, cell.loaded.tokenizer.pad_token_id
    with memory.PHASES.phase("validation"):
        val_loss = distributed.validation_loss(loop.model, cell.encoded["validation"], family, pad_id,
                                               cfg.eval_batch_size, loop.speedups, loop.autocast(),
                                               cfg.max_tokens_per_pass)
        seconds = time.perf_counter() - epoch_started  # the paper's clock: steps and validation loss
        decode_started = time.perf_counter()
        val_metric = _validation_metric(loop, cfg.val_metric_examples) if cfg.val_metric_examples else None
        val_metric_s = time.perf_counter() - decode_started if cfg.val_metric_examples else 0.0
    state.train_seconds += seconds
    state.val_metric_seconds += val_metric_s
    if state.stopper.update(epoch, val_loss):
        best_weights = checkpoint.snapshot(cell.trainable, loop.run_dir)  # full tuning's: on disk
        state.to_best_s = state.train_seconds
    state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": val_metric,
                          "seconds": seconds, "val_metric_s": val_metric_s, "steps": state.step,
                          "lr": loop.scheduler.get_last_lr()[0]})
    state.epoch = epoch
    # No checkpoint after the last epoch: its best weights are tested at once, from memory. A process that
    # dies during that test re-trains from the previous checkpoint or the start (bit-identically), which
    # costs less over a sweep than writing one more checkpoint per run (full tuning: weights and AdamW
    # state, 12 bytes per parameter). For the same reason, epochs closer than checkpoint_interval_s to
    # the last checkpoint write none.
    last_epoch = state.epoch >= cell.max_epochs or state.stopper.should_stop
    due = state.train_seconds - state.checkpointed_s >= cfg.checkpoint_interval_s
    if cfg.checkpoint_every_epoch and due and not last_epoch:
        with memory.PHASES.phase("checkpoint"):
            loop.save(state, best_weights)
    return best_weights


def _validation_metric(loop: Loop, n: int) -> float:
    """The task's metric on the first ``n`` validation examples (decoding is costly)."""
    cell, cfg = loop.cell, loop.run.train
    predictions = distributed.generate(loop.model, cell.encoded["validation"][:n], cell.loaded.tokenizer,
                                       cell.loaded.family, cell.task.generation_budget, cfg.eval_batch_size,
                                       loop.accelerator.device, loop.autocast())
    return score(cell.task, predictions, cell.data.validation[:n])


def _save_adapter(model, tokenizer, run_dir: Path, enabled: bool) -> dict[str, Any]:
    """The tested weights, with save_pretrained: the adapter for PEFT methods, the model for full tuning; the
    tokenizer beside them, so the directory loads on its own (docs/usage.md: "loading the weights")."""
    if not enabled or not distributed.is_main_process():  # one writer
        return {"path": None, "bytes": None}
    target = run_dir / "adapter"
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return {"path": str(target), "bytes": size}

