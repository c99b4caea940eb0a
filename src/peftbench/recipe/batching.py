"""Tokenised examples and padded batches, for both model families.

seq2seq: the prompt is the encoder input, the target (+ EOS) the decoder labels.
causal:  one sequence ``prompt + " " + target + EOS``; only the target's tokens carry a loss (labels
         elsewhere are -100). Training pads on the right; generation pads on the left so that every
         prompt ends where decoding starts.
encoder: the prompt alone; its one label is the index of the target among the task's label words.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from peftbench.catalog.tasks.data import Example
from peftbench.constants import IGNORE  # noqa: F401 - the label value cross-entropy skips, here for the recipe

_KEEP_TAIL = 16  # prompt tokens kept from the end when truncating: the template's answer cue lives there


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]
    """The prompt alone (what generation starts from)."""


def truncate_middle(ids: list[int], limit: int) -> list[int]:
    """Keep the head (instruction) and the last few tokens (answer cue) of an over-long prompt."""
    if len(ids) <= limit:
        return ids
    tail = min(_KEEP_TAIL, limit // 4)
    return ids[: limit - tail] + ids[len(ids) - tail:]


def encode(examples: list[Example], tokenizer, family: str, max_source: int, max_target: int,
           classes: list[str] | None = None) -> list[Encoded]:
    """Tokenise a split once (batched: fast tokenizers run in Rust). ``classes``: an encoder model's label
    words, in class-index order."""
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if family == "encoder":
        prompts = [truncate_middle(prompt, max_source) for prompt in prompts]
        return [Encoded(prompt, [classes.index(e.target)], prompt) for e, prompt in zip(examples, prompts,
                                                                                          strict=True)]
    if family == "seq2seq":
        targets = tokenizer([e.target for e in examples], add_special_tokens=True)["input_ids"]
        encoded = []
        for prompt, target in zip(prompts, targets, strict=True):
            prompt = truncate_middle(prompt, max_source)
            labels = target[:max_target] if target[-1:] == [eos] else target[: max_target - 1] + [eos]
            encoded.append(Encoded(prompt, labels[:max_target], prompt))
        return encoded
    targets = tokenizer([" " + e.target for e in examples], add_special_tokens=False)["input_ids"]
    encoded = []
    for prompt, target in zip(prompts, targets, strict=True):
        prompt = truncate_middle(prompt, max_source)
        target = target[: max_target - 1] + [eos]
        encoded.append(Encoded(prompt + target, [IGNORE] * len(prompt) + target, prompt))
    return encoded


def padded_size(items: list[Encoded], batches: list[list[int]], family: str, virtual_tokens: int = 0) -> int:
    """Tokens of ``batches`` collated as one padded batch (encoder + decoder widths for seq2seq), with the
    ``virtual_tokens`` prompt learning puts before every row."""
    rows = [items[i] for batch in batches for i in batch]
    width = max(len(e.input_ids) for e in rows) + (max(len(e.labels) for e in rows) if family == "seq2seq" else 0)
    return len(rows) * (width + virtual_tokens)


def fuse_batches(items: list[Encoded], group: list[list[int]], family: str, max_tokens: int,
                 max_padding: float = 1.25, virtual_tokens: int = 0) -> list[list[list[int]]]:
    """Consecutive batches of one optimiser step merged into chunks that run as one forward/backward.

    Each chunk stays within ``max_tokens`` padded tokens (activation memory) and pads at most
    ``max_padding`` times what its batches would pad apart; a batch that alone exceeds the limit runs alone.
    ``virtual_tokens``: the tokens prompt learning adds to every row, which the activations hold too.
    """
    chunks: list[list[list[int]]] = []
    for batch in group:
        candidate = chunks[-1] + [batch] if chunks else None
        if candidate and padded_size(items, candidate, family, virtual_tokens) <= min(
                max_tokens, max_padding * sum(padded_size(items, [b], family, virtual_tokens) for b in candidate)):
            chunks[-1] = candidate
        else:
            chunks.append([batch])
    return chunks


FUSE_MAX_TOKENS = 2048
"""Padded tokens that one fused forward/backward may hold (activation memory; see ``plan_passes``)."""


def plan_passes(items: list[Encoded], group: list[list[int]], family: str, batch_size: int, splits: int,
                fuse: bool, virtual_tokens: int = 0) -> list[list[tuple[int, list[int], int]]]:
    """The forward/backward passes of one optimiser step: each a list of (batch position, rows, pieces of that
    batch) segments.

    With ``fuse`` (on CPU) and no micro-batch split, consecutive batches share a pass while it stays small
    (``fuse_batches``). Every pass has a fixed cost that dominates small batches: autocast re-casts every
    trainable weight, weight gradients are converted and accumulated, small GEMMs run below the CPU's peak
    (one pass of 64 examples instead of 4 of 16 pays it once). Otherwise a batch
    runs as ``splits`` micro-batches of ⌈batch_size / splits⌉. The gradient is the same either way: each
    batch's mean loss over its target tokens, divided by the accumulation.
    """
    if fuse and splits == 1:
        passes, position = [], 0
        for chunk in fuse_batches(items, group, family, FUSE_MAX_TOKENS, virtual_tokens=virtual_tokens):
            passes.append([(position + k, batch, 1) for k, batch in enumerate(chunk)])
            position += len(chunk)
        return passes
    micro = math.ceil(batch_size / splits)
    passes = []
    for position, batch in enumerate(group):
        pieces = [batch[i: i + micro] for i in range(0, len(batch), micro)]
        passes += [[(position, piece, len(pieces))] for piece in pieces]
    return passes


def length_grouped_batches(items: list[Encoded], batch_size: int, seed: int, group_by_length: bool) -> list[list[int]]:
    """Index batches in a seeded order; with grouping, similar lengths share a batch (less padding).

    Grouping sorts within windows of 50 batches and then shuffles the batches, the usual compromise
    between padding waste and randomness.
    """
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        grouped = []
        for start in range(0, len(order), window):
            chunk = order[start: start + window]
            grouped.extend(sorted(chunk, key=lambda i: len(items[i].input_ids) + len(items[i].labels)))
        order = grouped
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def collate(items: list[Encoded], family: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Training/loss batch: right-padded; labels padded with IGNORE."""
    width = max(len(e.input_ids) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        input_ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        attention[row, : len(e.input_ids)] = 1
    label_width = max(len(e.labels) for e in items)
    labels = torch.full((len(items), label_width), IGNORE, dtype=torch.long)
    for row, e in enumerate(items):
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def collate_prompts(items: list[Encoded], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Generation batch: prompts only; causal models need left padding."""
    width = max(len(e.prompt_ids) for e in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.prompt_ids)
        span = slice(width - n, width) if left else slice(0, n)
        input_ids[row, span] = torch.tensor(e.prompt_ids)
        attention[row, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


def source_token_limit(max_source_tokens: int, family: str, model: nn.Module) -> int:
    """The prompt tokens a run keeps: ``max_source_tokens``, and on an encoder no more than its absolute
    positions hold beside prompt learning's virtual tokens (MiniLM: 512 - 100 with prompt tuning)."""
    if family != "encoder":
        return max_source_tokens
    peft_config = getattr(model, "active_peft_config", None)
    virtual = peft_config.num_virtual_tokens if getattr(peft_config, "is_prompt_learning", False) else 0
    return min(max_source_tokens, model.config.max_position_embeddings - virtual)
