"""Which mixed precision a run trains in: ``train.precision`` resolved on this machine, in accelerate's
names ("bf16", "fp16" or "no").

"auto" takes bf16 autocast only where the hardware multiplies bf16 natively:
- CUDA with bf16 (Ampere and later); on older GPUs fp16, except T5, whose activations overflow fp16, in fp32;
- x86 CPUs with AMX-BF16 or AVX512-BF16. Without them (an AVX-512 or AVX2 CPU) bf16 products are emulated:
  on a 2-core AVX-512 Xeon a 576×576 bf16 product ran at 51 GFLOP/s against fp32's 218, and a SmolLM2
  LoRA CoLA epoch took 2.9× as long in bf16 (53 s against 19 s). Such CPUs train in fp32;
- other CPUs (ARM), where the instruction set is not read, in bf16.
"""

from __future__ import annotations

import torch

from peftbench.speedups.cpu import instruction_set

EMULATED_BF16_CPUS = ("avx512", "avx2")  # x86 without AMX-BF16 or AVX512-BF16 (speedups.cpu.instruction_set)


def mixed_precision(precision: str, model_type: str) -> str:
    """Accelerate's ``mixed_precision`` for ``train.precision`` ("auto", "bf16" or "fp32") and the model's
    architecture (``LoadedModel.architecture``, e.g. "t5")."""
    if precision != "auto":
        return "no" if precision == "fp32" else precision
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16"
        return "no" if model_type == "t5" else "fp16"
    return "no" if instruction_set() in EMULATED_BF16_CPUS else "bf16"
