"""One run as several processes: data parallelism for ``accelerate launch`` and ``torchrun``.

Every process walks the same runs in the same order and holds a full copy of the model. Each optimiser
step's group of ``grad_accum`` batches (the single-process order) is dealt round-robin over the processes;
each backpropagates its batches, then one all-reduce sums the trainable parameters' gradients (and the
step's losses and token counts), so every process takes the identical step: the result is a
single-process run's up to floating-point summation order (except for dropout's masks, see
``accumulate_step``). Validation and decoding deal whole batches likewise.

Why not accelerate's own gradient synchronisation. Measured with a probe (``bench/ddp_probe.py`` of commit
ba00b58: two gloo processes, a tiny Llama LoRA step through peftbench's loss, ``accelerator.prepare`` = DDP,
``no_sync`` on every backward but a process's last): whenever each process has at least one batch of the step,
even unevenly (2 + 1), DDP's gradient times the process count equals the single-process gradient to the bit.
It fails on two things this recipe does:
- A step with fewer batches than processes (an epoch's short last group; more processes than
  ``grad_accum``): the process with a batch waits in DDP's backward all-reduce until the collective
  timeout (``empty_share``: RuntimeError after the probe's 20 s). torch's ``Join``, which
  ``accelerator.join_uneven_inputs`` enters on GPUs (on CPUs it does nothing), completes that step, but
  the joined process gets no gradient (0 of 16 tensors; ``join``), so its optimiser step would leave its
  weights behind the others'.
- A backward that fails half-way and is retried (``steps.optimizer_step`` halves the micro-batch on a
  CUDA out-of-memory error): both processes then wait in DDP's all-reduce until the timeout
  (``retry_in_backward``). Here the all-reduce comes after the whole local backward, so a retry, and a
  failure announced by ``_check_peers``, stay local to the process.
``accelerator.accumulate`` is no way round either: it synchronises every ``gradient_accumulation_steps``
batches of each process, so each process would run a whole step's batches, multiplying the effective
batch (the paper's 16 × 4) by the number of processes.

The main process (rank 0) alone decides whether a run is due (the lock, the skip rules) and writes files;
it broadcasts the decision. Failures cannot strand the others in a collective: before each collective
inside a run every process contributes a "failed" flag (``_check_peers``); a process whose run raised
says so at the end-of-run exchange (``agree_outcome``), the others learn it at their next collective and
raise ``PeerFailed``, and all of them then agree on one outcome: a failure on any process fails the run.
A stop request (a signal) travels in the same flags, so all processes stop after the same step.

With one process (no launcher, or ``WORLD_SIZE=1``) every function here is a plain call: no collective.
"""

from __future__ import annotations

import atexit
import math
import os
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from peftbench.catalog.tasks import TaskSpec
from peftbench.catalog.tasks.data import Example
from peftbench.errors import UserError
from peftbench.recipe import evaluate, label_ranking
from peftbench.recipe.batching import IGNORE, Encoded
from peftbench.speedups import SpeedupPlan

RUN = "run"  # the main process's decision that a run is due (besides sweep.SKIPPED / sweep.LOCKED)

# accelerate launch's markers of sharded training (set from an accelerate config or launch flags).
_SHARDED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
            "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM", "ACCELERATE_USE_PARALLELISM_CONFIG": "tensor/context parallelism"}


class PeerFailed(RuntimeError):
    """Another process's share of this run failed; the run's result carries that process's error."""


@dataclass(frozen=True)
class _Group:
    rank: int
    world: int
    device: torch.device  # where collectives' tensors live: this process's GPU under NCCL, else the CPU


_GROUP: _Group | None = None


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``, set by torchrun and accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a launch: the one process that reports and writes."""
    if _GROUP is not None:
        return _GROUP.rank == 0
    return launched_world_size() == 1 or int(os.environ.get("RANK", "0") or 0) == 0


def check_launch(sweep) -> None:
    """Refuse, before any work, a launch peftbench cannot serve (a UserError: one line, exit 2)."""
    for variable, name in _SHARDED.items():
        if os.environ.get(variable, "").lower() in ("1", "true"):
            raise UserError(
                f"the accelerate config asks for {name} ({variable}=true): peftbench runs data parallel only "
                f"(distributed_type MULTI_GPU); sharding the weights would need every epoch's best-weight "
                f"snapshot, checkpoint and decoding to gather them first, which the recipe does not do yet "
                f"(see docs/scaling.md)")
    world = launched_world_size()
    if world > 1 and sweep.device_map is not None:
        raise UserError(f"device_map={sweep.device_map} splits one model over the GPUs of one process; with "
                        f"{world} processes each one holds the whole model on its own GPU: drop device_map")
    if world > 1 and sweep.executor != "local":
        raise UserError(f"executor={sweep.executor} starts its own processes; launch it as one process")


def init() -> None:
    """Join the launcher's process group (env://): NCCL on this process's GPU, gloo on CPUs."""
    global _GROUP
    world = launched_world_size()
    if world == 1 or _GROUP is not None:
        return
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    if use_cpu:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise UserError(f"process {device.index} of this machine has no GPU of its own "
                            f"({torch.cuda.device_count()} visible): launch at most one process per GPU")
        torch.cuda.set_device(device)  # object collectives and accelerate use the current device
    if not dist.is_initialized():
        dist.init_process_group("gloo" if use_cpu else "nccl")
        atexit.register(dist.destroy_process_group)
    _GROUP = _Group(dist.get_rank(), dist.get_world_size(), device)


# --- the sweep's side: decisions, stops and outcomes -----------------------------------------------------

def share_decision(decision: str | None) -> str:
    """The main process's decision for the next run (RUN, skipped, locked), on every process."""
    if _GROUP is None:
        return decision
    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed_stop(flag: Callable[[], bool]) -> Callable[[], bool]:
    """A stop check that is true on every process as soon as one process's flag is set (a signal may
    reach only some of them), so all stop after the same optimiser step."""
    if _GROUP is None:
        return flag

    def stop_requested() -> bool:
        failed, stop = _exchange_flags(failed=False, stop=flag())
        if failed:  # a process failed after the step's all-reduce (in the optimiser step, say)
            raise PeerFailed("another process of this run failed (its error is in the result)")
        return stop
    return stop_requested


