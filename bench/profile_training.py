"""Where a training step's time goes, by kind of work, and the step's share of the measured matrix-product peak.

    python bench/profile_training.py [--data-dir ../shared/data] [--model smollm2-135m-q4] [--task ag_news]
        [--scale low] [--methods lora,full] [--warmup 2] [--steps 3] [--timed 5] [key=value ...]

For each method, peftbench's own optimiser step (recipe/steps.optimizer_step: the passes as ``fused_passes``
plans them, forward and backward under the run's autocast, gradient clipping, AdamW, with the speed-ups the
config selects) on the cell's training batches in the run's order; ``key=value`` overrides go to the cell's
config as ``peftbench run`` takes them (``speedups=none``, ``train.num_threads=2``, ...). After ``--warmup``
steps, torch.profiler records ``--steps`` steps; every operator's self time goes to one category:

- matrix products: the linears (``aten::mm``/``addmm``, speedups/onednn_weights.py's prepacked linear)
- attention: SDPA's kernels, eager attention's batched matmuls and softmax
- norms, activations, elementwise: RMSNorm's and the MLP's pointwise work, rotary embeddings, dropout
- loss: log-softmax and NLL over the vocabulary at the target positions
- optimizer: AdamW's step and zeroing, gradient clipping (``_foreach_*`` kernels)
- dtype copies and layout: ``aten::copy_``/``_to_copy`` (autocast's bf16 casts of weights and activations
  and their fp32 gradients, ``contiguous``), oneDNN's weight re-layout (onednn_weights.py's packing, once per
  weight: a ``--warmup`` step keeps it out)
- dispatch and Python: view and metadata operators, autograd's node wrappers, and the step's wall time that
  no operator covers (Python, the autograd engine, the dispatcher)
- compiled kernels: Inductor's fused C++ loops (``compiled_layers``: a layer's norms, activations, rotary
  embeddings, casts and, under eager attention, its softmax, fused), each profiled as one call of its graph
- other: embedding, indexing, anything not named above

Then ``--timed`` steps without the profiler: the median step, and its MFU, the step's tokens times the run's
training FLOPs per token (recipe/peak.train_flops_per_token, as a result's ``throughput.mfu`` counts them) per
second over the peak measured at the model's shapes (recipe/peak.py, cached per machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from peftbench.config import load_sweep
from peftbench.recipe import peak, steps
from peftbench.recipe.batching import length_grouped_batches
from peftbench.recipe.protocol import build_optimizer
from peftbench.recipe.run_state import RunState
from peftbench.recipe.train import make_accelerator, prepare_cell
from peftbench.running import distributed
from peftbench.speedups import resolve as resolve_speedups

MATMUL = {"aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "mkldnn::_linear_pointwise", "aten::addmv"}
ATTENTION = ("scaled_dot_product", "flash_attention", "aten::bmm", "aten::baddbmm", "aten::_softmax",
             "aten::softmax", "aten::_softmax_backward_data")
LOSS = ("log_softmax", "nll_loss", "cross_entropy")
COPIES = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous",
          "aten::_autocast_to_reduced_precision", "aten::_autocast_to_full_precision",
          "mkldnn::_reorder_linear_weight"}
OPTIMIZER = ("aten::_foreach_", "aten::_fused_adam", "aten::linalg_vector_norm", "aten::clamp")
DISPATCH = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::transpose",
            "aten::t", "aten::permute", "aten::expand", "aten::as_strided", "aten::slice", "aten::select",
            "aten::unsqueeze", "aten::squeeze", "aten::detach", "detach", "aten::alias", "aten::empty",
            "aten::empty_strided", "aten::empty_like", "aten::split", "aten::split_with_sizes", "aten::chunk",
            "aten::narrow", "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::lift_fresh",
            "aten::item", "aten::_local_scalar_dense", "aten::view_as", "aten::unbind", "aten::flatten",
            "aten::expand_as", "aten::size", "aten::stride", "aten::is_nonzero", "aten::_has_compatible_shallow_copy_type"}
ELEMENTWISE = ("norm", "pow", "rsqrt", "mean", "mul", "add", "sub", "div", "neg", "silu", "gelu", "sigmoid",
               "tanh", "relu", "dropout", "bernoulli", "cat", "sum", "where", "fill_", "zero_", "exp", "sqrt",
               "rand", "masked_fill", "cos", "sin", "threshold")
COMPILED = "## Call CompiledFxGraph"
CATEGORIES = ("matrix products", "attention", "norms, activations, elementwise", "compiled kernels", "loss",
              "optimizer", "dtype copies and layout", "dispatch and Python", "other")


def category(event) -> str:
    """The category of one profiler event's self time (the module docstring)."""
    node = event
    while node is not None:  # anything under the optimiser's step or zero_grad
        if node.name.startswith("Optimizer."):
            return "optimizer"
        node = node.cpu_parent
    name = event.name
    if name.startswith(COMPILED):
        return "compiled kernels"
    if name in MATMUL:
        return "matrix products"
    if any(part in name for part in ATTENTION):
        return "attention"
    if any(part in name for part in LOSS):
        return "loss"
    if name.startswith(OPTIMIZER):
        return "optimizer"
    if name in COPIES:
        return "dtype copies and layout"
    if name in DISPATCH or name.startswith("autograd::") or name.endswith(("Backward0", "Backward1")) or \
            not name.startswith(("aten::", "mkldnn::")):
        return "dispatch and Python"
    if any(part in name for part in ELEMENTWISE):
        return "norms, activations, elementwise"
    return "other"


