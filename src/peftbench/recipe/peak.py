"""The matrix-product peak where a run runs, and the run's model FLOPs utilisation (MFU) against it.

A fixed square-matrix peak flatters nothing and explains little: small GEMMs run far below it, and the rate a
CPU reaches depends on its matrix instructions (AMX tiles, AVX-512 BF16 dot products, plain AVX2 FMAs). So
the peak a run is compared with is measured on the machine it runs on, at the model's own GEMM shapes:
every distinct linear (in × out) of the model's body, built from its config on the meta device, at ``rows``
tokens per pass, timed with ``F.linear`` as ``nn.Linear`` runs it (forward shapes; the backward's transposed
products are not timed). The table is cached on disk per machine (``machine_key``: CPU model, matrix
instruction flags, torch's CPU capability, threads, torch version; on CUDA the device name and capability)
and per shape set, under ``<cache_root>/peak/``, so it costs a few seconds once per machine and model.

The rate at the model's shapes (``PeakTable.model_rate``) weighs each shape by the FLOPs it does per token:
the total FLOPs over the time they take at the measured rates (a FLOP-weighted harmonic mean). MFU is the
run's achieved training FLOP/s, ``train_tokens_per_s`` × ``train_flops_per_token``, over that rate in the
run's precision. ``train_flops_per_token`` counts the body's linears as bench/flops.py does (2·in·out forward,
as much again for the gradient of the input when anything trains, and again for the weight's gradient when
the weight trains: ≈ 4N for a frozen base, 6N for full tuning; N the body's linear weights, embeddings and
the output head excluded, attention scores not counted), so MFU is a lower bound.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from peftbench.catalog.embedded import cache_root
from peftbench.catalog.models import auto_class
from peftbench.speedups.cpu import MATRIX_FLAGS, cpu_model, instruction_set, matrix_flags  # noqa: F401 - re-exported

"""The /proc/cpuinfo flags that decide which matrix kernels oneDNN and ATen can use."""
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISION_DTYPE = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}
"""accelerate's ``mixed_precision`` → the dtype the run's matrix products run in."""
MIN_ROWS, MAX_ROWS = 16, 4096
"""Bounds of the rows (tokens per pass) a run's peak is measured at."""
SECONDS_PER_WINDOW, WINDOWS = 0.1, 3
"""Each shape is timed in ``WINDOWS`` windows of at least ``SECONDS_PER_WINDOW`` s after one more to warm up; the
best window counts."""
MEASUREMENT = f"F.linear; 1 warm-up window, best of {WINDOWS} windows of {SECONDS_PER_WINDOW} s"
"""How ``measure_rate`` measures, part of the cache key: a change to it measures again."""


