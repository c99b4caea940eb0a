"""What of a training step's peak resident set is tensors, and what is the allocator's.

    python bench/tensor_peak.py [--data-dir ../shared/data] [--task cola] [--methods lora,full] [key=value ...]

A run's ``memory.breakdown`` calls ``overhead`` whatever its peak holds beyond runtime, weights, gradients,
optimiser state and saved activations: the backward's transients and the memory glibc's malloc keeps after
it is freed. This tells the two apart on the optimiser steps of an epoch, set up as a run sets them up
(``profile_training.Cell``: the cell's batches in the run's order, the run's autocast and speed-ups), after
``--warmup`` steps so that AdamW's state exists:

- tensors at the peak: the process before the model loaded (``runtime``), the weights, the optimiser state,
  and the most bytes of tensor storage alive at once during the steps (``recipe.memory_estimate.LiveBytes``,
  the counter ``--dry-run`` predicts the transients with: activations, their gradients, the weights'
  gradients, every temporary);
- the resident set's peak over the same steps, run once more without the counter (VmHWM, reset before
  them);
- the allocator's share: the difference.

Each method is measured in a process of its own (GB = 10⁹ bytes).

Compare ``runtime + weights + optimiser + step tensors`` with the run's ``memory.predicted`` to judge the
prediction apart from the allocator.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from profile_training import Cell, cell_arguments

from peftbench.recipe import memory
from peftbench.recipe.memory_estimate import LiveBytes

GB = 1e9


def epoch_peaks(cell: Cell) -> tuple[int, int]:
    """The resident set's peak over one epoch of ``cell``'s optimiser steps, and the most tensor bytes alive
    at once (allocated during them) over the next epoch, the same batches in the same order: the counter
    runs Python at every operator, so the resident set is read on an epoch without it."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the resident set now
    for _ in range(len(cell.groups)):
        cell.step()
    rss = memory.peak_rss_bytes()
    optimizer_state = [v for state in cell.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    tracker = LiveBytes(existing=[*cell.model.parameters(), *cell.model.buffers(), *optimizer_state])
    with tracker:
        for _ in range(len(cell.groups)):
            cell.step()
    return tracker.peak, rss


def measure(method: str, args: argparse.Namespace, overrides: list[str]) -> str:
    """One method's table row, measured in this process (which must have run nothing else: freed memory
    that glibc kept for an earlier cell would count as this one's)."""
    runtime = memory.runtime_bytes()  # before the model loads
    cell = Cell([f"model={args.model}", f"methods=[{method}]", f"tasks=[{args.task}]", f"scales=[{args.scale}]",
                 f"data_dir={args.data_dir}", *overrides])
    for _ in range(args.warmup):
        cell.step()
    weights, optimizer = memory.weights_bytes(cell.model), memory.optimizer_state_bytes(cell.optimizer)
    step, rss = epoch_peaks(cell)
    tensors = runtime + weights + optimizer + step
    return (f"| {method} | {runtime / GB:.2f} | {weights / GB:.2f} | {optimizer / GB:.2f} | {step / GB:.2f} | "
            f"{tensors / GB:.2f} | {rss / GB:.2f} | {(rss - tensors) / GB:.2f} |")


def main() -> None:
    parser = cell_arguments(__doc__, task="cola")
    parser.add_argument("--row", action="store_true", help="measure the one method in this process (internal)")
    args, overrides = parser.parse_known_args()
    if args.row:
        print(measure(args.methods, args, overrides), flush=True)
        return
    print("| method | runtime | weights | optimiser | step tensors (most alive) | tensors at the peak | peak RSS "
          "| allocator's share |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for method in args.methods.split(","):  # a process each: see ``measure``
        common = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in ("data_dir", "model", "task",
                                                                                  "scale", "warmup")]
        subprocess.run([sys.executable, __file__, "--row", f"--methods={method}", *common, *overrides], check=True)


if __name__ == "__main__":
    main()
