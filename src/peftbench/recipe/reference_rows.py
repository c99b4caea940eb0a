"""Reference rows, run like one benchmark cell but with nothing trained (``methods/reference.py``).

The same data as every method of the cell (task, scale and seed decide the splits), the same test
decoding and label ranking as a fine-tuned run's test, scored with the task's metric; timed and measured
like a run: ``time.load_s`` is the model's read, ``time.total_s`` the rest of the run's wall time.
``majority`` loads no model at all.

Result fields as ``results.py`` describes, with ``params.trainable`` 0, no epochs and no optimiser, plus
``method: {"name", "kind": "reference"}`` and ``reference``: what the row answered with (``answer`` for
majority; ``k`` and ``shown_mean``, the examples shown on average, for in_context).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import get_mixed_precision_context_manager

from peftbench.catalog.methods import get_method
from peftbench.catalog.methods.reference import InContextOptions, reference_options
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import TaskSpec, get_task
from peftbench.catalog.tasks.data import Example, TaskData, load_task_data
from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.outcomes import write_outcomes
from peftbench.recipe import forgetting, memory
from peftbench.recipe.batching import encode
from peftbench.recipe.evaluate import score_test
from peftbench.recipe.label_ranking import best_word
from peftbench.recipe.record import predictions_sample, task_record
from peftbench.recipe.train import make_accelerator, seed_everything
from peftbench.running import distributed, environment, results
from peftbench.speedups import resolve as resolve_speedups


@dataclass
class Answers:
    """A reference row's test predictions (and ranked label words), with what it took to make them."""

    predictions: list[str]
    ranked: list[str] | None = None
    label_scores: list[dict[str, float]] | None = None
    """Each test example's label-word log-likelihoods, where the row ranked them with a model."""
    model: dict[str, Any] = field(default_factory=dict)
    total_params: int | None = None
    load_s: float = 0.0
    eval_s: float = 0.0
    rank_eval_s: float | None = None
    device: torch.device = torch.device("cpu")
    after_load_bytes: int | None = None
    speedups: dict[str, Any] | None = None
    """``result["speedups"]`` of a row that runs the model (majority runs none)."""
    details: dict[str, Any] = field(default_factory=dict)


def check_applies(method: str, task: TaskSpec) -> None:
    """UserError (one line) when the reference row ``method`` has no meaning for ``task``."""
    task_types = get_method(method).task_types
    if task.type not in task_types:
        raise UserError(f"{method} does not apply to {task.type} task {task.name}: it applies to "
                        f"{', '.join(task_types)} tasks only")


def run_reference_cell(run: RunConfig, run_dir: Path, *, progress: bool = True, stop_requested=lambda: False,
                       device_map: str | None = None) -> dict:
    """Answer the test split of ``run``'s cell without training; returns the result dict (status ok).
    ``progress`` and ``stop_requested`` are ``train.run_cell``'s: a reference row has no steps to show or stop
    between."""
    started = time.perf_counter()
    memory.PHASES.begin_run()
    cfg = run.train
    task = get_task(run.task)
    check_applies(run.method, task)
    options = reference_options(run.method, run.method_options)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(run.seed)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, cfg.eval_examples, cfg.test_examples)
    with memory.PHASES.phase("test"):  # one phase: the model loaded and the test answered
        if run.method == "majority":
            answers = majority_answers(task, data, cfg.rank_classification)
        else:
            answers = model_answers(run, task, data, options, device_map)
    tested, rows = score_test(task, data.test, answers.predictions, answers.ranked, answers.label_scores)
    outcomes = write_outcomes(Path(run_dir), rows) if distributed.is_main_process() else None
    elapsed = time.perf_counter() - started
    return forgetting.reference_row({
        "status": "ok", "error": None, "seed": run.seed, "decoding_revision": results.DECODING_REVISION,
        "method": {"name": run.method, "kind": "reference"}, "reference": answers.details,
        "task": task_record(task),
        "model": {"name": run.model, "source": None, "family": None, "architecture": None, **answers.model},
        "data": {**data.info, "scale": run.scale}, "versions": environment.versions(),
        "params": {"trainable": 0, "total": answers.total_params, "selected_layers": None},
        "epochs": 0, "max_epochs": 0, "best_epoch": 0, "history": [], "optimizer": None,
        "metrics": {"test": tested, "score": tested[task.headline], "headline": task.headline, "validation": {}},
        "predictions_sample": predictions_sample(data.test, rows), "outcomes": outcomes,
        "throughput": {"train_tokens": 0, "train_tokens_per_s": None, "mfu": None},
        "time": {"load_s": answers.load_s, "train_s": 0.0, "eval_s": answers.eval_s,
                 "rank_eval_s": answers.rank_eval_s, "total_s": elapsed - answers.load_s, "train_to_best_s": 0.0,
                 "val_metric_s": 0.0},
        "hardware": {**environment.hardware(answers.device), "device_map": device_map, "peak": None},
        "memory": memory.run_memory(answers.device, answers.after_load_bytes, {}, None, None), "adapter": {"path": None, "bytes": None},
        "resumed_from_epoch": None, "speedups": answers.speedups,
    }, run.method)


