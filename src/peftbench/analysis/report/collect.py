"""Result files → cells → per-seed statistics.

A *cell* is one (model, task, scale, method, ablation) coordinate of the benchmark grid; several seeds of
the same cell are aggregated into mean ± 95% confidence interval. Only runs whose status is "ok" feed the
numbers; the statuses of the others are kept so that a table can say "failed" instead of showing nothing,
and a cell with no run at all says "missing" (never zero).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.analysis.stats import mean_ci, t_quantile_975  # noqa: F401 - re-exported
from peftbench.catalog.ablations import ABLATIONS
from peftbench.catalog.methods import TUNED_LR, method_family, method_order
from peftbench.constants import SCALES
from peftbench.errors import UserError
from peftbench.running.results import is_stale, iter_results

# Paper order first (Tables 1-6), anything else afterwards in alphabetical order. Methods sort by their
# MethodSpec.order (methods/__init__.py).
TASK_ORDER = ("ag_news", "cola", "e2e_nlg", "samsum", "synthetic_classification", "synthetic_data_to_text")
SCALE_ORDER = ("low", "medium", "high")
ABLATION_ORDER = tuple(ABLATIONS.names())  # the registry's order is Table 2's
# Nominal training-set sizes of the named scales (§3.1), used to find "the closest scale".
SCALE_EXAMPLES = {name: cap for name, (cap, _) in SCALES.items()}

@dataclass(frozen=True)
class Stat:
    """Aggregate of one quantity over the ok seeds of a cell; ``half_width`` is None for one seed."""

    mean: float
    sd: float | None
    half_width: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        mean, sd, half = mean_ci(values)
        if len(values) < 2:
            return cls(mean, None, None, len(values))
        return cls(mean, sd, half, len(values))


# ---- quantities read from one result (None when the run did not record it) ----------------------------


def _dig(result: dict[str, Any], *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def score(r: dict[str, Any]) -> float | None:
    """The task's headline metric (``metrics.test[task.headline_metric]``; a result from before headlines
    recorded its paper metric as ``metrics.score``)."""
    value = _dig(r, "metrics", "test", headline_metric(r.get("task") or {}))
    return _number(_dig(r, "metrics", "score") if value is None else value)


def test_metric(r: dict[str, Any], name: str) -> float | None:
    """The run's ``metrics.test.<name>`` (e.g. accuracy beside CoLA's MCC headline), None when absent."""
    return _number(_dig(r, "metrics", "test", name))


def headline_metric(task_info: dict[str, Any]) -> str:
    """The metric a task's comparisons use, as its results recorded it (``task.headline_metric``, else the
    paper's ``task.metric``)."""
    return str(task_info.get("headline_metric") or task_info.get("metric") or "score")


def trainable_params(r: dict[str, Any]) -> float | None:
    return _number(_dig(r, "params", "trainable"))


def base_params(r: dict[str, Any]) -> float | None:
    """The base model's parameters before the method adds any (Table 3's total): ``params.base``; for
    results without it, full tuning's total, or the total less the trainable parameters the method added."""
    base = _number(_dig(r, "params", "base"))
    total, trainable = _number(_dig(r, "params", "total")), trainable_params(r)
    if base is not None or total is None:
        return base
    if method_family(str((r.get("config") or {}).get("method"))) == "full":
        return total
    return None if trainable is None else total - trainable


def total_seconds(r: dict[str, Any]) -> float | None:
    """``time.total_s``: the run's wall time, excluding the one-time model load (``time.load_s``)."""
    return _number(_dig(r, "time", "total_s"))


def train_to_best_seconds(r: dict[str, Any]) -> float | None:
    """The paper's time to convergence: ``time.train_to_best_s``, the optimiser steps and per-epoch
    validation loss up to the best epoch. Results of schema 1 recorded ``time.to_best_s``, which also
    counted the per-epoch validation decoding."""
    value = _dig(r, "time", "train_to_best_s")
    return _number(_dig(r, "time", "to_best_s") if value is None else value)


def train_seconds(r: dict[str, Any]) -> float | None:
    """``time.train_s``: every epoch's optimiser steps and validation loss (the paper's clock, all epochs)."""
    return _number(_dig(r, "time", "train_s"))


EVALUATION_TIMES = ("val_metric_s", "eval_s", "rank_eval_s", "forgetting_s")
"""Evaluation, off the training clock: per-epoch validation decoding, test decoding, label ranking and the
general-text loss."""


