"""Can accelerate's own gradient synchronisation (its DistributedDataParallel wrapper, with ``no_sync`` for the
passes before a step's last) replace distributed.py's hand-written all-reduce? Two CPU processes (gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 bench/ddp_probe.py CASE

with CASE one of ``empty_share``, ``join``, ``retry_in_backward``. Each process builds the same tiny Llama
LoRA cell (peftbench's own loss path: shared prefix, target-only LM head), computes the single-process
gradient of a step's batches as the reference, then ``accelerator.prepare``s the model (DDP) and deals the
step's batches over the two processes as distributed.py deals them:

- always: 2 batches over 2 processes (1 + 1), and 3 over 2 (2 + 1, ``no_sync`` around the first of two):
  the DDP gradient times the number of processes against the reference;
- ``empty_share``: 1 batch over 2 processes (1 + 0). A step has fewer batches than processes whenever an
  epoch's last group is short (9 batches with grad_accum 4 leave a group of 1) or the launch has more
  processes than grad_accum;
- ``join``: the same, inside torch's ``Join`` (made for uneven inputs; ``accelerator.join_uneven_inputs``
  enters it on GPUs and does nothing on CPUs), with ``broadcast_buffers=False`` (the buffer broadcast
  before each forward has no shadow in a joined process);
- ``retry_in_backward``: 1 + 1, but process 1's backward raises half-way (as a CUDA out-of-memory error
  would) and it retries the step, as ``steps.optimizer_step`` does with a halved micro-batch.

The collective timeout is set to 20 s (torch's default: 30 minutes).
"""

from __future__ import annotations

import copy
import datetime
import os
import sys
import time
from contextlib import nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs
from torch.distributed.algorithms.join import Join

from peftbench.config import load_sweep
from peftbench.recipe.steps import accumulate
from peftbench.recipe.train import prepare_cell

OVERRIDES = ["models=[llama-tiny-random]", "methods=[lora]", "tasks=[synthetic_classification]", "scales=[16]",
             "train.batch_size=4", "train.grad_accum=4", "train.precision=fp32", "train.num_threads=1"]
TIMEOUT_S = 20
CASES = ("empty_share", "join", "retry_in_backward")


def gradients(model) -> dict[str, torch.Tensor]:
    inner = getattr(model, "module", model)
    return {n: p.grad.detach().clone() for n, p in inner.named_parameters() if p.grad is not None}


def step_gradient(model, accelerator, cell, cfg, batches) -> dict[str, torch.Tensor]:
    """The gradient ``batches`` leave on ``model``: one backward per batch, only the last synchronised."""
    model.zero_grad(set_to_none=True)
    items, pad_id = cell.encoded["train"], cell.loaded.tokenizer.pad_token_id
    for i, batch in enumerate(batches):
        with accelerator.no_sync(model) if i < len(batches) - 1 else nullcontext():
            accumulate(model, accelerator, items, [batch], cfg, cell.loaded.family, pad_id, splits=1)
    return gradients(model)


def largest_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    return max(float((got[n] - want[n]).abs().max() / want[n].abs().max().clamp_min(1e-30)) for n in want)


def fail_once_in_backward(model) -> None:
    """Raise from the first gradient hook of the next backward (some of the model's gradients are done)."""
    param = next(p for p in reversed(list(model.parameters())) if p.requires_grad)
    state = {"handle": None}

    def hook(grad):
        state["handle"].remove()
        raise RuntimeError("simulated out-of-memory in the backward")
    state["handle"] = param.register_hook(hook)


def breaking_case(case, rank, accelerator, ddp, cell, cfg, batches) -> None:
    mine = [batches[0]] if rank == 0 else []
    if case == "join":
        want = step_gradient(ddp.module, accelerator, cell, cfg, [batches[0]])  # the reference: batch 0 alone
        with Join([ddp]):  # what accelerator.join_uneven_inputs enters on GPUs (on CPUs it does nothing)
            got = step_gradient(ddp, accelerator, cell, cfg, mine)
        got = {n: g * 2 for n, g in gradients(ddp).items()}
        print(f"rank {rank}: join: {len(got)} of {len(want)} gradients"
              + (f", largest |DDP x 2 - single process| / max = {largest_difference(got, want):.2e}" if got else ""))
    elif case == "empty_share":
        step_gradient(ddp, accelerator, cell, cfg, mine)
    else:
        if rank == 1:
            fail_once_in_backward(ddp.module)
            try:
                step_gradient(ddp, accelerator, cell, cfg, [batches[1]])
            except RuntimeError as error:
                print(f"rank 1: {error}; retrying the step")
        step_gradient(ddp, accelerator, cell, cfg, [batches[rank]])
    if rank == 1 and case != "retry_in_backward":
        time.sleep(TIMEOUT_S + 10)  # alive, busy elsewhere: it has no backward to offer this step


def main(case: str) -> None:
    handlers = [InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=TIMEOUT_S)),
                DistributedDataParallelKwargs(broadcast_buffers=case != "join")]
    accelerator = Accelerator(cpu=True, kwargs_handlers=handlers)
    rank, world = accelerator.process_index, accelerator.num_processes
    run = load_sweep(None, OVERRIDES).expand()[0]
    cell = prepare_cell(run)
    batches = [list(range(i, i + 4)) for i in range(0, 12, 4)]
    reference = copy.deepcopy(cell.model)
    ddp = accelerator.prepare(cell.model)
    if rank == 0:
        print(f"{world} processes, {accelerator.distributed_type}, prepared as {type(ddp).__name__}")
    for dealt in ([[0], [1]], [[0, 1], [2]]):
        want = step_gradient(reference, accelerator, cell, run.train, [batches[i] for d in dealt for i in d])
        got = step_gradient(ddp, accelerator, cell, run.train, [batches[i] for i in dealt[rank]])
        got = {n: g * world for n, g in got.items()}  # DDP averages over the processes; peftbench sums
        if rank == 0:
            print(f"batches per process {[len(d) for d in dealt]}: largest |DDP x {world} - single process| / max "
                  f"= {largest_difference(got, want):.2e} over {len(want)} gradients")
    start = time.perf_counter()
    try:
        breaking_case(case, rank, accelerator, ddp, cell, run.train, batches)
        print(f"rank {rank}: {case}: returned after {time.perf_counter() - start:.1f} s")
    except Exception as error:  # noqa: BLE001 - the probe reports whatever the collective raised
        print(f"rank {rank}: {case}: {type(error).__name__} after {time.perf_counter() - start:.1f} s: "
              f"{str(error).splitlines()[0][-110:]}")
    sys.stdout.flush()
    os._exit(0)  # after a timeout the process group is broken: skip its teardown


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        sys.exit(f"usage: torchrun --standalone --nproc_per_node 2 {sys.argv[0]} {{{','.join(CASES)}}}")
    main(sys.argv[1])
