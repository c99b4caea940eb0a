"""Experiment tracking: each run's optimiser steps and epochs sent to the trackers ``trackers=[...]`` names,
through accelerate's tracker classes (TensorBoard, MLflow, W&B, and any other accelerate knows by name).

What a run logs, at its optimiser step count (a resumed run continues its count):

    every optimiser step   train/loss (mean of the step's batches), train/lr (the rate the step used),
                           train/tokens_per_s (non-padding tokens over the step's wall time)
    every epoch            epoch, train/epoch_loss, val/loss, val/<metric> (when measured)
    once, at the end       test/<metric> for each test metric

and the run's resolved config as hyper-parameters (nested keys dotted: ``train.lr_peak``), plus ``run_id``.

Where it goes: TensorBoard writes ``<output_dir>/tensorboard/<run_id>/`` (``tensorboard --logdir
<output_dir>/tensorboard``); MLflow logs a run named by the run id in the experiment named by the output
directory, at ``MLFLOW_TRACKING_URI``; W&B a run named by the run id in the project named by the output
directory (``WANDB_MODE=offline`` works without a network). Only the main process logs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from peftbench.errors import UserError, unknown

EXTRAS = ("tensorboard", "mlflow", "wandb")
"""Trackers with a peftbench extra of the same name: pip install 'peftbench[tensorboard]'."""
_PIP_NAMES = {"comet_ml": "comet-ml"}
_RUN_NAME_KEYWORD = {"mlflow": "run_name", "wandb": "name"}
"""The keyword each tracker's constructor takes the run's name under (TensorBoard: its subdirectory)."""


def check_trackers(names: list[str]) -> None:
    """Every tracker exists in accelerate and its package is installed, or a one-line UserError."""
    if not names:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise unknown("tracker", name, LOGGER_TYPE_TO_CLASS)
        builtin = name in {str(kind) for kind in _logger_types()}
        if builtin and name not in available:
            install = f"peftbench[{name}]" if name in EXTRAS else _PIP_NAMES.get(name, name)
            raise UserError(f"tracker {name} needs its package: pip install '{install}'")


def _logger_types() -> list[Any]:
    from accelerate.utils import LoggerType

    return [kind for kind in LoggerType if str(kind) != "all"]


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run config flattened to scalars: nested sections dotted, lists and mappings as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key == "train":
            flat.update(hyperparameters(value, prefix=f"{prefix}{key}."))
        elif isinstance(value, (list, dict)):
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunTracker:
    """One run's trackers: started on entering, finished on leaving (however the run ends).

    With no trackers configured, or outside the main process, every method does nothing.
    """

    def __init__(self, run, run_dir: Path, scheduler, metric: str, train_tokens: int = 0) -> None:
        """``scheduler``: the run's LambdaLR; ``metric``: the task's; ``train_tokens``: the count so far."""
        self.run, self.run_dir, self.scheduler, self.metric = run, Path(run_dir), scheduler, metric
        self.trackers: list[Any] = []
        self._since = time.perf_counter()
        self._tokens_before = train_tokens

    def __enter__(self) -> RunTracker:
        from peftbench.running.distributed import is_main_process

        if not self.run.trackers or not is_main_process():
            return self
        check_trackers(self.run.trackers)
        run_id = self.run.run_id()
        for name in self.run.trackers:
            tracker = self._make(name, run_id)
            tracker.start()
            tracker.store_init_configuration({"run_id": run_id, **hyperparameters(self.run.to_dict())})
            self.trackers.append(tracker)
        return self

    def _make(self, name: str, run_id: str):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        tracker_class = LOGGER_TYPE_TO_CLASS[name]
        results_dir = self.run_dir.parent
        project = run_id if name == "tensorboard" else results_dir.name
        keywords = {_RUN_NAME_KEYWORD[name]: run_id} if name in _RUN_NAME_KEYWORD else {}
        if tracker_class.requires_logging_directory:
            return tracker_class(project, str(results_dir / name), **keywords)
        return tracker_class(project, **keywords)

    def __exit__(self, *exc_info) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []

    def log(self, values: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_step(self, state, losses: list[float]) -> None:
        """After optimiser step ``state.step``: its mean loss, learning rate and tokens per second."""
        now = time.perf_counter()
        if self.trackers:
            # LambdaLR: the rate of step k (1-based) is the peak times the schedule at k - 1.
            lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](state.step - 1)
            tokens = state.train_tokens - self._tokens_before
            self.log({"train/loss": sum(losses) / len(losses), "train/lr": lr,
                      "train/tokens_per_s": tokens / max(now - self._since, 1e-9)}, state.step)
        self._since, self._tokens_before = now, state.train_tokens

    def log_epoch(self, record: dict[str, Any]) -> None:
        """An epoch's record from the run's history (``train.py``'s ``_end_epoch``)."""
        values = {"epoch": record["epoch"], "train/epoch_loss": record["train_loss"], "val/loss": record["val_loss"]}
        if record.get("val_metric") is not None:
            values[f"val/{self.metric}"] = record["val_metric"]
        self.log(values, record["steps"])
        self._since = time.perf_counter()  # validation time is no step's

    def log_test(self, metrics: dict[str, float | None], step: int) -> None:
        """The test split's metrics (those measured: None is not)."""
        self.log({f"test/{name}": value for name, value in metrics.items() if value is not None}, step)
