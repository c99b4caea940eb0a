"""Kernel choices that the defaults get wrong for small benchmark batches (measured in bench/RESULTS.md).

PyTorch's CPU flash-attention kernel is built for long sequences: on a training batch of 16 × 30 tokens
(SmolLM2, 9 heads of 64) its backward pass takes 7 ms per layer against 2 ms for the plain ("math")
implementation, 15% of a LoRA training step. The math kernel wins forward + backward up to about 200
tokens (it upcasts bf16 to fp32 internally, as flash does; outputs agree to bf16 rounding); beyond that,
flash's blocking pays off. Inference (forward only) keeps the default. GPUs keep theirs.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

MATH_ATTENTION_MAX_TOKENS = 200
"""Widest batch (tokens) for which training uses the math attention kernel on CPU."""


@contextmanager
def training_attention(width: int, device: torch.device):
    """Around a training forward pass (the backward uses the kernel its forward chose)."""
    use_math = device.type == "cpu" and width <= MATH_ATTENTION_MAX_TOKENS
    with sdpa_kernel([SDPBackend.MATH]) if use_math else nullcontext():
        yield
