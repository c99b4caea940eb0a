"""Attention kernel choices that the defaults get wrong for small benchmark batches on CPU (bench/RESULTS.md).

transformers runs attention through PyTorch's scaled-dot-product attention ("sdpa") by default, and on CPU
SDPA picks its flash kernel, which is built for long sequences: on SmolLM2 LoRA training passes of up to
~300 tokens its backward is the slow part (64 × 31 CoLA tokens: 2.84 s a step against 2.14 s). SDPA's
other CPU kernel ("math") upcasts bf16 inputs to fp32 and runs both batched matmuls there. transformers'
own "eager" attention, under bf16 autocast, runs the two matmuls in bf16 (fp32 accumulation) and the
softmax in fp32, the way these models computed attention before SDPA: on the same step 1.09× faster
than the math kernel, and on forward-only (validation) passes 1.05-1.16× faster than either SDPA kernel
up to at least 554 tokens. Longer training passes keep flash, whose blocking pays off there (8 × 554
SAMSum tokens: 11.8 s against 13.4 s eager), and so does decoding with the key/value cache (a one-token
query: eager is slower). GPUs keep their defaults.

The choice is ``config._attn_implementation`` of the model's modules (an encoder-decoder's stacks hold
copies of the config), switched for the pass only; the backward uses whatever its forward ran (peftbench
does not recompute activations in the backward). Configs whose implementation is not "sdpa" (a user's
"flash_attention_2", a model without SDPA support) are left as they are.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from transformers import PretrainedConfig

EAGER_TRAINING_MAX_TOKENS = 320
"""Widest training pass (padded tokens per row) that runs eager attention on CPU; wider ones keep flash."""
EAGER_FORWARD_MAX_TOKENS = 600
"""Widest forward-only pass (validation loss) that runs eager attention on CPU."""


def eager_attention_pays(width: int, device: torch.device, training: bool) -> bool:
    """Whether a pass of ``width`` tokens per row on ``device`` runs faster with eager attention."""
    limit = EAGER_TRAINING_MAX_TOKENS if training else EAGER_FORWARD_MAX_TOKENS
    return device.type == "cpu" and width <= limit


@contextmanager
def pass_attention(model: nn.Module, width: int, device: torch.device, training: bool):
    """Around one forward pass of ``model`` (a transformers model, PEFT-wrapped or not): eager attention where
    ``eager_attention_pays``, the model's own choice otherwise. ``width``: the batch's ``input_ids`` width
    (prompt tuning's virtual tokens come on top)."""
    switched = _sdpa_configs(model) if eager_attention_pays(width, device, training) else []
    for config in switched:  # the internal field, as set_attn_implementation does: no recursion into sub-configs
        config._attn_implementation_internal = "eager"
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation_internal = "sdpa"


def _sdpa_configs(model: nn.Module) -> list[PretrainedConfig]:
    """The distinct configs of ``model``'s modules that select SDPA attention."""
    configs = {id(c): c for module in model.modules()
               if isinstance(c := getattr(module, "config", None), PretrainedConfig)}
    return [c for c in configs.values() if c._attn_implementation == "sdpa"]