class Cell:
    """One method's cell, set up as ``recipe.train.run_cell`` sets it up, stepping through its batches."""

    def __init__(self, overrides: list[str]):
        [run] = load_sweep(None, overrides).expand()
        self.run, cfg = run, run.train
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.speedups = resolve_speedups(run.speedups)
        self.cell = prepare_cell(run)
        train = self.cell.encoded["train"]
        optimizer, self.scheduler, _ = build_optimizer(cfg, run.method, self.cell.trainable, len(train),
                                                       self.cell.max_epochs, fused=self.speedups.fused_adamw)
        self.accelerator = make_accelerator(cfg.precision, self.cell.loaded.architecture)
        self.model, self.optimizer = distributed.prepare(self.accelerator, self.cell.model, optimizer)
        self.speedups.apply_to_model(self.model, self.accelerator.device, self.accelerator.mixed_precision)
        order = length_grouped_batches(train, cfg.batch_size, seed=run.seed * 1000 + 1,
                                       group_by_length=cfg.group_by_length)
        self.groups = [order[i: i + cfg.grad_accum] for i in range(0, len(order), cfg.grad_accum)]
        self.state = RunState()
        self.model.train()

    def step(self) -> None:
        cell, cfg = self.cell, self.run.train
        group = self.groups[self.state.step % len(self.groups)]
        steps.optimizer_step(self.model, self.optimizer, self.scheduler, self.accelerator, cell.encoded["train"],
                             group, cfg, cell.loaded.family, cell.loaded.tokenizer.pad_token_id, self.state,
                             self.speedups)
        self.state.step += 1


def cell_arguments(doc: str, task: str) -> argparse.ArgumentParser:
    """The options that pick a cell and its warm-up steps, shared by the bench scripts that step a ``Cell``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder with <task>/<split>.jsonl")
    parser.add_argument("--model", default="smollm2-135m-q4")
    parser.add_argument("--task", default=task)
    parser.add_argument("--scale", default="low")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--warmup", type=int, default=2, help="optimiser steps before the measured ones (kernel "
                                                              "choice, caches, AdamW's state)")
    return parser


def profile_steps(cell: Cell, count: int) -> tuple[dict[str, float], dict[str, float], float]:
    """Seconds per step by category and by operator (self time), and the wall seconds per step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(count):
            cell.step()
        wall = time.perf_counter() - started
    by_category: dict[str, float] = defaultdict(float)
    by_operator: dict[str, float] = defaultdict(float)
    for event in prof.events():
        seconds = event.self_cpu_time_total / 1e6 / count
        by_category[category(event)] += seconds
        by_operator[event.name] += seconds
    by_category["dispatch and Python"] += max(0.0, wall / count - sum(by_category.values()))  # outside operators
    return by_category, by_operator, wall / count


def timed_mfu(cell: Cell, count: int) -> str:
    """The median of ``count`` unprofiled steps and its share of the peak at the model's shapes."""
    times, tokens_before = [], cell.state.train_tokens
    for _ in range(count):
        started = time.perf_counter()
        cell.step()
        times.append(time.perf_counter() - started)
    tokens = (cell.state.train_tokens - tokens_before) / count
    loaded, accelerator = cell.cell.loaded, cell.accelerator
    shapes = peak.gemm_shapes(loaded.model.config, loaded.family,
                              peak.pass_rows(int(tokens), cell.run.train.grad_accum))
    dtype = peak.PRECISION_DTYPE.get(accelerator.mixed_precision, "fp32")
    table, _ = peak.measured_peak(shapes, accelerator.device, tuple(dict.fromkeys(("bf16", "fp32", dtype))))
    seconds = statistics.median(times)
    flops = peak.train_flops_per_token(cell.model)
    mfu = peak.mfu(tokens / seconds, flops, table.model_rate(dtype))
    achieved = f"{tokens * flops / seconds / 1e9:,.1f} GFLOP/s" if flops else "no FLOPs count (seq2seq)"
    return (f"step without the profiler: median {seconds:.3f} s of {count} ({min(times):.3f}-{max(times):.3f}); "
            f"{tokens:,.0f} tokens: {achieved}; {dtype} peak at the model's shapes {table.model_rate(dtype):,.0f} "
            f"GFLOP/s (rows {table.shapes[0].rows}): MFU " + (f"{100 * mfu:.1f} %" if mfu is not None else "–"))


def main() -> None:
    parser = cell_arguments(__doc__, task="ag_news")
    parser.add_argument("--steps", type=int, default=3, help="steps under the profiler")
    parser.add_argument("--timed", type=int, default=5, help="steps timed without the profiler")
    parser.add_argument("--top", type=int, default=12, help="operators listed by self time")
    args, overrides = parser.parse_known_args()
    for method in args.methods.split(","):
        cell = Cell([f"model={args.model}", f"methods=[{method}]", f"tasks=[{args.task}]", f"scales=[{args.scale}]",
                     f"data_dir={args.data_dir}", *overrides])
        for _ in range(args.warmup):
            cell.step()
        by_category, by_operator, wall = profile_steps(cell, args.steps)
        print(f"\n{method}: {args.model} on {args.task} ({args.scale}), {torch.get_num_threads()} threads, "
              f"{peak.instruction_set(cell.accelerator.device)}; {wall:.3f} s per step under the profiler")
        print("| where the step's time goes | s per step | share |\n| --- | ---: | ---: |")
        for name in CATEGORIES:
            print(f"| {name} | {by_category.get(name, 0.0):.3f} | {100 * by_category.get(name, 0.0) / wall:.1f} % |")
        print(f"operators by self time (top {args.top}):")
        for name, seconds in sorted(by_operator.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {name[:60]:60s} {seconds:.3f} s  {100 * seconds / wall:4.1f} %")
        print(timed_mfu(cell, args.timed))


if __name__ == "__main__":
    main()
