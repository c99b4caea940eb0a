"""Evaluation: validation loss, batched greedy decoding, and scoring with the task's metric.

Predictions are scored with the task's metric from ``metrics.py``'s registry.

Forward-only passes (validation loss, decoding, rank scoring) run under ``torch.inference_mode``: autograd
keeps no version counters or view records, a per-operation cost that matters on models of small
operations (tiny T5: validation and decoding 1.08× against ``no_grad``, SmolLM2 1.00×; bench/RESULTS.md).
Nothing they create is kept for training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

from peftbench.batching import FUSE_MAX_TOKENS, IGNORE, Encoded, collate, collate_prompts, fuse_batches
from peftbench.kernels import pass_attention
from peftbench.metrics import exact_match, normalize_answer, rouge_l  # noqa: F401 - re-exported
from peftbench.metrics import score as score_metric
from peftbench.peft_compat import cache_visible_to_peft
from peftbench.prefix import forward_with_shared_prefix, prefix_to_share
from peftbench.tasks import TaskSpec
from peftbench.tasks.data import Example
from peftbench.unpadding import feed_forward_on_real_tokens
from peftbench.varlen import forward_packed, packs_real_tokens


def score(task: TaskSpec, predictions: list[str], examples: list[Example]) -> float:
    """The task's metric averaged over examples (one example per distinct input)."""
    return score_metric(task.metric, predictions, [e.references for e in examples])


def _output_layer(model) -> torch.nn.Module | None:
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


@contextmanager
def logits_only_where(model, keep: torch.Tensor):
    """While active, the output layer sees only the hidden states where ``keep`` ([batch, seq], bool) is True,
    so the model's logits come back as ``[1, keep.sum(), vocab]`` in row-major order of ``keep``.

    ``keep`` aligns with the last positions: prompt tuning's prepended virtual tokens are skipped.
    """
    def select(module, args):
        hidden = args[0]
        return (hidden[:, hidden.shape[1] - keep.shape[1]:][keep].unsqueeze(0), *args[1:])

    handle = _output_layer(model).register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def causal_target_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean",
                       prefix: int | None = None) -> torch.Tensor:
    """Cross-entropy (fp32) of a causal model's target tokens, with logits computed only where they are used.

    The same loss as the model's own (``labels=``), but the LM head runs at the positions that predict a
    target token only: CoLA's answer is 2-3 of ~30 tokens, and SmolLM2's 49,152-way head is a fifth of its
    FLOPs. Position t predicts token t + 1. A prompt prefix that every row shares runs once: ``prefix`` is
    its length (``prefix.prefix_to_share``; computed here when None, which reads the ids back from the device).
    """
    labels = batch["labels"]
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    keep = targets != IGNORE
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    prefix = prefix_to_share(model, batch) if prefix is None else prefix
    real = inputs["attention_mask"][:, prefix:].bool()  # the tokens after the prefix (which has no padding)
    if _output_layer(model) is None:  # no output layer to trim: every position's logits, then select
        logits = model(**inputs).logits[:, -labels.shape[1]:][keep]
    elif packs_real_tokens(model, real):  # the rows' real tokens as one sequence; each target follows a token
        with logits_only_where(model, keep[:, prefix:][real].unsqueeze(0)):
            logits = forward_packed(model, inputs, prefix).logits[0]
    elif prefix:
        with logits_only_where(model, keep[:, prefix:]), feed_forward_on_real_tokens(model, real):
            logits = forward_with_shared_prefix(model, inputs, prefix).logits[0]  # the prefix predicts no target
    else:
        with logits_only_where(model, keep), feed_forward_on_real_tokens(model, real):
            logits = model(**inputs).logits[0]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction=reduction)


def target_token_losses(model, batch: dict[str, torch.Tensor], family: str,
                        prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (fp32) of every target token, and the batch row each one belongs to."""
    labels = batch["labels"]
    if family == "causal":
        rows = (labels[:, 1:] != IGNORE).nonzero()[:, 0]  # causal_target_loss's order: row-major
        return causal_target_loss(model, batch, reduction="none", prefix=prefix), rows
    inputs = dict(batch)
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:  # the decoder inputs without the model's own (here unused) loss over every logit
        inputs["decoder_input_ids"] = prepare(labels=labels)
        del inputs["labels"]
    logits = model(**inputs).logits
    mask = labels != IGNORE
    return torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="none"), mask.nonzero()[:, 0]


@torch.inference_mode()
def validation_loss(model, items: list[Encoded], family: str, pad_id: int, batch_size: int,
                    device: torch.device, autocast: AbstractContextManager, fuse: bool | None = None) -> float:
    """Mean cross-entropy per target token over the whole split (nats), in ``validation_batches``' passes
    (``fuse``: None fuses on CPU)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for _, batch, prefix in evaluation_passes(model, items, family, pad_id, batch_size, device, fuse):
        labels = batch["labels"]
        attention = pass_attention(model, batch["input_ids"].shape[1], device, training=False)
        if family == "causal":
            with autocast, attention:
                loss = causal_target_loss(model, batch, reduction="sum", prefix=prefix)
            count += int((labels[:, 1:] != IGNORE).sum())
        else:
            with autocast, attention:
                logits = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
            count += int((labels != IGNORE).sum())
        total += loss.double().cpu()
    return float(total / max(count, 1))


def evaluation_passes(model, items: list[Encoded], family: str, pad_id: int, batch_size: int, device: torch.device,
                      fuse: bool | None = None) -> Iterator[tuple[list[int], dict[str, torch.Tensor], int]]:
    """The forward-only passes over ``items`` (``validation_batches``; ``fuse``: None fuses on CPU): each
    pass's item indices, its batch on ``device``, and the prompt prefix its rows share (0: none)."""
    fuse = device.type == "cpu" if fuse is None else fuse
    for rows in validation_batches(items, family, batch_size, fuse):
        batch = collate([items[i] for i in rows], family, pad_id)
        prefix = prefix_to_share(model, batch) if family == "causal" else 0  # on the host copy: no sync
        yield rows, {k: v.to(device) for k, v in batch.items()}, prefix


def validation_batches(items: list[Encoded], family: str, batch_size: int, fuse: bool) -> list[list[int]]:
    """Indices of ``items`` in batches of ``batch_size`` drawn in length order (the summed loss does not depend
    on the order; similar lengths pad least). With ``fuse`` (CPU), consecutive batches share one forward pass
    while it stays small, as training's do (``batching.fuse_batches``): a pass's fixed cost (a shared prefix's
    own pass, every layer's small operations) is paid once. SmolLM2 on CoLA's 100 validation examples: 2
    passes, not 4 (1.06× faster, bench/RESULTS.md)."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].input_ids), len(items[i].labels)))
    batches = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    if not fuse:
        return batches
    return [[i for batch in chunk for i in batch] for chunk in fuse_batches(items, batches, family, FUSE_MAX_TOKENS)]


@torch.inference_mode()
def generate(model, items: list[Encoded], tokenizer, family: str, max_new_tokens: int, batch_size: int,
             device: torch.device, autocast: AbstractContextManager) -> list[str]:
    """Greedy, batched decoding with the KV cache; returns the decoded continuations."""
    model.eval()
    pad_id = tokenizer.pad_token_id
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
    return [outputs[i] for i in range(len(items))]
