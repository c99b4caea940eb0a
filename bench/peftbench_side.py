"""One benchmark cell through peftbench's own recipe (``peftbench.recipe.train.run_cell``), timed.

    python bench/peftbench_side.py OUT.json key=value ...

Time to result is ``run_cell``'s own clock (data, model copy, method, tokenising, training with its
per-epoch validation, test decoding and scoring, adapter saving). Training seconds are the optimiser
loop alone: the bench wraps ``steps.train_epoch`` with a timer, which changes nothing it computes.
Training FLOPs are those done: a prompt prefix shared by a pass's rows (``speedups/shared_prompt_prefix.py``) is counted
once per pass, not once per row (the wrappers around ``forward_with_shared_prefix`` and
``forward_concatenated`` count it).
"""

from __future__ import annotations

import sys
import tempfile
import time

from common import epoch_flops, load_average, resolve_cell, write_record
from flops import attention_pair_flops, linear_costs

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe import steps, train
from peftbench.recipe.batching import IGNORE
from peftbench.recipe.datacache import encode_cached
from peftbench.speedups import forward

_train_seconds = [0.0]
_in_training = [False]
_shared_prefix = {"tokens": 0, "pairs": 0.0}
"""Training work that prefix sharing did not repeat: token positions, and causal (query, key) pairs."""


def _timed(function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        _in_training[0] = True
        try:
            return function(*args, **kwargs)
        finally:
            _in_training[0] = False
            _train_seconds[0] += time.perf_counter() - started
    return wrapper


def _counted(function):
    """Counts what a shared prefix saves in training (rows - 1 copies of its tokens and causal pairs), so that
    the FLOPs divided by the time are those actually done."""
    def wrapper(model, inputs, prefix, *rest):
        if _in_training[0]:
            copies = inputs["input_ids"].shape[0] - 1
            _shared_prefix["tokens"] += copies * prefix
            _shared_prefix["pairs"] += copies * prefix * (prefix + 1) / 2
        return function(model, inputs, prefix, *rest)
    return wrapper


def flops_per_epoch(run) -> tuple[float, float]:
    """Model FLOPs of one training epoch of this cell (see flops.py), outside the timed run, and the FLOPs of
    the shared-prefix work counted during the run (done once, not per row)."""
    loaded = load_model(run.model, run.trust_remote_code)
    model = apply_method(loaded.model, loaded.family, run.method, run.method_options, seed=run.seed).model
    task = get_task(run.task)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, run.train.eval_examples)
    cfg = run.train
    items = encode_cached(task, data.train, loaded.tokenizer, loaded.family, cfg.max_source_tokens,
                          cfg.max_target_tokens)
    if loaded.family == "causal":
        counts = [(len(e.input_ids), sum(label != IGNORE for label in e.labels), 0) for e in items]
    else:
        counts = [(len(e.input_ids), 0, len(e.labels)) for e in items]
    costs = linear_costs(model)
    saved = (costs.encoder * _shared_prefix["tokens"]
             + attention_pair_flops(costs) * costs.layers * _shared_prefix["pairs"])
    return epoch_flops(model, counts), saved


def main(out: str, overrides: list[str]) -> None:
    run = resolve_cell(overrides)
    steps.train_epoch = _timed(steps.train_epoch)
    forward.forward_with_shared_prefix = _counted(forward.forward_with_shared_prefix)
    forward.forward_concatenated = _counted(forward.forward_concatenated)  # its prefix=0 passes count nothing
    load_before = load_average()
    with tempfile.TemporaryDirectory() as run_dir:
        result = train.run_cell(run, run_dir, progress=False)
    load_after = load_average()
    per_epoch, shared = flops_per_epoch(run)
    write_record(out, {
        "side": "peftbench", "overrides": overrides,
        "time_to_result_s": result["time"]["total_s"], "train_s": _train_seconds[0],
        "validation_s": result["time"]["train_s"] - _train_seconds[0], "eval_s": result["time"]["eval_s"],
        "epochs": result["epochs"], "best_epoch": result["best_epoch"],
        "train_tokens": result["throughput"]["train_tokens"], "train_flops": per_epoch * result["epochs"] - shared,
        "shared_prefix": dict(_shared_prefix),
        "score": result["metrics"]["score"], "metric": result["metrics"]["headline"],
        "trainable_params": result["params"]["trainable"], "precision": result["optimizer"]["precision"],
        "device": result["hardware"].get("device"), "history": result["history"],
        "load_average": {"before": load_before, "after": load_after},
        "predictions_sample": result["predictions_sample"][:3],
    })


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