def agree_outcome(result: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The run's result as every process agrees on it: ok only when ok everywhere, else the first
    process's own failure (not a ``PeerFailed``), marked with its rank."""
    if _GROUP is None:
        return result
    error = result.get("error") or {}
    if error.get("type") != PeerFailed.__name__:  # a PeerFailed process has already taken part in the flags
        _exchange_flags(failed=result["status"] != "ok", stop=False)
    outcomes: list[Any] = [None] * _GROUP.world
    dist.all_gather_object(outcomes, (result["status"], result.get("error")))
    failures = [(rank, status, err) for rank, (status, err) in enumerate(outcomes) if status != "ok"]
    if not failures:
        return {**result, "hardware": {**result.get("hardware", {}), "processes": _GROUP.world}}
    own = [f for f in failures if (f[2] or {}).get("type") != PeerFailed.__name__] or failures
    rank, status, err = own[0]
    return {**base, "status": status, "error": {**(err or {}), "rank": rank}}


def _exchange_flags(failed: bool, stop: bool) -> tuple[bool, bool]:
    """(any process failed, any process asked to stop). Every collective of a run is preceded by this
    same small all-reduce, so a failed process's announcement always meets another process's call."""
    flags = torch.tensor([float(failed), float(stop)], device=_GROUP.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def _check_peers() -> None:
    """Before a collective inside a run: raise PeerFailed if another process's run has failed."""
    if _exchange_flags(failed=False, stop=False)[0]:
        raise PeerFailed("another process of this run failed (its error is in the result)")


# --- the run's side: hooks in train.py ---------------------------------------------------------------

def prepare(accelerator, model, optimizer):
    """``accelerator.prepare`` without the DistributedDataParallel wrapper (gradients are summed here)."""
    if _GROUP is None:
        return accelerator.prepare(model, optimizer)
    return accelerator.prepare_model(model, evaluation_mode=True), accelerator.prepare_optimizer(optimizer)


def check_in_sync(trainable: dict[str, torch.nn.Parameter], epoch: int, step: int) -> None:
    """Fail the run (on every process) unless all start it from the same epoch, step and weights: a
    checkpoint that only some processes could read (output_dir not shared by every node) would otherwise
    train different models under one result."""
    if _GROUP is None:
        return
    with torch.no_grad():
        checksum = float(torch.stack([p.detach().double().sum() for p in trainable.values()]).sum())
    _check_peers()
    states: list[Any] = [None] * _GROUP.world
    dist.all_gather_object(states, (epoch, step, checksum))
    main = states[0]
    if any(s[:2] != main[:2] or not math.isclose(s[2], main[2], rel_tol=1e-9) for s in states):
        raise RuntimeError(f"the processes start this run from different states (epoch, step, weight sum): "
                           f"{states}; output_dir must be on a filesystem every process sees")


def accumulate_step(accumulate: Callable[[list[list[int]]], tuple[list[float], int]], group: list[list[int]],
                    step: int, optimizer) -> tuple[list[float], int]:
    """Forward and backward this process's share of ``group`` (``accumulate``), then sum gradients,
    losses and tokens over the processes; returns every batch's loss (in ``group`` order) and the tokens.

    Each batch's dropout is seeded from its step, position and examples, so a batch draws the same masks
    whichever process runs it and after a resume (a single process draws them from one running stream).
    """
    if _GROUP is None:
        return accumulate(group)
    losses = torch.zeros(len(group), dtype=torch.float32)
    tokens = 0
    for position in range(_GROUP.rank, len(group), _GROUP.world):
        torch.manual_seed(zlib.crc32(repr((step, position, group[position])).encode()))
        (loss,), count = accumulate([group[position]])
        losses[position], tokens = loss, tokens + count
    params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
    flat = _flatten(params, losses, tokens)  # before the flags: an out-of-memory error here is this process's
    _check_peers()
    dist.all_reduce(flat)
    return _unflatten(flat, params)


def _flatten(params: list[torch.Tensor], losses: torch.Tensor, tokens: int) -> torch.Tensor:
    """One fp32 buffer: every gradient (zeros for none), a has-gradient mask, the losses, the token count.

    fp32 holds the token count exactly (a step has far fewer than 2**24 tokens).
    """
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    parts = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device)
             for p in params]
    return torch.cat([*parts, has_grad, losses.to(device), torch.tensor([float(tokens)], device=device)])


