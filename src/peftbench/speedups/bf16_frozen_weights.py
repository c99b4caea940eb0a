"""Mixed precision helpers.

Under bf16 autocast every ``nn.Linear`` casts its fp32 weight to bf16 on each call. For weights that
train, autocast caches that cast for the duration of the autocast region; for frozen weights it does not,
so a frozen 135M-parameter base is re-cast (read 540 MB, write 270 MB) on every forward pass and every
decoding step. Storing the frozen linear weights in bf16 once gives the same matmul inputs autocast would
have produced, bit for bit, without the repeated casts; trainable parameters stay fp32 (the optimiser's
master copy). A frozen weight shared with an embedding (a tied LM head: 28M of SmolLM2's 135M) cannot be
cast in place, since embedding lookups are not autocast; the head gets its own bf16 copy instead (untied,
+2 bytes per weight) and the embedding keeps the fp32 original.
"""

from __future__ import annotations

import torch
from torch import nn


def store_frozen_linears_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the weights (and biases) of frozen ``nn.Linear`` layers to ``dtype``; returns how many."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    cast = 0
    for module in model.modules():
        if type(module) is not nn.Linear:  # exact type: PEFT wrappers keep their base layer as a child
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype == dtype:
            continue
        if module.bias is not None and module.bias.requires_grad:
            continue
        if id(weight) in embedding_weights:  # tied head: a bf16 copy of its own; the embedding stays fp32
            module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
        else:
            module.to(dtype)
        cast += 1
    return cast
