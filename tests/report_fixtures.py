"""Hand-made result files for the report and recommender tests (no training involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftbench.running.results import atomic_write_json, result_path

TASKS = {
    "ag_news": ("classification", "accuracy"),
    "cola": ("classification", "accuracy"),
    "e2e_nlg": ("generation", "rouge_l"),
    "samsum": ("generation", "rouge_l"),
}
HARDWARE = {"device": "cpu", "accelerator": "Test CPU", "cpu_count": 2, "platform": "Linux-test"}
# Paper-like parameter counts (§A.4) so that Table 5 checks read like the paper's.
PARAMS = {"full": 2849757184, "ia3": 933888, "lora": 3538944, "bitfit": 1179648, "prompt": 204800}


def make_result(
    *,
    model: str = "flan-t5-xl",
    method: str = "lora",
    task: str = "ag_news",
    scale: str | int = "low",
    seed: int = 0,
    ablation: str | None = None,
    status: str = "ok",
    score: float | None = 0.8,
    trainable: int | None = None,
    total_s: float = 600.0,
    best_epoch: int = 3,
    epochs: int = 4,
    peak_bytes: int = 2**30,
    val_losses: tuple[float, ...] = (1.0, 0.8, 0.7, 0.75),
    method_options: dict[str, Any] | None = None,
    sample_hash: str | None = None,
    breakdown: dict[str, int] | None = None,
    forgetting: float | None = None,
) -> dict[str, Any]:
    """One result dict in the schema of ``peftbench.running.results`` (version 1); ``sample_hash``:
    ``data.sample_hash`` (default: one per task, scale and seed, as every method of a cell shares it);
    ``breakdown``: ``memory.breakdown`` (schema version 2's), absent by default; ``forgetting``:
    ``metrics.forgetting`` (nats per token), absent by default."""
    # fmt: off
    task_type, metric = TASKS.get(task, ("classification", "accuracy"))
    options = "_".join(f"{k}{v}" for k, v in sorted((method_options or {}).items())) or None
    parts = (model, method, task, scale, f"s{seed}", ablation, options)
    run_id = "-".join(str(p) for p in parts if p is not None).replace("/", "_")  # one directory level
    config = {"model": model, "method": method, "task": task, "scale": scale, "seed": seed, "ablation": ablation,
              "layers": None, "modules": None, "method_options": method_options or {}, "data_dir": None}
    result = {
        "schema_version": 1, "run_id": run_id, "status": status, "config": config, "seed": seed,
        "task": {"name": task, "type": task_type, "metric": metric, "version": 1},
        "model": {"name": model, "source": "test", "family": "seq2seq", "architecture": "T5ForConditionalGeneration"},
        "data": {"train_examples": 100, "validation_examples": 50, "test_examples": 50,
                 "sample_hash": sample_hash or f"{task}-{scale}-{seed}"},
        "versions": {"peftbench": "0.1.0", "python": "3.11", "torch": "test"},
        "hardware": dict(HARDWARE),
        "params": _params(method, trainable),
        "epochs": epochs, "best_epoch": best_epoch,
        "history": [{"epoch": i + 1, "train_loss": loss + 0.1, "val_loss": loss, "val_metric": 0.5, "seconds": 10.0}
                    for i, loss in enumerate(val_losses)],
        "metrics": {"test": {metric: score}, "score": score},
        # total_s is Table 4's time (to convergence): here the whole run trains to its best epoch.
        "time": {"train_s": total_s, "train_to_best_s": total_s, "eval_s": total_s * 0.1, "total_s": total_s * 1.1},
        "throughput": {"train_tokens_per_s": 1000.0},
        "memory": {"peak_bytes": peak_bytes, "kind": "process_peak_rss"},
        "adapter": {"path": None, "bytes": 0},
    }
    if breakdown is not None:
        result["memory"]["breakdown"] = breakdown
    if forgetting is not None:
        result["metrics"]["forgetting"] = forgetting
    if status != "ok":
        result["error"] = {"type": "RuntimeError", "message": "test failure"}
        result["metrics"] = {}
    # fmt: on
    return result


def _params(method: str, trainable: int | None) -> dict[str, int]:
    """As a run records them: ``total`` includes what the method adds to the ``base`` model."""
    trainable = PARAMS.get(method, 1000) if trainable is None else trainable
    base = PARAMS["full"]
    return {"trainable": trainable, "total": base if method == "full" else base + trainable, "base": base}


def write_results(results_dir: Path, results: list[dict[str, Any]]) -> Path:
    """Write each result as ``<results_dir>/<run_id>/result.json``; returns ``results_dir``."""
    for result in results:
        atomic_write_json(result_path(results_dir, result["run_id"]), result)
    return results_dir


def write_outcomes_of(results_dir: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``rows`` as the result's per-example outcomes (``outcomes.jsonl.gz``) and record them in it;
    returns the result (write it afterwards: its ``outcomes`` entry holds the file's hash)."""
    from peftbench.outcomes import write_outcomes

    result["outcomes"] = write_outcomes(Path(results_dir) / result["run_id"], rows)
    return result


def outcome_rows(predictions: list[str], references: list[str], metric: str = "accuracy") -> list[dict[str, Any]]:
    """Outcome rows of a classification test set: example ``i`` has id ``ex<i>`` in every run."""
    return [{"id": f"ex{i}", "source": f"test:{i}", "prediction": p, "references": [r],
             "scores": {metric: float(p == r)}} for i, (p, r) in enumerate(zip(predictions, references, strict=True))]


def paper_grid() -> list[dict[str, Any]]:
    """A small grid with the paper's Table 1 scores and Table 4 times (AG News and CoLA, low scale)."""
    scores = {
        "full": (0.8588, 0.699),
        "ia3": (0.67, 0.6973),
        "lora": (0.8612, 0.76436),
        "bitfit": (0.8808, 0.7203),
    }
    seconds = {"full": (1249, 89), "ia3": (6130, 725), "lora": (3146, 687), "bitfit": (2738, 349)}
    return [
        make_result(method=method, task=task, score=scores[method][i], total_s=seconds[method][i])
        for method in scores
        for i, task in enumerate(("ag_news", "cola"))
    ]
