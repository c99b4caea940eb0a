"""A run's memory: its peak, what that peak covers, and the persistent costs the paper's §3.2 reasons about.

``result["memory"]``:

    peak_bytes             the run's peak: on CUDA the allocator's maximum since the run's start
                           (``kind`` "cuda_max_allocated"); on CPU the peak resident set of the process
                           (``kind`` "process_peak_rss", Linux's VmHWM, else ``ru_maxrss``)
    kind                   "cuda_max_allocated" | "process_peak_rss"
    scope                  what the peak covers: "run" (CUDA statistics reset when training starts),
                           "run_process" (a process that ran this run alone: the local executor's worker,
                           a Ray task), "shared_process" (a process that may have run other work before:
                           ``isolate_runs=false``, a multi-process launch; its peak is the highest so far)
    after_load_bytes       memory in use when training starts (the model loaded, the method applied, on its
                           device): resident set on CPU, allocated bytes on CUDA; None where unknown
    increment_bytes        peak_bytes - after_load_bytes: what training, validation and testing added
                           (gradients, optimiser state, activations). On tiny models it shows the methods'
                           differences that the interpreter's and libraries' fixed footprint hides in the peak
    trainable_param_bytes  bytes of the trainable parameters
    optimizer_state_bytes  bytes of the optimiser's state tensors after training (AdamW: two moments per
                           trainable value, and a step count)
    adapter_bytes          bytes of the saved adapter (full tuning: the whole model); None when not saved

The peak is a run's own only in a process of its own: a process's resident set never falls below what an
earlier run left in it (``speedups/freed_memory.py`` keeps freed memory in the process on purpose), so runs sharing a
process would each report the highest peak so far. The local executor runs every run in its own worker
process (``isolation.py``); Ray gives each run a fresh worker.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import torch

_dedicated: list[bool] = []


def dedicate_process_to_run() -> None:
    """Declare that this process was started for one run alone: its peak is that run's (scope "run_process")."""
    _dedicated[:] = [True]


def start_of_training(device: torch.device) -> int | None:
    """Reset the CUDA peak statistics; the bytes in use now (``after_load_bytes``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return current_rss_bytes()


def run_memory(device: torch.device, after_load_bytes: int | None, trainable: dict[str, torch.nn.Parameter],
               optimizer: torch.optim.Optimizer | None, adapter_bytes: int | None) -> dict[str, object]:
    """``result["memory"]`` at the end of a run (see the module docstring); a reference row has no optimiser."""
    if device.type == "cuda":
        peak, kind, scope = int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated", "run"
    else:
        peak, kind = peak_rss_bytes(), "process_peak_rss"
        scope = "run_process" if _dedicated else "shared_process"
    return {"peak_bytes": peak, "kind": kind, "scope": scope, "after_load_bytes": after_load_bytes,
            "increment_bytes": peak - after_load_bytes if after_load_bytes is not None else None,
            "trainable_param_bytes": sum(p.nbytes for p in trainable.values()),
            "optimizer_state_bytes": optimizer_state_bytes(optimizer) if optimizer is not None else 0,
            "adapter_bytes": adapter_bytes}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimiser's per-parameter state (accelerate's wrapper passes it through)."""
    return sum(value.nbytes for state in optimizer.state.values() for value in state.values()
               if isinstance(value, torch.Tensor))


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started its program (VmHWM on Linux).

    ``ru_maxrss`` is not used on Linux: it keeps the peak of the process image before ``exec``, so a worker
    spawned by a large parent would report at least the parent's resident set at the fork.
    """
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024))  # macOS reports bytes, others KiB


def current_rss_bytes() -> int | None:
    """This process's resident set now (Linux), else None."""
    kib = _proc_status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
