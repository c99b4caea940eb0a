"""The matrix-product peak where this runs: bf16 and fp32 GFLOP/s at a model's own GEMM shapes.

    python bench/gemm_peak.py --model smollm2-135m-q4 [--rows 1024] [--threads 2] [--square 2048] [--remeasure]

One row per distinct linear of the model (rows × in × out, the output head included) and a square reference
product, each timed with ``F.linear`` as ``nn.Linear`` runs it (src/peftbench/recipe/peak.py: the best of
three windows of 0.1 s after a warm-up call); then the rate at the model's mix of shapes without the head,
the figure a run's ``throughput.mfu`` is divided by. The table is cached per machine and shape set as runs
cache theirs (``--remeasure`` measures again and replaces it); the machine's load average is printed beside
it, since a loaded machine gives low rates.
"""

from __future__ import annotations

import argparse
import os

import torch

from peftbench.catalog.models import family_of, load_config
from peftbench.recipe import peak
from peftbench.recipe.peak import GemmShape


def _rate(gflops: float) -> str:
    return f"{gflops:,.0f}" if gflops >= 10 else f"{gflops:.2f}"


def print_table(table: peak.PeakTable, dtypes: tuple[str, ...]) -> None:
    print(f"| rows × in × out | linears | {' | '.join(f'{d} GFLOP/s' for d in dtypes)} |")
    print(f"| --- | ---: | {' | '.join('---:' for _ in dtypes)} |")
    for i, shape in enumerate(table.shapes):
        rates = " | ".join(_rate(table.gflops[d][i]) for d in dtypes)
        print(f"| {shape.rows} × {shape.inner} × {shape.outer} | {shape.count or '–'} | {rates} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-q4", help="a peftbench model name (peftbench list models)")
    parser.add_argument("--rows", type=int, default=1024, help="tokens per pass (a run uses its tokens per batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--square", type=int, default=2048, help="side of the square reference product (0: none)")
    parser.add_argument("--remeasure", action="store_true", help="measure again, replacing the cached table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = ("bf16", "fp32")
    config = load_config(args.model)
    body = peak.gemm_shapes(config, family_of(config), args.rows)
    dims = {(s.inner, s.outer) for s in body}
    head = [s for s in peak.gemm_shapes(config, family_of(config), args.rows, head=True) if (s.inner, s.outer) not in dims]
    shapes = body + head
    if args.square:
        shapes.append(GemmShape(args.square, args.square, args.square, count=0))
    table, cached = peak.measured_peak(shapes, device, dtypes, remeasure=args.remeasure)
    print(f"{args.model} on {peak.machine_key(device)} ({peak.instruction_set(device)}); "
          f"{'cached, measured ' + table.measured_at if cached else 'measured now'}, load average {table.load_average}"
          f" (now {[round(x, 2) for x in os.getloadavg()]})")
    print_table(table, dtypes)
    # the run's mix: the body's linears only (the head runs at target positions only; bench/flops.py)
    mix = peak.PeakTable(table.machine, body, {d: table.gflops[d][: len(body)] for d in dtypes})
    print("at the model's shapes, the body's linears weighed by their FLOPs (what throughput.mfu divides by): "
          + ", ".join(f"{d} {_rate(mix.model_rate(d))} GFLOP/s" for d in dtypes))


if __name__ == "__main__":
    main()
