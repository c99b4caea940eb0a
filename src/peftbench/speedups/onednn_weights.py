"""Frozen bf16 linears multiplied through oneDNN's prepacked weights on CPU (bench/RESULTS.md).

A CPU matmul re-lays its weight out into the GEMM kernel's blocked format on every call. For a frozen
weight the layout never changes, so ``pack_frozen_linears`` makes it once: each frozen bf16 ``nn.Linear``
keeps a blocked copy of W [out, in] for the forward (x Wᵀ) and one of Wᵀ for the gradient of its input
(g W), and multiplies through ``torch.ops.mkldnn._linear_pointwise``, the prepacked linear that inductor
uses for frozen CPU graphs. The products are the same, bit for bit, as ``F.linear`` under bf16 autocast
(tests/test_onednn_weights.py). The large GEMMs gain; a whole step gains less, since the GEMMs are only
part of it (measured: bench/RESULTS.md).

The costs: making the copies (once per run), and memory, two blocked copies per frozen weight, which raise
the peak resident set; nothing is packed where they would take more than a quarter of the memory
available.
The plain weight stays the module's parameter, so state dicts, adapter saving and merging see nothing
new; the copies are rebuilt when the weight is replaced or changed in place, and a deep copy or pickle
of the model carries none. The switch is ``speedups.onednn_blocked_weights``.
"""

from __future__ import annotations

import psutil
import torch
from torch import nn

MIN_PACKED_ELEMENTS = 128 * 128
"""Smallest weight (in × out) worth packing: below it the call's fixed cost is most of a product, and the
blocked path is no faster (bench/RESULTS.md)."""
MAX_SHARE_OF_AVAILABLE_MEMORY = 0.25
"""Largest share of the memory available at packing time that the blocked copies may take."""


def packing_supported() -> bool:
    """oneDNN is built in and the CPU has bf16 instructions."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class _Blocked:
    """The blocked copies of one weight and the (storage, version) they were made from. Not model state:
    a deep copy or pickle gets an empty one, refilled on first use."""

    __slots__ = ("made_from", "weight", "weight_t")

    def __init__(self) -> None:
        self.made_from: tuple[int, int] | None = None
        self.weight: torch.Tensor | None = None
        self.weight_t: torch.Tensor | None = None

    def __reduce__(self):  # copy.deepcopy and pickle: an empty one
        return _Blocked, ()


def _multiply(x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] times a blocked [out, in] weight's transpose, plus bias: [..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), blocked, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """y = x Wᵀ + b for a frozen W and b: the backward returns the gradient of x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None):
        ctx.weight_t = weight_t
        return _multiply(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _multiply(grad, ctx.weight_t, None), None, None, None


class PackedFrozenLinear(nn.Linear):
    """An ``nn.Linear`` whose frozen bf16 weight is multiplied in oneDNN's blocked layout on CPU. Anything
    else (a weight that trains, another dtype or device, an fp32 input outside autocast) takes
    ``nn.Linear.forward``."""

    _blocked: _Blocked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable(x):
            return super().forward(x)
        if x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)  # the cast autocast gives a linear's input (its backward casts back)
        blocked = self._blocked_weights()
        return _FrozenLinear.apply(x, blocked.weight, blocked.weight_t, self.bias)

    def _packable(self, x: torch.Tensor) -> bool:
        """Still frozen bf16 on CPU (a user may have changed that), and a bf16 input or bf16 autocast."""
        if not _frozen_bf16_on_cpu(self) or x.device.type != "cpu":
            return False
        return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                             and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def _blocked_weights(self) -> _Blocked:
        blocked, weight = self._blocked, self.weight
        made_from = (weight.data_ptr(), weight._version)
        if blocked.made_from != made_from:
            with torch.no_grad():
                blocked.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
                blocked.weight_t = torch.ops.mkldnn._reorder_linear_weight(weight.detach().t().contiguous())
            blocked.made_from = made_from
        return blocked


def pack_frozen_linears(model: nn.Module) -> int:
    """Turn ``model``'s frozen bf16 CPU ``nn.Linear`` layers of at least ``MIN_PACKED_ELEMENTS`` weights into
    ``PackedFrozenLinear`` (in place, same parameters); returns how many (0: ``why_not_packed`` says why)."""
    if why_not_packed(model) is not None:
        return 0
    chosen = [module for module in model.modules() if _worth_packing(module)]
    for module in chosen:
        module.__class__ = PackedFrozenLinear
        module._blocked = _Blocked()
    return len(chosen)


def why_not_packed(model: nn.Module) -> str | None:
    """None when ``pack_frozen_linears`` would pack ``model``'s linears, else why not: oneDNN without bf16
    kernels, no frozen bf16 CPU linear big enough, or blocked copies that would take more than
    ``MAX_SHARE_OF_AVAILABLE_MEMORY`` of the memory available now."""
    if not packing_supported():
        return "oneDNN has no bf16 kernels on this CPU"
    chosen = [module for module in model.modules() if _worth_packing(module)]
    if not chosen:
        return f"no frozen bf16 CPU linear of at least {MIN_PACKED_ELEMENTS} weights"
    copies_bytes = sum(2 * module.weight.numel() * module.weight.element_size() for module in chosen)
    if copies_bytes > MAX_SHARE_OF_AVAILABLE_MEMORY * psutil.virtual_memory().available:
        return f"not enough free memory for the blocked copies ({copies_bytes / 2**30:.2f} GiB)"
    return None


def _worth_packing(module: nn.Module) -> bool:
    # exact type: PEFT wrappers keep their base layer as a child
    return (type(module) is nn.Linear and _frozen_bf16_on_cpu(module)
            and module.weight.numel() >= MIN_PACKED_ELEMENTS)


def _frozen_bf16_on_cpu(linear: nn.Linear) -> bool:
    weight, bias = linear.weight, linear.bias
    if weight.requires_grad or weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
        return False
    return bias is None or (not bias.requires_grad and bias.dtype == torch.bfloat16)
