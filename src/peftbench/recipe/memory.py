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
    breakdown              what the peak holds, in bytes (the same parts on CPU and CUDA):
                             runtime          the process before the model loads (interpreter, libraries,
                                              the data): resident set on CPU, allocated bytes on CUDA
                             weights          the model's parameters and buffers, each storage once, with the
                                              copies speed-ups keep (bf16 frozen linears, oneDNN's blocked
                                              copies)
                             gradients        one gradient per trainable parameter, of its size
                             optimizer_state  the optimiser's state tensors after training (AdamW: two moments
                                              per trainable value, and a step count)
                             activations      the bytes autograd saved for backward in the widest training
                                              pass (most padded tokens), each storage once, parameters not
                                              counted (saved-tensor hooks: ``ActivationProbe``); autocast's
                                              bf16 copies of trainable weights, saved for backward, count here
                             overhead         peak_bytes less all of the above: allocator retention,
                                              temporaries, what loading left behind; None without runtime
    widest_pass            {"rows", "tokens"}: the training pass whose activations were measured
    phase_peaks            the peak of each phase of the run, in bytes (``PhasePeaks``): "load" (the model
                           loaded, the method applied), "reference" (forgetting's pass before training),
                           "train" (optimiser steps), "validation" (validation loss and metric),
                           "checkpoint" (the write starts; it ends in the background, during "train"), "test",
                           "forgetting", "end" (the adapter saved, the outcomes written) and "other" (between
                           phases); the phase whose peak is ``peak_bytes`` set it (``peak_phase``)
    peak_phase             the phase that set the peak
    phase_peaks_kind       "per_phase" (the peak statistics reset at each phase: Linux's clear_refs, CUDA's
                           reset_peak_memory_stats) or "cumulative" (no reset: each phase's entry is the highest
                           so far at its end)
    gradient_checkpointing whether layers recomputed their activations in backward (``train.gradient_checkpointing``)
    predicted              what ``--dry-run`` predicts for the run (``memory_estimate.py``), with the measured
                           runtime: {"peak_bytes", "breakdown", "widest_pass"}; None where it could not be made
    adapter_bytes          bytes of the saved adapter (full tuning: the whole model); None when not saved
    allocator              what served the memory, which the peak depends on: on CPU the C allocator
                           ({"name": "glibc" | "jemalloc" | "tcmalloc" | ..., "settings": the environment
                           variables that tune it, "keeps_freed_memory"}: ``speedups/freed_memory.py``), on
                           CUDA {"name": "cuda_caching", "settings": PYTORCH_CUDA_ALLOC_CONF if set}
    process_start          how the run's worker process started: "forkserver" (forked from a server that had
                           imported the libraries: their pages count in the worker's resident set only once it
                           touches them, so ``runtime`` reads lower than a spawned worker's), "spawn" (a fresh
                           interpreter), None (the sweep's own process, a Ray task)

The peak is a run's own only in a process of its own: a process's resident set never falls below what an
earlier run left in it (``speedups/freed_memory.py`` keeps freed memory in the process on purpose), so runs sharing a
process would each report the highest peak so far. The local executor runs every run in its own worker
process (``isolation.py``); Ray gives each run a fresh worker.

Results of schema version 1 had ``trainable_param_bytes`` (now ``breakdown.gradients``) and
``optimizer_state_bytes`` (now ``breakdown.optimizer_state``) instead of the breakdown;
``analysis.report.memory.breakdown_of`` reads either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from peftbench.config import SpeedupsConfig
from peftbench.speedups.freed_memory import allocator
from peftbench.speedups.onednn_weights import blocked_bytes

_dedicated: list[str | None] = []  # [how the process started] once dedicated to one run


def dedicate_process_to_run(started_by: str | None = None) -> None:
    """Declare that this process was started for one run alone: its peak is that run's (scope "run_process").
    ``started_by``: "forkserver" or "spawn" (``memory.process_start``), None where unknown (a Ray task)."""
    _dedicated[:] = [started_by]


def process_dedicated() -> bool:
    """Whether this process was started for one run alone (``dedicate_process_to_run``)."""
    return bool(_dedicated)


def runtime_bytes() -> int | None:
    """The bytes the process holds before the model loads (``breakdown.runtime``): allocated on the current
    CUDA device where there is one, else the resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.memory_allocated())
    return current_rss_bytes()


class PhasePeaks:
    """The peak of each phase of a run: entering or leaving a phase reads the peak since the last reset,
    gives it to the phase that was open ("load" before the first, "other" between two), and resets the peak statistics
    (CPU: writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` to the resident set now; CUDA:
    ``reset_peak_memory_stats``). ``highest`` keeps the run's peak across resets. Where a reset fails the
    statistics run on, and each phase records the highest so far (``kind`` "cumulative")."""

    def __init__(self) -> None:
        self.process_highest = 0
        """The highest peak of every run this process has held (resets and ``begin_run`` leave it)."""
        self.begin_run()

    def begin_run(self) -> None:
        """Forget the phases of an earlier run in this process (the peak statistics run on: in a process
        shared with earlier runs the first interval, "load", holds their peak too, as ``scope`` says)."""
        self.peaks: dict[str, int] = {}
        self.highest = 0
        self.kind = "per_phase"
        self._open: list[str] = []
        self._between = "load"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._close_interval()
        self._open.append(name)
        try:
            yield
        finally:
            self._close_interval()
            self._open.pop()
            self._between = "other"

    def peak_bytes(self) -> int:
        """The run's peak so far, over every phase and the interval open now."""
        return max(self.highest, _peak_since_reset())

    def record(self) -> dict[str, object]:
        self._close_interval()
        peak_phase = max(self.peaks, key=self.peaks.__getitem__) if self.peaks else None
        return {"phase_peaks": dict(self.peaks), "peak_phase": peak_phase, "phase_peaks_kind": self.kind}

    def _close_interval(self) -> None:
        peak = _peak_since_reset()
        name = self._open[-1] if self._open else self._between
        self.peaks[name] = max(self.peaks.get(name, 0), peak)
        self.highest = max(self.highest, peak)
        self.process_highest = max(self.process_highest, peak)
        if not _reset_peak():
            self.kind = "cumulative"


def _peak_since_reset() -> int:
    """CUDA's allocated peak, else the process's peak resident set (``peak_rss_bytes``), since the last reset."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return peak_rss_bytes()


def _reset_peak() -> bool:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


PHASES = PhasePeaks()
"""The running process's phases: ``run_cell`` opens them; ``run_memory`` reads the run's peak from them."""


def pass_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Padded tokens of a collated training batch (inputs and labels): what makes one pass wider than another."""
    return int(batch["input_ids"].numel() + batch["labels"].numel())


class ActivationProbe:
    """The bytes autograd saves for backward in the widest pass so far: a pass wider than every earlier one
    (``pass_tokens``) runs under saved-tensor hooks that add up each saved storage once; parameters (the
    model's own tensors, not activations) and opaque tensors are left out. Narrower passes run unhooked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, model: nn.Module | None = None) -> None:
        self.saved_bytes, self.tokens, self.rows = 0, 0, 0
        self._parameters = {p.untyped_storage().data_ptr() for p in model.parameters()} if model is not None else set()

    @contextlib.contextmanager
    def measure(self, batch: dict[str, torch.Tensor]) -> Iterator[None]:
        tokens = pass_tokens(batch)
        if tokens <= self.tokens:
            yield
            return
        seen: set[int] = set(self._parameters)
        total = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # oneDNN's blocked weights: opaque, and weights
                return tensor
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total[0] += storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        self.saved_bytes, self.tokens, self.rows = total[0], tokens, int(batch["input_ids"].shape[0])


ACTIVATIONS = ActivationProbe()
"""The running process's probe: ``start_of_training`` resets it, ``steps.accumulate`` measures through it."""


def weights_bytes(model: nn.Module) -> int:
    """The model's parameters and buffers, each storage once, and the blocked copies oneDNN keeps."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers()] if t.device.type != "meta"}
    return sum(storages.values()) + blocked_bytes(model)


def enable_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """With ``enabled`` (``train.gradient_checkpointing``), every layer of the base model recomputes its
    activations in backward instead of saving them (non-reentrant checkpointing: it works with frozen inputs,
    as every PEFT method has)."""
    if not enabled:
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


PASS_ONLY_LEVERS = ("eager_attention", "bits_dropout", "compiled_layers")
"""Speed-ups that switch attention, dropout or compiled layers around a pass's forward only: a layer recomputed
in backward would run without them (another attention kernel, other dropout masks, eager rounding), so
gradient checkpointing turns them off."""


def speedups_for(config: SpeedupsConfig, gradient_checkpointing: bool) -> SpeedupsConfig:
    """The speed-ups a run uses: ``config``, less ``PASS_ONLY_LEVERS`` under gradient checkpointing."""
    if not gradient_checkpointing:
        return config
    return dataclasses.replace(config, **dict.fromkeys(PASS_ONLY_LEVERS, False))


@torch.no_grad()
def release_weights_file(model: nn.Module) -> None:
    """Give every CPU parameter memory of its own, so the weights file's mapping is released: safetensors loads
    by mapping the file, pages become resident as they are read (the bf16 cast of the frozen linears reads them
    all), and one tensor still backed by the mapping (the fp32 embedding) keeps all of it, the whole fp32 model,
    resident beside the copies actually used (SmolLM2: 0.4 GB)."""
    for param in model.parameters():
        if param.device.type == "cpu":
            param.data = param.data.clone()


def start_of_training(device: torch.device, model: nn.Module | None = None) -> int | None:
    """Reset the CUDA peak statistics and the activation probe (``model``: its parameters are not activations),
    release the weights file's mapping (``release_weights_file``); the bytes in use now (``after_load_bytes``)."""
    if model is not None:
        release_weights_file(model)
    ACTIVATIONS.reset(model)  # after: the probe leaves out the parameters' storages as they are now
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return current_rss_bytes()


def run_memory(device: torch.device, after_load_bytes: int | None, trainable: dict[str, torch.nn.Parameter],
               optimizer: torch.optim.Optimizer | None, adapter_bytes: int | None, *,
               runtime: int | None = None, model: nn.Module | None = None,
               gradient_checkpointing: bool = False) -> dict[str, object]:
    """``result["memory"]`` at the end of a run (see the module docstring); a reference row has no optimiser.
    ``runtime``: ``runtime_bytes()`` before the model loaded; ``model``: the trained model (its weights)."""
    peak = PHASES.peak_bytes()  # over every phase: the statistics are reset as each begins
    if device.type == "cuda":
        kind, scope = "cuda_max_allocated", "run"
    else:
        kind, scope = "process_peak_rss", "run_process" if _dedicated else "shared_process"
    if scope == "shared_process":  # the process's peak, as the scope says: the resets must not hide earlier runs'
        peak = max(peak, PHASES.process_highest)
    parts = {"runtime": runtime, "weights": weights_bytes(model) if model is not None else 0,
             "gradients": sum(p.nbytes for p in trainable.values()),
             "optimizer_state": optimizer_state_bytes(optimizer) if optimizer is not None else 0,
             "activations": ACTIVATIONS.saved_bytes}
    known = [value for value in parts.values() if value is not None]
    breakdown = {**parts, "overhead": peak - sum(known) if runtime is not None else None}
    return {"peak_bytes": peak, "kind": kind, "scope": scope, "after_load_bytes": after_load_bytes,
            "increment_bytes": peak - after_load_bytes if after_load_bytes is not None else None,
            "breakdown": breakdown, "widest_pass": {"rows": ACTIVATIONS.rows, "tokens": ACTIVATIONS.tokens},
            "gradient_checkpointing": gradient_checkpointing, "adapter_bytes": adapter_bytes,
            "allocator": _allocator(device), "process_start": _dedicated[0] if _dedicated else None,
            **PHASES.record()}


def _allocator(device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        return {"name": "cuda_caching", "settings": {"PYTORCH_CUDA_ALLOC_CONF": conf} if conf else {}}
    return allocator()


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
