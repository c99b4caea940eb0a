"""What a result records about where it ran: versions, git state, hardware (memory: ``memory.py``; the measured
matrix-product peak: ``recipe/peak.py``)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from peftbench.recipe import peak

_PACKAGES = ("peftbench", "torch", "transformers", "peft", "accelerate", "datasets", "rouge-score", "numpy")


def versions() -> dict[str, object]:
    found: dict[str, object] = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found.update(git_state())
    return found


def git_state() -> dict[str, object]:
    """The source checkout's commit and whether it had uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}
    return {"git_sha": sha, "git_dirty": bool(dirty)}


def hardware(device: torch.device) -> dict[str, object]:
    """The machine, its threads and its matrix instructions (``instruction_set``: AMX, AVX-512 BF16, ... or the
    CUDA capability; ``cpu_flags``: the /proc/cpuinfo flags behind it)."""
    info: dict[str, object] = {
        "device": device.type, "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": peak.cpu_model(),
        "cpu_flags": peak.matrix_flags(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "instruction_set": peak.instruction_set(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(accelerator=props.name, accelerator_count=torch.cuda.device_count(),
                    accelerator_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    else:
        info["accelerator"] = None
    return info