def machine_key(device: torch.device) -> dict[str, object]:
    """What a measured rate depends on besides the shape: the machine, its threads and torch."""
    key: dict[str, object] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        key.update(accelerator=torch.cuda.get_device_name(device), capability=instruction_set(device))
    else:
        key.update(processor=cpu_model(), flags=matrix_flags(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   threads=torch.get_num_threads())
    return key


@dataclass(frozen=True)
class GemmShape:
    """One matrix product: [rows, inner] × [inner, outer]; ``count``: how many of the model's linears have it
    (0: not part of the model's mix, e.g. a reference square product)."""

    rows: int
    inner: int
    outer: int
    count: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.inner * self.outer


def gemm_shapes(config, family: str, rows: int, head: bool = False) -> list[GemmShape]:
    """The distinct linears of the model ``config`` describes (built on the meta device, no weights), at ``rows``
    tokens, largest count first; the output head (d × vocab) only with ``head``."""
    with torch.device("meta"):
        model = auto_class(family).from_config(copy.deepcopy(config))
    output = model.get_output_embeddings()
    counts = Counter((m.in_features, m.out_features) for m in model.modules()
                     if isinstance(m, nn.Linear) and (head or m is not output))
    return [GemmShape(rows, inner, outer, count) for (inner, outer), count in counts.most_common()]


def pass_rows(tokens: int, batches: int) -> int:
    """Tokens per pass to measure at: the run's real tokens per batch, to the nearest power of two (so that runs
    of similar lengths share one cached table), within [MIN_ROWS, MAX_ROWS]; 1024 before any batch ran."""
    if batches <= 0 or tokens <= 0:
        return 1024
    nearest = 2 ** round(math.log2(tokens / batches))
    return min(MAX_ROWS, max(MIN_ROWS, nearest))


def measure_rate(shape: GemmShape, dtype: str, device: torch.device, seconds: float = SECONDS_PER_WINDOW,
                 windows: int = WINDOWS) -> float:
    """GFLOP/s of ``F.linear`` (x Wᵀ, as ``nn.Linear``) at ``shape`` in ``dtype``: the best of ``windows`` windows
    of at least ``seconds`` each, after one untimed window (kernel generation, page faults, and a process's first
    bf16 product, which sets up oneDNN's AMX state: a single warm-up call left the first window 10× slow)."""
    x = torch.randn(shape.rows, shape.inner, device=device).to(DTYPES[dtype])
    weight = torch.randn(shape.outer, shape.inner, device=device).to(DTYPES[dtype])
    best = 0.0
    for window in range(windows + 1):
        calls, started = 0, time.perf_counter()
        while True:
            F.linear(x, weight)
            calls += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        if window:  # window 0 warms up
            best = max(best, shape.flops * calls / elapsed / 1e9)
    return best


@dataclass
class PeakTable:
    """Measured GFLOP/s per shape and dtype on one machine (``machine``: ``machine_key``)."""

    machine: dict[str, object]
    shapes: list[GemmShape]
    gflops: dict[str, list[float]]
    """dtype name → the rate of each of ``shapes``, in order."""
    measured_at: str = ""
    load_average: list[float] | None = None
    """The 1-, 5- and 15-minute load averages when measured: a loaded machine gives low peaks."""

    def model_rate(self, dtype: str) -> float:
        """The rate at the model's mix of shapes: Σ count·FLOPs / Σ count·FLOPs / rate (GFLOP/s)."""
        pairs = [(s.count * s.flops, rate) for s, rate in zip(self.shapes, self.gflops[dtype], strict=True) if s.count]
        return sum(flops for flops, _ in pairs) / sum(flops / rate for flops, rate in pairs)

    def record(self) -> dict[str, object]:
        """What a result's ``hardware.peak`` holds."""
        return {"rows": self.shapes[0].rows if self.shapes else None,
                "gflops": {dtype: round(self.model_rate(dtype), 1) for dtype in self.gflops},
                "shapes": [{"rows": s.rows, "in": s.inner, "out": s.outer, "count": s.count,
                            **{dtype: round(rates[i], 1) for dtype, rates in self.gflops.items()}}
                           for i, s in enumerate(self.shapes)],
                "machine": _digest(self.machine), "measured_at": self.measured_at,
                "load_average": self.load_average}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(machine: dict[str, object], shapes: list[GemmShape], dtypes: tuple[str, ...],
               root: Path | None = None) -> Path:
    """``<root>/<machine digest>/<shape-set digest>.json``; root defaults to ``<cache_root>/peak``."""
    root = root if root is not None else cache_root() / "peak"
    shape_set = {"shapes": [asdict(s) for s in shapes], "dtypes": list(dtypes), "measurement": MEASUREMENT}
    return root / _digest(machine) / f"{_digest(shape_set)}.json"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the platform has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def oversubscribed(load: list[float] | None) -> bool:
    """More threads wanted to run over the last minute than the machine has cores (a run's own threads count,
    so a run alone on an idle machine is not)."""
    return load is not None and load[0] > (os.cpu_count() or 1) + 0.5


def measured_peak(shapes: list[GemmShape], device: torch.device, dtypes: tuple[str, ...] = ("bf16", "fp32"),
                  root: Path | None = None, machine: dict[str, object] | None = None, remeasure: bool = False,
                  measure: Callable[[GemmShape, str, torch.device], float] = measure_rate,
                  load: Callable[[], list[float] | None] = load_average) -> tuple[PeakTable, bool]:
    """The peak table of ``shapes`` on this machine (``machine`` overrides ``machine_key(device)``), from the
    cache when it holds one (unless ``remeasure``), else measured with ``measure``; and whether it came from the
    cache. A measurement is cached unless the CPU was ``oversubscribed`` when it began (``load``): a loaded
    machine's low rates are recorded with their load average, never kept for later runs."""
    machine = machine if machine is not None else machine_key(device)
    path = cache_path(machine, shapes, dtypes, root)
    if path.is_file() and not remeasure:
        stored = json.loads(path.read_text())
        if stored["machine"] == machine:  # a digest collision reads as a miss
            return PeakTable(machine, [GemmShape(**s) for s in stored["shapes"]], stored["gflops"],
                             stored["measured_at"], stored["load_average"]), True
    load_before = load()
    table = PeakTable(machine, list(shapes), {dtype: [measure(s, dtype, device) for s in shapes] for dtype in dtypes},
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), load_before)
    if device.type == "cpu" and oversubscribed(load_before):
        return table, False
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump({"machine": machine, "shapes": [asdict(s) for s in shapes], "gflops": table.gflops,
                   "measured_at": table.measured_at, "load_average": table.load_average}, handle, indent=1)
    os.replace(handle.name, path)  # atomic: concurrent runs each write a whole file
    return table, False


