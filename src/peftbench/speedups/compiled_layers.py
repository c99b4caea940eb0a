"""Regional compilation: each of the model's repeated blocks compiled by ``torch.compile`` (Inductor).

On two CPU threads of a CPU with AMX, a SmolLM2 training step spends a quarter of its time in matrix
products; the rest is dozens of small operators per decoder layer (RMSNorm's fp32 round trip, rotary
embeddings, SiLU and the gate's product, autocast's casts), each a pass over memory and a trip through the
dispatcher (bench/RESULTS.md, "Where a training step goes"). Inductor fuses a layer's pointwise work into a
few C++ loops and leaves the matrix products to oneDNN/MKL, so the loss and the gradients are the same up
to floating-point reordering (fused kernels keep bf16 intermediates in fp32 registers).

The blocks are the classes a model names in ``_no_split_modules`` (transformers' declaration of the layer it
never splits across devices: ``LlamaDecoderLayer``, ``T5Block``), so every layer shares one compiled graph
(``torch._dynamo`` inlines the module's parameters as inputs) and the first pass of each new kind of pass
(training or forward-only, each attention implementation) pays the compilation: 8-30 s for
SmolLM2-135M on two threads, the least with Inductor's on-disk cache warm. Shapes are compiled dynamic, so a new
batch width does not compile again. The adapters inside a block (LoRA's low-rank pair, (IA)3's scales,
BitFit's biases) are compiled with it, so its gain can differ by method: the lever was not shown to keep
the time ratios and is off by default (bench/RESULTS.md, "Which levers tilt the comparison")."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

RECOMPILE_LIMIT = 64
"""``torch._dynamo.config.recompile_limit`` while the lever applies (torch's default: 8). All layers share one
compiled code object; each kind of pass (training, forward-only) × attention implementation × first and
later dynamic shape is one more entry, and more than 8 would send the remaining passes to eager silently."""

_COMPILED_PASS: ContextVar[bool] = ContextVar("compiled_pass", default=False)


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose class its transformers model declares in ``_no_split_modules``."""
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module
    names = set()
    for module in inner.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [module for module in inner.modules() if type(module).__name__ in names]


def cpp_compiler() -> str | None:
    """The path of the C++ compiler Inductor's CPU backend calls (``torch._inductor.config.cpp.cxx``: ``$CXX``,
    else g++, clang++ on macOS), or None where it is not on PATH."""
    from torch._inductor import config

    return next((path for name in config.cpp.cxx if name and (path := shutil.which(name))), None)


def why_not_compiled(model: nn.Module, device: torch.device) -> str | None:
    """Why the lever cannot apply to ``model`` on ``device``, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cpu" and cpp_compiler() is None:
        return "no C++ compiler on PATH (Inductor's CPU backend builds its kernels with one)"
    if not repeated_blocks(model):
        return "the model declares no repeated block (_no_split_modules)"
    return None


class _CompiledForward:
    """A block's ``forward``: compiled inside ``compiled_passes``, its own eager forward elsewhere."""

    def __init__(self, forward):
        self.eager = forward
        self.compiled = torch.compile(forward, dynamic=True)

    def __call__(self, *args, **kwargs):
        return (self.compiled if _COMPILED_PASS.get() else self.eager)(*args, **kwargs)


def compile_repeated_blocks(model: nn.Module) -> int:
    """Give every repeated block of ``model`` a compiled forward (dynamic shapes) that the passes under
    ``compiled_passes`` take; the number of blocks."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [block for block in repeated_blocks(model) if not isinstance(block.forward, _CompiledForward)]
    for block in blocks:
        block.forward = _CompiledForward(block.forward)
    return len(blocks)


@contextmanager
def compiled_passes():
    """While active, compiled blocks run compiled: the loss's passes (``forward.target_logits``), whose width
    changes batch by batch but whose kind does not. Decoding, label ranking and the forgetting measurement run
    eager, since their key/value caches would compile each layer again (the cache's state per layer is
    guarded)."""
    token = _COMPILED_PASS.set(True)
    try:
        yield
    finally:
        _COMPILED_PASS.reset(token)