def majority_answers(task: TaskSpec, data: TaskData, ranked: bool) -> Answers:
    """The training sample's most frequent label word for every test example; a tie goes to the word the
    task's YAML lists first. With ``ranked``, the label ranking is the same answer (always a label word)."""
    counts = Counter(example.target for example in data.train)
    words = list(task.classes)
    answer = max(words, key=lambda word: (counts[word], -words.index(word)))
    predictions = [answer] * len(data.test)
    return Answers(predictions, ranked=predictions if ranked else None,
                   details={"answer": answer, "train_counts": dict(counts)})


def model_answers(run: RunConfig, task: TaskSpec, data: TaskData, options: Any, device_map: str | None) -> Answers:
    """Decode (and rank, for classification) the test prompts with the untuned model."""
    cfg = run.train
    speedups = resolve_speedups(run.speedups)  # before the model loads, as in the recipe
    load_started = time.perf_counter()
    loaded = load_model(run.model, run.trust_remote_code, device_map, revision=run.model_revision)
    load_s = time.perf_counter() - load_started
    seed_everything(run.seed)
    accelerator = make_accelerator(cfg.precision, loaded.architecture)
    model = accelerator.prepare_model(loaded.model, evaluation_mode=True)
    device, tokenizer, family = accelerator.device, loaded.tokenizer, loaded.family
    speedups.apply_to_model(model, device, accelerator.mixed_precision)
    after_load_bytes = memory.start_of_training(device)
    autocast = get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)
    test, details = data.test, {}
    if isinstance(options, InContextOptions):
        test, shown = with_demonstrations(data.test, data.train, options, run.seed, tokenizer,
                                          cfg.max_source_tokens)
        details = {"k": options.k, "shown_mean": sum(shown) / len(shown) if shown else 0.0}
    started = time.perf_counter()
    encoded = encode(test, tokenizer, family, cfg.max_source_tokens, cfg.max_target_tokens)
    predictions = distributed.generate(model, encoded, tokenizer, family, task.generation_budget,
                                       cfg.eval_batch_size, device, autocast)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    answers = Answers(predictions, load_s=load_s, eval_s=time.perf_counter() - started, device=device,
                      after_load_bytes=after_load_bytes, speedups=speedups.record(),
                      details=details, total_params=total,
                      model={"source": loaded.source, "family": family, "architecture": loaded.architecture,
                             "revision": run.model_revision, "provenance": loaded.provenance})
    if cfg.rank_classification and task.type == "classification":
        started = time.perf_counter()
        answers.label_scores = distributed.rank_label_words(model, task, test, tokenizer, family,
                                                            cfg.max_source_tokens, cfg.max_target_tokens,
                                                            cfg.eval_batch_size, speedups, autocast)
        answers.ranked = [best_word(s) for s in answers.label_scores]
        answers.rank_eval_s = time.perf_counter() - started
    return answers


def with_demonstrations(test: list[Example], train: list[Example], options: InContextOptions, seed: int,
                        tokenizer, max_source_tokens: int) -> tuple[list[Example], list[int]]:
    """Each test example with ``options.k`` training examples (drawn with ``seed``, the same for every test
    example) before its prompt; a prompt that would pass ``max_source_tokens`` shows fewer, dropping the
    last first. Returns the examples and how many each shows."""
    drawn = random.Random(f"in_context/{seed}").sample(train, min(options.k, len(train)))
    shown_text = [f"{example.prompt} {example.target}{options.separator}" for example in drawn]
    shown = [len(drawn)] * len(test)
    pending = list(range(len(test)))
    while pending:
        prompts = ["".join(shown_text[:shown[i]]) + test[i].prompt for i in pending]
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        pending = [i for i, length in zip(pending, lengths, strict=True) if length > max_source_tokens and shown[i]]
        for i in pending:
            shown[i] -= 1
    return [replace(e, prompt="".join(shown_text[:n]) + e.prompt) for e, n in zip(test, shown, strict=True)], shown