def _unflatten(flat: torch.Tensor, params: list[torch.Tensor]) -> tuple[list[float], int]:
    """Write the summed gradients back; returns the step's losses and tokens. A parameter that got no
    gradient in any process keeps ``grad=None``, as in one process (AdamW then leaves it alone)."""
    grad_size = sum(p.numel() for p in params)
    offset = 0
    for param, got_grad in zip(params, flat[grad_size: grad_size + len(params)].tolist(), strict=True):
        summed = flat[offset: offset + param.numel()].view_as(param)
        offset += param.numel()
        if not got_grad:
            continue
        if param.grad is None:
            param.grad = summed.to(param.dtype).clone()
        else:
            param.grad.copy_(summed)
    tail = flat[grad_size + len(params):].cpu()
    return tail[:-1].tolist(), int(tail[-1])


def validation_loss(model, items: list[Encoded], family: str, pad_id: int, batch_size: int,
                    speedups: SpeedupPlan, autocast: AbstractContextManager, max_tokens: int | None = None) -> float:
    """``evaluate.validation_loss`` over a share of whole batches per process, summed over processes."""
    if _GROUP is None:
        return evaluate.validation_loss(model, items, family, pad_id, batch_size, speedups, autocast, max_tokens)
    shard = [items[i] for i in _my_batches(list(range(len(items))), batch_size)]
    mean = evaluate.validation_loss(model, shard, family, pad_id, batch_size, speedups, autocast, max_tokens)
    # The tokens evaluate.validation_loss scores: a causal model's position t predicts token t + 1.
    count = sum(sum(label != IGNORE for label in (e.labels[1:] if family == "causal" else e.labels))
                for e in shard)
    _check_peers()
    totals = torch.tensor([mean * count, count], dtype=torch.float64, device=_GROUP.device)
    dist.all_reduce(totals)
    return float(totals[0] / max(float(totals[1]), 1.0))


def generate(model, items: list[Encoded], tokenizer, family: str, max_new_tokens: int, batch_size: int,
             device: torch.device, autocast: AbstractContextManager) -> list[str]:
    """``evaluate.generate`` over a share of whole batches per process; every process gets all predictions.

    The batches are ``evaluate.generate``'s own (longest prompts first), so each prompt is decoded in the
    same company of padding as in one process.
    """
    if _GROUP is None:
        return evaluate.generate(model, items, tokenizer, family, max_new_tokens, batch_size, device, autocast)
    longest_first = sorted(range(len(items)), key=lambda i: -len(items[i].prompt_ids))
    mine = _my_batches(longest_first, batch_size)
    predictions = evaluate.generate(model, [items[i] for i in mine], tokenizer, family, max_new_tokens, batch_size,
                                    device, autocast)
    return _gathered(mine, predictions, len(items))


def rank_label_words(model, task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
                     max_target: int, batch_size: int, speedups: SpeedupPlan,
                     autocast: AbstractContextManager) -> list[dict[str, float]]:
    """``label_ranking.rank_label_words`` over a share of whole batches of the examples per process; every
    process gets every example's label-word scores."""
    if _GROUP is None:
        return label_ranking.rank_label_words(model, task, examples, tokenizer, family, max_source, max_target,
                                              batch_size, speedups, autocast)
    mine = _my_batches(list(range(len(examples))), batch_size)
    scores = label_ranking.rank_label_words(model, task, [examples[i] for i in mine], tokenizer, family,
                                            max_source, max_target, batch_size, speedups, autocast)
    return _gathered(mine, scores, len(examples))


def _gathered(mine: list[int], predictions: list[Any], total: int) -> list[Any]:
    """Every process's predictions for its indices ``mine``, put together in index order."""
    _check_peers()
    shares: list[Any] = [None] * _GROUP.world
    dist.all_gather_object(shares, (mine, predictions))
    by_index = {i: text for indices, texts in shares for i, text in zip(indices, texts, strict=True)}
    return [by_index[i] for i in range(total)]


def _my_batches(indices: list[int], batch_size: int) -> list[int]:
    """This process's whole batches of ``indices`` (batches dealt round-robin), in order."""
    batches = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    return [i for batch in batches[_GROUP.rank::_GROUP.world] for i in batch]
