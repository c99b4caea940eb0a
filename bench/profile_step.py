"""Where a SmolLM2 LoRA training step's time goes, operator by operator and GEMM shape by shape.

    python bench/profile_step.py [DATA_DIR] [--steps 2] [--timed 7] [--task cola --rows 64 --skip 18] [--unpacked]

By default the step of ``levers.py``'s shared-prefix case as training runs it: 64 CoLA examples in one pass, the
template prefix shared, bf16 autocast, attention, concatenated rows and prepacked frozen weights as peftbench runs
them. torch.profiler over ``--steps`` steps after two warm-up steps; per step, it prints the time of each
operator, and for every matrix-multiply shape (``aten::mm`` and speedups/onednn_weights.py's prepacked linears) its
calls, time and achieved GFLOP/s (2·m·k·n per call), against the bf16 GEMM peak measured here.
Then, without the profiler, the median of ``--timed`` steps and its MFU: the step's model FLOPs
(``flops.step_flops``: real tokens only, the shared prefix once) per second over that peak.
``--unpacked`` runs the step as peftbench did before concatenated rows (speedups/concatenated_rows.py): padded, with only
the feed-forward networks on the real tokens.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext

import torch
from common import probe_parser
from flops import gemm_peak, gemm_sizes, linear_costs, step_flops
from kernel_cases import feed_forward_unpadded_only
from lever_cases import Setup, training_step
from torch.profiler import profile

from peftbench.speedups.shared_prompt_prefix import shared_prefix_length


def _gemm_shape(operator: str, shapes: list) -> tuple[int, int, int] | None:
    """(m, k, n) of a matrix multiply: ``aten::mm`` (m × k) · (k × n), or speedups/onednn_weights.py's prepacked linear
    (x [..., k] against a blocked [n, k] weight); None for any other operator."""
    if operator == "aten::mm" and len(shapes) >= 2:
        (m, k), (_, n) = shapes[:2]
        return m, k, n
    if operator == "mkldnn::_linear_pointwise" and len(shapes) >= 2 and shapes[0]:
        *rows, k = shapes[0]
        return math.prod(rows), k, shapes[1][0]
    return None


def main(data_dir: str, steps: int, timed: int, task: str = "cola", rows: int = 64, skip: int = 18) -> None:
    setup = Setup(data_dir)
    batch, model = setup.batch(task, n=rows, skip=skip), setup.lora

    for _ in range(2):  # warm-up: kernel choices, page faults
        training_step(model, batch)
    with profile(record_shapes=True) as prof:
        for _ in range(steps):
            training_step(model, batch)
    peak = gemm_peak("cpu", torch.bfloat16, gemm_sizes("cpu"))["flops_per_s"] / 1e9
    by_operator: dict[str, float] = defaultdict(float)
    gemms: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # calls, seconds, flops
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6 / steps
        by_operator[event.key] += seconds
        shape = _gemm_shape(event.key, event.input_shapes)
        if shape:
            m, k, n = shape
            entry = gemms[shape]
            entry[0] += event.count / steps
            entry[1] += seconds
            entry[2] += 2 * m * k * n * event.count / steps
    total = sum(by_operator.values())
    print(f"batch {tuple(batch['input_ids'].shape)}; step {total:.3f} s of operator time; bf16 GEMM peak {peak:.0f} GFLOP/s")
    for name, seconds in sorted(by_operator.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:40s} {seconds:.3f} s  {100 * seconds / total:4.1f} %")
    print("matrix multiplies (m × k) · (k × n):")
    for (m, k, n), (calls, seconds, flops) in sorted(gemms.items(), key=lambda kv: -kv[1][1])[:14]:
        rate = flops / seconds / 1e9 if seconds else math.nan
        print(f"  {m:6d} × {k:6d} · {n:6d}  {calls:5.0f} calls  {seconds:.3f} s  {rate:5.0f} GFLOP/s "
              f"({100 * rate / peak:.0f} % of peak)")
    times = []
    for _ in range(timed):
        started = time.perf_counter()
        training_step(model, batch)
        times.append(time.perf_counter() - started)
    flops = step_flops(linear_costs(model), batch, shared_prefix_length(batch))
    seconds = statistics.median(times)
    print(f"step without the profiler: median {seconds:.3f} s of {timed} ({min(times):.3f}–{max(times):.3f}); "
          f"{flops / 1e9:.0f} GFLOP of model work: {flops / seconds / 1e9:.0f} GFLOP/s, "
          f"MFU {100 * flops / seconds / 1e9 / peak:.1f} %")


if __name__ == "__main__":
    parser = probe_parser(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--timed", type=int, default=7, help="steps timed without the profiler")
    parser.add_argument("--task", default="cola", help="task whose training rows make the pass")
    parser.add_argument("--rows", type=int, default=64, help="rows in the pass")
    parser.add_argument("--skip", type=int, default=18, help="first row, of 100 training rows sorted by length")
    parser.add_argument("--unpacked", action="store_true", help="no concatenated rows (speedups/concatenated_rows.py)")
    args = parser.parse_args()
    with feed_forward_unpadded_only() if args.unpacked else nullcontext():
        main(args.data_dir, args.steps, args.timed, args.task, args.rows, args.skip)