def evaluation_seconds(r: dict[str, Any]) -> float | None:
    """The run's evaluation seconds (``EVALUATION_TIMES`` that it recorded); never part of a time ratio."""
    values = [_number(_dig(r, "time", key)) for key in EVALUATION_TIMES]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def best_epoch(r: dict[str, Any]) -> float | None:
    return _number(r.get("best_epoch"))


def peak_bytes(r: dict[str, Any]) -> float | None:
    return _number(_dig(r, "memory", "peak_bytes"))


def forgetting(r: dict[str, Any]) -> float | None:
    """``metrics.forgetting``: nats per token of general text lost to tuning (None where not recorded)."""
    return _number(_dig(r, "metrics", "forgetting"))


def score_per_100k_params(r: dict[str, Any]) -> float | None:
    """Table 5: score / trainable parameters × 100,000."""
    s, p = score(r), trainable_params(r)
    return None if s is None or not p else s / p * 1e5


def score_per_minute(r: dict[str, Any]) -> float | None:
    """Table 6: score / (training time to the best epoch in minutes, Table 4's time, as the paper divides)."""
    s, t = score(r), train_to_best_seconds(r)
    return None if s is None or not t else s / (t / 60.0)


Quantity = Callable[[dict[str, Any]], "float | None"]


# ---- cells --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellKey:
    model: str
    task: str
    scale: str | int
    method: str
    ablation: str | None

    @property
    def label(self) -> str:
        """The method, and the ablation where the cell is one: "lora" or "lora (later_layers)"."""
        return self.method + (f" ({self.ablation})" if self.ablation else "")


@dataclass
class Cell:
    key: CellKey
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r.get("status") == "ok"]

    @property
    def state(self) -> str:
        """State: "ok" (all seeds ok), "partial" (some), "missing" (no run), or the failed statuses ("failed/diverged")."""
        if not self.runs:
            return "missing"
        ok = len(self.ok_runs)
        if ok == len(self.runs):
            return "ok"
        if ok:
            return "partial"
        return "/".join(sorted({str(r.get("status")) for r in self.runs}))

    def stat(self, quantity: Quantity) -> Stat | None:
        values = [v for v in (quantity(r) for r in self.ok_runs) if v is not None]
        return Stat.of(values) if values else None


def cell_key(result: dict[str, Any], primary_options: str | None = None) -> CellKey:
    """The cell of ``result``. A run is an ablation of its method when it names one or selects its own
    layers/modules; its ``method_options`` make it a variant only when they differ from
    ``primary_options`` (``options_key`` of the options the method's main rows use), so a method run with
    options throughout a sweep is still that method."""
    config = result.get("config") or {}
    scale = config.get("scale")
    if isinstance(scale, str) and scale.isdigit():
        scale = int(scale)
    options = config.get("method_options") or {}
    variant = _selection_variant(config)
    if primary_options is not None and options_key(options) != primary_options:
        variant = " ".join(filter(None, [variant, *(f"{k}={v}" for k, v in sorted(options.items()))])) or None
    return CellKey(
        model=str(config.get("model")),
        task=str(config.get("task")),
        scale=scale,
        method=str(config.get("method")) + (TUNED_LR if config.get("lr_search") else ""),
        ablation=config.get("ablation") or variant,
    )


def is_lr_candidate(result: dict[str, Any]) -> bool:
    """A run that trained and validated without a test (``train.run_test`` false): an LR-search candidate."""
    return ((result.get("config") or {}).get("train") or {}).get("run_test") is False


def options_key(options: dict[str, Any] | None) -> str:
    return json.dumps(options or {}, sort_keys=True, default=str)


def _selection_variant(config: dict[str, Any]) -> str | None:
    """Runs with explicit layers/modules are a different variant, not more seeds of the default."""
    parts = []
    if config.get("layers") is not None:
        parts.append(f"layers={config['layers']}")
    if config.get("modules"):
        parts.append(f"modules={','.join(map(str, config['modules']))}")
    return " ".join(parts) or None


def primary_options(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Per (model, method), the method options its main rows use: the defaults ({}) when some run used
    them, else the options most runs used (ties: the first in sorted order)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for run in runs:
        config = run.get("config") or {}
        per_method = counts.setdefault((str(config.get("model")), str(config.get("method"))), {})
        key = options_key(config.get("method_options"))
        per_method[key] = per_method.get(key, 0) + 1
    empty = options_key({})
    return {
        pair: empty if empty in found else max(sorted(found), key=lambda k: found[k])
        for pair, found in counts.items()
    }


def _order(values: Iterable[Any], canonical: Sequence[Any]) -> list[Any]:
    def key(value: Any) -> tuple[int, int, str]:
        if value in canonical:
            return (0, canonical.index(value), "")
        return (1, 0, str(value))

    return sorted(set(values), key=key)


def order_scales(scales: Iterable[str | int]) -> list[str | int]:
    def key(scale: str | int) -> tuple[int, float, str]:
        if scale in SCALE_ORDER:
            return (0, SCALE_ORDER.index(scale), "")
        if isinstance(scale, int):
            return (1, scale, "")
        return (2, 0, str(scale))

    return sorted(set(scales), key=key)


def order_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_order)


