"""A prompt prefix that every row of a causal batch shares is run once, not once per row.

A task's template puts the same instruction before every example: CoLA's "Is the following sentence
grammatically acceptable or unacceptable?\\nSentence:" is 14 of SmolLM2's ~30 tokens per example. In a
causal model a position attends only to earlier ones, so the hidden states (and the keys and values) of a
prefix common to all rows do not depend on the rest of the row: computing them for one row and repeating
its key/value cache across the batch gives the same function, the same loss, and (through the repeat,
whose backward sums over rows) the same gradients, up to floating-point reordering. The work saved is the
prefix's share of each row (its gain: bench/RESULTS.md).

Not applied where it would change the computation: encoder-decoder models (the encoder attends both ways),
prompt-learning methods (PEFT prepends the virtual tokens itself), training with dropout (the rows would
share one dropout mask over the prefix), a prefix that reaches the position predicting the first target
token, or a prefix too short to pay for the extra pass.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from peftbench.catalog.peft_compat import prompt_learning
from peftbench.constants import IGNORE

MIN_SHARED_TOKENS = 8
"""The shortest common prefix worth a separate pass (the pass's fixed cost is a few ms per layer)."""


def supports_prefix_sharing(model: nn.Module) -> bool:
    """A causal transformers LM (its forward takes a key/value cache), without PEFT virtual tokens, and
    without dropout at work."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if prompt_learning(inner):
        return False
    if inner.training and has_dropout(inner):
        return False
    return inner.get_output_embeddings() is not None  # the loss trims the head's input (speedups/forward.py)


def has_dropout(model: nn.Module) -> bool:
    """Dropout modules with p > 0, or a config rate > 0 (attention dropout is a functional argument)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(getattr(model, "module", model), "config", None)
    if config is None:
        return False
    rates = {k: v for k, v in config.to_dict().items() if "dropout" in k or "pdrop" in k}
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in rates.values())


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Tokens at the start of ``batch`` (right-padded) that every row has in common, or 0 when sharing them
    would not pay or would change the result.

    The prefix stops before the position that predicts a row's first target token (position t predicts
    t + 1), and before the batch's last column, so every row keeps a suffix.
    """
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    common = int((ids == ids[:1]).all(dim=0).long().cumprod(dim=0).sum())
    first_target = int((labels != IGNORE).long().argmax(dim=1).min())  # labels align with input_ids
    length = min(common, first_target - 1, ids.shape[1] - 1)
    return length if length >= MIN_SHARED_TOKENS else 0


def body_of(model: nn.Module) -> nn.Module:
    """The transformer stack under the LM head (PEFT's tuner layers live inside it)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = getattr(inner, "get_base_model", lambda: inner)()  # PEFT wrapper → the transformers model
    return inner.base_model  # transformers: the stack named by ``base_model_prefix``


def forward_with_shared_prefix(model: nn.Module, inputs: dict[str, torch.Tensor], prefix: int):
    """``model``'s output for ``inputs`` (input_ids, attention_mask; right-padded) with the first ``prefix``
    tokens' keys and values computed once, from row 0, and repeated over the batch. The prefix runs through
    the stack alone (no LM head); the output's logits cover positions ``prefix`` onwards."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    body = body_of(model)
    cache = DynamicCache(config=body.config)
    body(input_ids=ids[:1, :prefix], attention_mask=mask[:1, :prefix], cache=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])  # a differentiable copy: its backward sums the rows' gradients
    return model(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache, use_cache=True)
