"""A run's memory predicted before it runs (``peftbench run ... --dry-run``): the parts of
``memory.breakdown`` (``memory.py``) from the model's config, the method, the data's widest pass and the
settings, without loading the model's weights or training.

How: the model is built twice from its config with fewer layers (1 and 2 per stack, 2 and 4 under a layer
ablation; random weights, no file read), the method and the speed-ups applied as a run applies them, and each copy runs the forward pass of the
run's widest training pass (the most padded tokens over every epoch's planned passes, ``batching.plan_passes``)
under the run's autocast and the same saved-tensor probe that measures a run. Weights, trainable bytes and
saved activations grow linearly with the layers, so two depths give the full depth's (the transients below
do not grow: the deeper copy's are the prediction). AdamW's state is two
fp32 moments per trainable value and a 4-byte step per trainable tensor. ``runtime`` is this process's own
before anything is built (the dry-run process has imported what a run's process imports). ``overhead`` is
predicted as the widest pass's transients: a second forward and backward of that pass (the first has left
its gradients, as in gradient accumulation) counts every tensor storage allocated and freed
(``LiveBytes``), and the most alive at once, less what was alive before it and less the saved activations,
is what backward needs beyond them (the logits and the loss's copies of them, each layer's input gradients).
What the measured overhead holds beyond that is the allocator's: memory freed but kept by the process.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from peftbench.catalog.ablations import resolve_selection
from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import auto_class, family_of, load_config, load_tokenizer
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import RunConfig
from peftbench.recipe import memory
from peftbench.recipe.batching import (
    Encoded,
    collate,
    length_grouped_batches,
    plan_passes,
    source_token_limit,
)
from peftbench.recipe.datacache import encode_cached
from peftbench.recipe.loss import segment_losses
from peftbench.recipe.precision import mixed_precision
from peftbench.speedups import resolve as resolve_speedups

LAYER_FIELDS = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer")
"""Config fields that count a stack's layers (Llama/BERT, T5's encoder and decoder, GPT-2)."""
DEPTHS = (1, 2)
"""Layers per stack of the two shallow copies; (2, 4) where a layer ablation selects a half of them."""


@dataclass
class Prediction:
    """The predicted parts (bytes) and the widest pass they were predicted at."""

    breakdown: dict[str, int]
    rows: int
    tokens: int

    @property
    def peak_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def increment_bytes(self) -> int:
        """The predicted peak over ``runtime``: what the model, the method and training add."""
        return self.peak_bytes - self.breakdown["runtime"]


def layer_count(config) -> int:
    """Layers per stack (T5: the encoder's)."""
    return next(int(getattr(config, name)) for name in LAYER_FIELDS if isinstance(getattr(config, name, None), int))


def with_layers(config, layers: int):
    """A copy of ``config`` with ``layers`` per stack."""
    config = copy.deepcopy(config)
    for name in LAYER_FIELDS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    return config


def build_shallow(config, family: str, labels: tuple[str, ...] | None) -> nn.Module:
    """The model from ``config`` with random weights (an encoder: with its classification head)."""
    if family == "encoder":
        config.num_labels = len(labels or ())
    torch.manual_seed(0)
    return auto_class(family).from_config(config).train()


def predict_run(run: RunConfig, runtime_bytes: int | None = None) -> Prediction:
    """The predicted ``memory.breakdown`` of ``run`` (see the module docstring)."""
    cfg, task = run.train, get_task(run.task)
    config = load_config(run.model, run.trust_remote_code, run.model_revision)
    family = family_of(config)
    tokenizer = load_tokenizer(run.model, run.trust_remote_code, run.model_revision)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, cfg.eval_examples)
    max_epochs = run.epoch_cap()
    layers, modules = resolve_selection(run.ablation, run.layers, run.modules)
    total_layers = layer_count(config)
    measured, widest = [], None
    depths = DEPTHS if layers is None else tuple(2 * d for d in DEPTHS)
    for depth in [d for d in depths if d <= total_layers] or [total_layers]:
        model = build_shallow(with_layers(config, depth), family, task.classes or None)
        applied = apply_method(model, family, run.method, run.method_options, layers=layers, modules=modules,
                               seed=run.seed, total_steps=1)
        model, trainable = applied.model, applied.trainable
        # Eager even where the run compiles its layers: compiling each copy would cost more than the estimate.
        speedups = dataclasses.replace(run.speedups, compiled_layers=False)
        plan = resolve_speedups(memory.speedups_for(speedups, cfg.gradient_checkpointing))
        precision = mixed_precision(cfg.precision, config.model_type)
        plan.apply_to_model(model, torch.device("cpu"), precision)
        memory.enable_gradient_checkpointing(model, cfg.gradient_checkpointing)
        if widest is None:
            max_source = source_token_limit(cfg.max_source_tokens, family, model)
            items = encode_cached(task, data.train, tokenizer, family, max_source, cfg.max_target_tokens)
            widest = widest_pass(items, run, max_epochs, family, plan)
        saved, transient = _pass_bytes(model, items, widest, family, tokenizer.pad_token_id, plan, precision)
        grads = sum(p.nbytes for p in trainable.values())
        measured.append((depth, {"weights": memory.weights_bytes(model), "gradients": grads,
                                 "optimizer_state": 2 * grads + 4 * len(trainable), "activations": saved,
                                 "overhead": transient}))
        del model, trainable, applied
    rows = len({row for _, piece, _ in widest for row in piece})
    tokens = memory.pass_tokens(collate([items[i] for _, piece, _ in widest for i in piece], family, 0))
    parts = _extrapolate(measured, total_layers)
    runtime = runtime_bytes if runtime_bytes is not None else (memory.runtime_bytes() or 0)
    return Prediction({"runtime": runtime, **parts}, rows, tokens)


