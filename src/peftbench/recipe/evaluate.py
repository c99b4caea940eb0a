"""Evaluation: validation loss, batched greedy decoding, and scoring with the task's metric.

Predictions are scored with the task's metric from ``metrics.py``'s registry.

Forward-only passes (validation loss, decoding, rank scoring) run under ``torch.inference_mode``: autograd
keeps no version counters or view records, a per-operation cost that matters on models of small
operations such as the tiny T5 and less on larger ones (measured against ``no_grad``: bench/RESULTS.md).
Nothing they create is kept for training.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from peftbench.catalog.metrics import CLASSIFICATION_METRICS, METRICS, exact_match, normalize_answer, rouge_l  # noqa: F401 - re-exported
from peftbench.catalog.metrics import score as score_metric
from peftbench.catalog.peft_compat import cache_visible_to_peft
from peftbench.catalog.tasks import TaskSpec
from peftbench.catalog.tasks.data import Example
from peftbench.outcomes import example_id
from peftbench.recipe.batching import (
    FUSE_MAX_TOKENS,
    Encoded,
    collate,
    collate_prompts,
    fuse_batches,
    split_to_budget,
)
from peftbench.recipe.loss import target_token_losses
from peftbench.speedups import SpeedupPlan

BATCH_HOOKS: list[Callable[[], object]] = []
"""Called after every evaluation batch: a sweep's worker process sends its heartbeat here (isolation.py), so
a long evaluation is never taken for a hang."""


def batch_done() -> None:
    for hook in BATCH_HOOKS:
        hook()


def score(task: TaskSpec, predictions: list[str], examples: list[Example]) -> float:
    """The task's headline metric over the examples (one example per distinct input)."""
    return score_metric(task.headline, predictions, [e.references for e in examples], task.classes)


def score_test(task: TaskSpec, examples: list[Example], predictions: list[str], ranked: list[str] | None = None,
               label_scores: list[dict[str, float]] | None = None) -> tuple[dict[str, float], list[dict]]:
    """``metrics.test`` and the per-example outcome rows (``peftbench.outcomes``) of a test split.

    Every metric of ``task.test_metrics`` is scored on the decoded ``predictions``; with ``ranked`` (the label
    ranking's answers), each classification metric again as ``rank_<metric>``. ``label_scores`` (each
    example's label-word log-likelihoods) go into the outcome rows.
    """
    references = [e.references for e in examples]
    per_example = [m for m in task.test_metrics if METRICS.get(m).per_example is not None]
    rows = []
    for i, (example, prediction) in enumerate(zip(examples, predictions, strict=True)):
        row = {"id": example_id(example.id, example.prompt, example.references), "source": example.id,
               "prediction": prediction, "references": list(example.references),
               "scores": {m: METRICS.get(m).per_example(prediction, example.references) for m in per_example}}
        if ranked is not None:
            row["rank_prediction"] = ranked[i]
        if label_scores is not None:
            row["label_scores"] = label_scores[i]
        rows.append(row)
    metrics = {m: sum(r["scores"][m] for r in rows) / len(rows) if m in per_example and rows
               else score_metric(m, predictions, references, task.classes) for m in task.test_metrics}
    if ranked is not None and task.type == "classification":
        for m in CLASSIFICATION_METRICS:
            metrics[f"rank_{m}"] = score_metric(m, ranked, references, task.classes)
    return metrics, rows


@torch.inference_mode()
def validation_loss(model, items: list[Encoded], family: str, pad_id: int, batch_size: int,
                    speedups: SpeedupPlan, autocast: AbstractContextManager, max_tokens: int | None = None) -> float:
    """Mean cross-entropy per target token over the whole split (nats), in ``validation_batches``' passes
    (fused with the ``fused_passes`` speed-up; within training's token budget ``max_tokens``), scored as
    training scores them (``loss.py``)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for rows in validation_batches(items, family, batch_size, speedups.fused_passes, speedups.virtual_tokens,
                                   max_tokens):
        with autocast:
            losses, _ = target_token_losses(model, collate([items[i] for i in rows], family, pad_id), speedups)
        total += losses.double().sum().cpu()
        count += losses.numel()
        batch_done()
    return float(total / max(count, 1))


def validation_batches(items: list[Encoded], family: str, batch_size: int, fuse: bool,
                       virtual_tokens: int = 0, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``items`` in batches of ``batch_size`` drawn in length order (the summed loss does not depend
    on the order; similar lengths pad least). With ``fuse`` (CPU), consecutive batches share one forward pass
    while it stays small, as training's do (``batching.fuse_batches``): a pass's fixed cost (a shared prefix's
    own pass, every layer's small operations) is paid once (measured: bench/RESULTS.md). With ``max_tokens``
    (``train.max_tokens_per_pass``) every pass holds at most that many padded tokens, as training's do: a
    forward pass holds its logits, and a wider batch than training's would set the run's peak."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].input_ids), len(items[i].labels)))
    batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    if fuse:
        limit = min(FUSE_MAX_TOKENS, max_tokens or FUSE_MAX_TOKENS)
        chunks = fuse_batches(items, batches, family, limit, virtual_tokens=virtual_tokens)
        batches = [[i for batch in chunk for i in batch] for chunk in chunks]
    return [piece for batch in batches for piece in split_to_budget(items, batch, family, max_tokens, virtual_tokens)]


@torch.inference_mode()
def generate(model, items: list[Encoded], tokenizer, family: str, max_new_tokens: int, batch_size: int,
             device: torch.device, autocast: AbstractContextManager) -> list[str]:
    """Greedy, batched decoding with the KV cache; returns the decoded continuations (an encoder
    classifier's: its predicted label words, ``classify``)."""
    model.eval()
    pad_id = tokenizer.pad_token_id
    if family == "encoder":
        return classify(model, items, pad_id, batch_size, device, autocast)
    # Longest prompts first: batches are tight and a memory problem shows up at once.
    order = sorted(range(len(items)), key=lambda i: -len(items[i].prompt_ids))
    outputs: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        indices = order[start: start + batch_size]
        batch = collate_prompts([items[i] for i in indices], pad_id, left=family == "causal")
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast, cache_visible_to_peft(model):
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        if family == "causal" and generated.shape[1] > batch["input_ids"].shape[1]:
            generated = generated[:, batch["input_ids"].shape[1]:]  # drop the echoed prompt
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for index, text in zip(indices, texts, strict=True):
            outputs[index] = text.strip().split("\n")[0].strip() if family == "causal" else text.strip()
        batch_done()
    return [outputs[i] for i in range(len(items))]


@torch.inference_mode()
def classify(model, items: list[Encoded], pad_id: int, batch_size: int, device: torch.device,
             autocast: AbstractContextManager) -> list[str]:
    """An encoder classifier's prediction for each item: the label word (``config.id2label``) of its
    highest-scoring class."""
    model.eval()
    predictions: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = collate_prompts(items[start: start + batch_size], pad_id, left=False)
        with autocast:
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        predictions += [model.config.id2label[i] for i in logits.argmax(dim=-1).tolist()]
        batch_done()
    return predictions
