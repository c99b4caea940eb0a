"""What the processor offers for matrix products: its model name, its matrix instruction flags and the best
matrix instruction set torch can use on it. The speed-ups decide from it (``eager_attention``), and the recipe
records it and keys its measured peaks by it (``recipe/peak.py``)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

MATRIX_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx_vnni", "avx2")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matrix_flags() -> list[str]:
    """Which of ``MATRIX_FLAGS`` the CPU has (empty off Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in MATRIX_FLAGS if flag in present]
    except OSError:
        pass
    return []


def instruction_set(device: torch.device | None = None) -> str:
    """The best matrix instruction set of ``device``: on CPU "amx-bf16", "avx512-bf16", "avx512", "avx2" or
    "default" (from /proc/cpuinfo, capped by torch's own CPU capability); on CUDA "cuda-sm<major><minor>"."""
    if device is not None and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    flags, capability = set(matrix_flags()), torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):  # ATen runs AVX-512 kernels; oneDNN picks AMX / BF16 by itself
        if "amx_bf16" in flags:
            return "amx-bf16"
        return "avx512-bf16" if "avx512_bf16" in flags else "avx512"
    return "avx2" if capability == "AVX2" else "default"