def predicted_for_result(run: RunConfig, runtime_bytes: int | None) -> dict[str, object] | None:
    """``memory.predicted`` of a finished run: the prediction with the run's measured runtime, so the report can
    set it beside the measurement; None (with a warning) where it cannot be made. The random number streams are
    left as they were."""
    try:
        with torch.random.fork_rng(devices=[]):
            prediction = predict_run(run, runtime_bytes)
    except Exception as exc:  # noqa: BLE001 - a prediction never costs a run its result
        warnings.warn(f"memory not predicted: {type(exc).__name__}: {exc}", stacklevel=2)
        return None
    return {"peak_bytes": prediction.peak_bytes, "breakdown": prediction.breakdown,
            "widest_pass": {"rows": prediction.rows, "tokens": prediction.tokens}}


def widest_pass(items: list[Encoded], run: RunConfig, max_epochs: int, family: str, plan
                ) -> list[tuple[int, list[int], float]]:
    """The segments of the training pass with the most padded tokens (``memory.pass_tokens``) over every
    epoch's batch order, as ``steps.accumulate`` plans them."""
    cfg, best, best_tokens = run.train, None, -1
    for epoch in range(max_epochs):
        order = length_grouped_batches(items, cfg.batch_size, seed=run.seed * 1000 + epoch + 1,
                                       group_by_length=cfg.group_by_length)
        for start in range(0, len(order), cfg.grad_accum):
            for segments in plan_passes(items, order[start: start + cfg.grad_accum], family, cfg.batch_size, 1,
                                        fuse=plan.fused_passes, virtual_tokens=plan.virtual_tokens,
                                        max_tokens=cfg.max_tokens_per_pass):
                rows = [items[i] for _, piece, _ in segments for i in piece]
                tokens = len(rows) * (max(len(e.input_ids) for e in rows) + max(len(e.labels) for e in rows))
                if tokens > best_tokens:
                    best, best_tokens = segments, tokens
    return best


class LiveBytes(TorchDispatchMode):
    """Tensor storages allocated under the mode and still alive (``live``, bytes) and the most alive at once
    (``peak``): each op's outputs are counted once per storage and uncounted when the storage is freed.
    ``existing``: tensors allocated before (weights, optimiser state), which in-place ops (an optimiser step)
    return as outputs and which are not counted."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._alive: set[int] = set()
        self._existing = {tensor.untyped_storage().data_ptr() for tensor in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                try:
                    storage = tensor.untyped_storage()
                except (RuntimeError, NotImplementedError):  # oneDNN's blocked weights: opaque, and weights
                    continue
                self._count(storage)
        return out

    def _count(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not key or key in self._alive or key in self._existing:
            return
        self._alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, size)

    def _freed(self, key: int, size: int) -> None:
        self._alive.discard(key)
        self.live -= size


def _pass_bytes(model: nn.Module, items: list[Encoded], segments, family: str, pad_id: int, plan,
                precision: str) -> tuple[int, int]:
    """The bytes autograd saves for backward in the forward pass of ``segments`` (``memory.ActivationProbe``)
    and the transients beyond them: the most bytes alive at once in a forward and backward of the pass, less
    the saved bytes and less what was alive before it (see the module docstring)."""
    probe = memory.ActivationProbe()
    probe.reset(model)
    batch = collate([items[i] for _, piece, _ in segments for i in piece], family, pad_id)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    tracker = LiveBytes()
    with tracker:
        for _ in range(2):  # the second pass finds the first one's gradients, as accumulation does
            before = tracker.live
            tracker.peak = before
            with autocast, probe.measure(batch):
                means = segment_losses(model, batch, segments, plan)
            if means.requires_grad:  # a method with nothing trainable in this shallow copy has no backward
                means.sum().backward()
            del means
    return probe.saved_bytes, max(0, tracker.peak - before - probe.saved_bytes)


def _extrapolate(measured: list[tuple[int, dict[str, int]]], layers: int) -> dict[str, int]:
    """Each part at ``layers``: linear in the depth through the two measured depths (one depth: as measured),
    but the transients (``overhead``) as at the deeper copy: backward holds one layer's temporaries at a time,
    beside the logits' and the loss's, whatever the depth."""
    if len(measured) == 1:
        return dict(measured[0][1])
    (d1, small), (d2, large) = measured
    parts = {part: round(small[part] + (large[part] - small[part]) * (layers - d1) / (d2 - d1)) for part in small}
    return {**parts, "overhead": large["overhead"]}


def describe(prediction: Prediction) -> str:
    """One line: the predicted peak and its parts, and the widest pass."""
    parts = prediction.breakdown
    shown = " + ".join(f"{name} {_size(parts[name])}" for name in
                       ("runtime", "weights", "gradients", "optimizer_state", "activations"))
    shown += f" + backward's transients {_size(parts['overhead'])}"
    return (f"predicted peak {_size(prediction.peak_bytes)} = {shown} "
            f"(widest pass {prediction.rows} rows, {prediction.tokens} tokens)")


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
