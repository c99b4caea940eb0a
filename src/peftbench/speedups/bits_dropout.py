"""Dropout whose masks cost less to draw on CPU (bench/RESULTS.md, "Dropout masks").

``torch.nn.functional.dropout`` on CPU draws its mask with ``bernoulli_`` into a tensor of the input's
dtype, divides it by 1 - p and multiplies: for T5's dropout of 0.1 on the attention probabilities
(batch × heads × length × length, where the matmuls are only batch × length × d_model) that draw is the
largest single cost of a training step (31-34 % of the tiny T5 cell's step). Here the mask comes from 16
uniform random bits per element, four elements per int64 draw of the default generator, compared with the
threshold of p and converted to the scaled mask: a Bernoulli(1 - p) keep mask with p resolved to 2**-16
(T5's 0.1 becomes 6,554 / 65,536 = 0.100006; FlashAttention's CUDA kernels resolve the keep probability
to 1/255), the 1 / (1 - p) of that p as the scale, rounded to the input's dtype as torch rounds its own,
reproducible from ``torch.manual_seed``, but another random stream than torch's: a run keeps its
distribution, not its bit-for-bit masks. Drawing 16 bits rather than 32 halves the random bits a mask
costs (its gain: bench/RESULTS.md).

The swap is ``torch.nn.functional.dropout`` itself (process-wide), for one training forward pass (``cpu_dropout``):
``nn.Dropout`` modules and transformers' attention functions look it up there at call time. Autograd
records the mask multiply, so the backward needs no dropout call. GPUs keep torch's fused kernel.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

_BITS = 2**16
"""Random values per element: the int16 quarters of int64 draws over the full 64-bit range."""
_torch_dropout = F.dropout


def bits_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``F.dropout``'s signature and semantics, its mask drawn from 16 random bits per element on CPU;
    anything else (evaluation, a p that 16 bits round to 0 or 1, in-place, other devices, integer
    tensors) goes to torch's."""
    dropped = round(p * _BITS) if 0 < p < 1 else 0  # of the _BITS values an element can draw, this many drop it
    if not (training and 0 < dropped < _BITS and not inplace and input.device.type == "cpu"
            and input.is_floating_point()):
        return _torch_dropout(input, p, training, inplace)
    n = input.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full range: 64 uniform bits
    bits = words.view(torch.int16)[:n].view(input.shape)  # uniform over [-2**15, 2**15)
    scale = torch.tensor(_BITS / (_BITS - dropped), dtype=input.dtype)  # 1 / (1 - p), as torch rounds it
    mask = (bits >= dropped - 2**15).to(input.dtype).mul_(scale)  # 0 or 1 / (1 - p); torch.where is 3-5x slower
    return input * mask


@contextmanager
def cpu_dropout():
    """Around a CPU training forward pass: every ``F.dropout`` call is ``bits_dropout``."""
    before = F.dropout
    F.dropout = bits_dropout
    try:
        yield
    finally:
        F.dropout = before