def linear_train_flops(linear: nn.Linear, any_trainable: bool) -> float:
    """Training FLOPs of ``linear`` per row of input: forward, the input's gradient (when anything trains) and
    the weight's gradient (when the weight trains)."""
    per_pass = 2.0 * linear.in_features * linear.out_features
    return per_pass + (per_pass if any_trainable else 0.0) + (per_pass if linear.weight.requires_grad else 0.0)


def train_flops_per_token(model: nn.Module) -> float | None:
    """Training FLOPs per token of ``model``'s body linears (the module docstring); None for encoder-decoder
    models, whose tokens do not all pass the same linears."""
    if getattr(model.config, "is_encoder_decoder", False):
        return None
    head = getattr(model, "get_base_model", lambda: model)().get_output_embeddings()
    any_trainable = any(p.requires_grad for p in model.parameters())
    return sum(linear_train_flops(m, any_trainable) for m in model.modules()
               if isinstance(m, nn.Linear) and m is not head)


def mfu(tokens_per_s: float | None, flops_per_token: float | None, peak_gflops: float | None) -> float | None:
    """Achieved training FLOP/s over the peak (a fraction); None where any part is unknown."""
    if not tokens_per_s or flops_per_token is None or not peak_gflops:
        return None
    return tokens_per_s * flops_per_token / (peak_gflops * 1e9)


def measures_by_default(processes: int) -> bool:
    """``train.measure_peak`` None: measure in single-process runs (cached after the first run on a machine);
    a multi-process run's ranks would time their products against each other."""
    return processes == 1


def run_peak(enabled: bool, model: nn.Module, config, family: str, device: torch.device, precision: str,
             tokens: int, batches: int, seconds: float) -> tuple[dict[str, object] | None, float | None]:
    """A finished run's ``hardware.peak`` and ``throughput.mfu`` (both None when not ``enabled``): the peak at
    the model's shapes and the run's tokens per batch, measured (or read from the cache) now, after training.
    ``precision``: accelerate's mixed_precision; ``tokens``/``batches``/``seconds``: the run's training."""
    if not enabled:
        return None, None
    dtype = PRECISION_DTYPE.get(precision, "fp32")
    dtypes = tuple(dict.fromkeys(("bf16", "fp32", dtype)))
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtypes = tuple(d for d in dtypes if d != "bf16")
    try:
        shapes = gemm_shapes(config, family, pass_rows(tokens, batches))
    except Exception as error:  # noqa: BLE001 - a model built from remote code, say: the finished run still counts
        warnings.warn(f"no matrix-product peak for this model (its config does not build on the meta device: "
                      f"{error})", stacklevel=2)
        return None, None
    table, _ = measured_peak(shapes, device, dtypes)
    tokens_per_s = tokens / seconds if seconds else None
    return table.record(), mfu(tokens_per_s, train_flops_per_token(model), table.model_rate(dtype))
