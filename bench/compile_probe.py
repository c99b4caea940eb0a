"""torch.compile on one fused SmolLM2 LoRA training step, against eager: compile time and step time.

    python bench/compile_probe.py [DATA_DIR]

A probe for the MFU gap (bench/RESULTS.md), not a lever peftbench uses: 64 CoLA training examples × 31
tokens in one pass, bf16 autocast, without prefix sharing, so the step matches the profiled one.
"""

from __future__ import annotations

import sys
import time

import torch
from lever_cases import CPU, Setup, autocast, unshared_loss

from peftbench.kernels import training_attention


def best_of(step, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def main(data_dir: str) -> None:
    setup = Setup(data_dir)
    batch = setup.batch("cola", n=64, skip=18)  # the same pass as levers.py's shared_prefix case
    model = setup.lora

    def step(module):
        module.train()
        with autocast(), training_attention(batch["input_ids"].shape[1], CPU):
            loss = unshared_loss(module, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step(model)  # warm-up: kernel choices, page faults
    eager = best_of(lambda: step(model))
    compiled = torch.compile(model)
    started = time.perf_counter()
    step(compiled)
    first = time.perf_counter() - started
    fast = best_of(lambda: step(compiled))
    print(f"eager step {eager:.3f} s; compile + first step {first:.1f} s; compiled step {fast:.3f} s "
          f"({eager / fast:.2f}×)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
