"""Label ranking (rank classification): score every label word as the answer and predict the most likely one.

The paper scores classification by exact match of generated text. Scoring the label words instead (the
multiple-choice scoring of lm-evaluation-harness) asks which of the task's answers the model finds most
likely: for each test prompt and each label word, the log-likelihood of that word as the target, its
tokens encoded exactly as training encodes a target (a causal model's leading space and EOS; a seq2seq
model's EOS), summed over those tokens. The prediction is the label word with the highest sum. It never
answers outside the label set, so beside exact match it separates "knows the answer" from "learned the
answer's format"; it is reported as its own metric, ``rank_accuracy`` (``train.rank_classification``).

Cost: one forward pass per label word over the test prompts, in the batches and through the loss validation
uses (length order, and the run's speed-ups: fused passes, a shared prompt prefix run once), and no decoding.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace

import torch

from peftbench.catalog.tasks import TaskSpec
from peftbench.catalog.tasks.data import Example
from peftbench.recipe.batching import Encoded, collate, encode
from peftbench.recipe.evaluate import batch_done, validation_batches
from peftbench.recipe.loss import target_token_losses
from peftbench.speedups import SpeedupPlan


@torch.inference_mode()  # as evaluate.validation_loss
def target_log_likelihoods(model, items: list[Encoded], family: str, pad_id: int, batch_size: int,
                           speedups: SpeedupPlan, autocast: AbstractContextManager) -> torch.Tensor:
    """Each item's summed log-likelihood of its target tokens (nats, float64), in item order."""
    model.eval()
    totals = torch.zeros(len(items), dtype=torch.float64)
    for rows in validation_batches(items, family, batch_size, speedups.fused_passes, speedups.virtual_tokens):
        with autocast:
            losses, owners = target_token_losses(model, collate([items[i] for i in rows], family, pad_id), speedups)
        totals.index_add_(0, torch.tensor(rows)[owners.cpu()], -losses.double().cpu())
        batch_done()
    return totals


def label_words(task: TaskSpec) -> list[str]:
    """The task's distinct label words, in the order its YAML lists them (ties go to the first)."""
    return list(task.classes)


def rank_classify(model, task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
                  max_target: int, batch_size: int, speedups: SpeedupPlan,
                  autocast: AbstractContextManager) -> list[str]:
    """The most likely label word for each example (``target_log_likelihoods`` of every word as target)."""
    words = label_words(task)
    if not examples:
        return []
    scores = torch.stack([
        target_log_likelihoods(model, encode([replace(e, target=word) for e in examples], tokenizer, family,
                                             max_source, max_target),
                               family, tokenizer.pad_token_id, batch_size, speedups, autocast)
        for word in words], dim=1)  # [examples, words]
    return [words[i] for i in scores.argmax(dim=1).tolist()]