def order_ablations(ablations: Iterable[str | None]) -> list[str | None]:
    """None (the method on every layer and module) first, then the paper's Table 2 order, then the rest."""
    ablations = list(ablations)
    named = _order([a for a in ablations if a is not None], ABLATION_ORDER)
    return ([None] if None in ablations else []) + named


@dataclass
class Collection:
    """Every result of a results directory, indexed by cell."""

    results_dir: Path | list[Path]
    runs: list[dict[str, Any]]
    cells: dict[CellKey, Cell]
    skipped: list[str] = field(default_factory=list)
    """Why each unreadable result file was left out."""
    primary: dict[tuple[str, str], str] = field(default_factory=dict)
    """``primary_options`` of the runs: which method options are the method itself."""
    lr_candidates: list[dict[str, Any]] = field(default_factory=list)
    """Results of LR-search candidates (``is_lr_candidate``): trained, never tested, so no cell's."""

    def key(self, run: dict[str, Any]) -> CellKey:
        config = run.get("config") or {}
        return cell_key(run, self.primary.get((str(config.get("model")), str(config.get("method")))))

    @property
    def directories(self) -> list[Path]:
        return self.results_dir if isinstance(self.results_dir, list) else [self.results_dir]

    def cell(self, model: str, task: str, scale: str | int, method: str, ablation: str | None = None) -> Cell:
        key = CellKey(model, task, scale, method, ablation)
        return self.cells.get(key) or Cell(key)

    def _keys(self, model: str | None = None) -> list[CellKey]:
        return [k for k in self.cells if model is None or k.model == model]

    def models(self) -> list[str]:
        return sorted({k.model for k in self.cells})

    def tasks(self, model: str | None = None) -> list[str]:
        return _order((k.task for k in self._keys(model)), TASK_ORDER)

    def scales(self, model: str | None = None) -> list[str | int]:
        return order_scales(k.scale for k in self._keys(model))

    def methods(self, model: str | None = None, *, baseline_only: bool = False) -> list[str]:
        keys = self._keys(model)
        return order_methods(k.method for k in keys if not baseline_only or k.ablation is None)

    def task_info(self, task: str) -> dict[str, Any]:
        """The task's {name, type, metric, headline_metric} as recorded by its runs (the first one that
        recorded it)."""
        for run in self.runs:
            if self.key(run).task == task and isinstance(run.get("task"), dict):
                return run["task"]
        return {"name": task}

    def headlines(self, task: str) -> list[str]:
        """The headline metrics the task's runs recorded (more than one: results of two peftbench versions)."""
        return sorted({headline_metric(run["task"]) for run in self.runs
                       if self.key(run).task == task and isinstance(run.get("task"), dict)})


def collect(results_dirs: Path | Sequence[Path]) -> Collection:
    """Read every result under one results directory or several (one sweep continued elsewhere, two
    machines); UserError when a directory is absent or none holds a result."""
    several = not isinstance(results_dirs, (str, Path))
    dirs = [Path(d) for d in results_dirs] if several else [Path(results_dirs)]
    for results_dir in dirs:
        if not results_dir.is_dir():
            what = "is a file, not a directory" if results_dir.exists() else "not found"
            raise UserError(f"results directory {what}: {results_dir}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [run for results_dir in dirs for run in iter_results(results_dir)]
    skipped = [str(warning.message) for warning in caught]
    for message in skipped:  # re-raised for callers, and kept so that the report can say what it left out
        warnings.warn(message, stacklevel=2)
    if not runs:
        raise UserError(f"no result files (*/result.json) under {', '.join(map(str, dirs))}")
    # A stale result (results.is_stale: decoded before a fix that changes its score) is shown as "stale",
    # not as a number; `peftbench run` runs it again.
    runs = [{**run, "status": "stale"} if is_stale(run) else run for run in runs]
    candidates = [run for run in runs if is_lr_candidate(run)]
    runs = [run for run in runs if not is_lr_candidate(run)]
    coll = Collection(dirs if several else dirs[0], runs, {}, skipped, primary_options(runs), candidates)
    for run in runs:
        key = coll.key(run)
        coll.cells.setdefault(key, Cell(key)).runs.append(run)
    return coll
