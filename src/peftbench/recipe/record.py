"""The result fields a trained cell records about itself (``running/results.py`` describes the whole result):
what ran (method, task, model, data, versions), how it trained (epochs, history, throughput) and what its
test scored; shared with the reference rows (``task_record``, ``predictions_sample``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftbench.catalog.methods import get_method
from peftbench.catalog.tasks import TaskSpec
from peftbench.running import environment, results

if TYPE_CHECKING:
    from peftbench.config import RunConfig
    from peftbench.recipe.run_state import RunState
    from peftbench.recipe.train import PreparedCell, Tested


def cell_result(run: RunConfig, cell: PreparedCell, state: RunState, tested: Tested) -> dict[str, Any]:
    """The result fields that describe the cell, its training and its test (``results.py``)."""
    task, loaded = cell.task, cell.loaded
    best_val_metric = state.history[state.stopper.best_epoch - 1]["val_metric"]
    return {
        "status": "ok", "error": None, "seed": run.seed, "decoding_revision": results.DECODING_REVISION,
        "method": {"name": run.method, "kind": get_method(run.method).kind},
        "task": task_record(task),
        "model": {"name": loaded.name, "source": loaded.source, "family": loaded.family,
                  "architecture": loaded.architecture, "revision": run.model_revision,
                  "provenance": loaded.provenance},
        "data": {**cell.data.info, "scale": run.scale},
        "batch": state.batch_plan(run.train),
        "versions": environment.versions(),
        "params": cell.params, "epochs": state.epoch, "max_epochs": cell.max_epochs,
        "best_epoch": state.stopper.best_epoch, "history": state.history,
        "metrics": {"test": tested.metrics, "score": tested.metrics.get(task.headline), "headline": task.headline,
                    "validation": {task.headline: best_val_metric}},
        "predictions_sample": predictions_sample(cell.data.test, tested.rows),
        "throughput": {"train_tokens": state.train_tokens,
                       "train_tokens_per_s": state.train_tokens / state.train_seconds if state.train_seconds
                       else None},
    }


def task_record(task: TaskSpec) -> dict[str, Any]:
    """The result's ``task`` field."""
    return {"name": task.name, "type": task.type, "metric": task.metric, "headline_metric": task.headline,
            "version": task.version}


def predictions_sample(examples: list, rows: list[dict], n: int = 5) -> list[dict[str, Any]]:
    """The first ``n`` test examples' prompts (last 200 characters), predictions and references, to read at a
    glance; every example's outcome is in the outcomes file. None for a run that was not tested."""
    if not rows:
        return []
    return [{"prompt": e.prompt[-200:], "prediction": r["prediction"], "references": r["references"][:3]}
            for e, r in list(zip(examples, rows, strict=True))[:n]]
