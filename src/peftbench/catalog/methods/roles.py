"""Module roles per architecture, and layer/module selection by role.

A role map names, for one architecture, its stacks of blocks (T5: encoder and decoder) and, inside a
block, every linear layer with the roles it plays (self_attention + query, feed_forward + ff_up, ...).
Methods target roles; selection turns roles and layer choices into exact module names for PEFT, so
nothing is ever found by substring matching. Adding an architecture is adding one map.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peftbench.errors import UserError, unknown

if TYPE_CHECKING:
    from torch import nn

# Every role a module can carry. "attention" covers self and cross attention.
ROLES = ("attention", "self_attention", "cross_attention", "query", "key", "value", "output",
         "feed_forward", "ff_gate", "ff_up", "ff_down")


def _attn(prefix: str, kind: str, names: tuple[str, str, str, str]) -> dict[str, frozenset[str]]:
    """q, k, v, o projections of one attention block, given their names in this architecture."""
    return {f"{prefix}.{name}": frozenset({"attention", kind, role})
            for name, role in zip(names, ("query", "key", "value", "output"), strict=True)}


def _ff(prefix: str, gate: str | None, up: str, down: str) -> dict[str, frozenset[str]]:
    modules = {f"{prefix}.{up}": frozenset({"feed_forward", "ff_up"}),
               f"{prefix}.{down}": frozenset({"feed_forward", "ff_down"})}
    if gate:
        modules[f"{prefix}.{gate}"] = frozenset({"feed_forward", "ff_gate"})
    return modules


@dataclass(frozen=True)
class RoleMap:
    """``stacks``: stack name → path of its list of blocks; ``blocks``: stack → module path → roles;
    ``feed_forward``: stack → path in a block of its feed-forward network, where it is one module that maps
    each token's hidden state alone and takes the hidden states as its only input (speedups/unpadded_feed_forward.py)."""

    stacks: dict[str, str]
    blocks: dict[str, dict[str, frozenset[str]]]
    feed_forward: dict[str, str] = field(default_factory=dict)


_T5_QKVO = ("q", "k", "v", "o")
_LLAMA_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
_LLAMA = RoleMap(
    stacks={"decoder": "model.layers"},
    blocks={"decoder": {**_attn("self_attn", "self_attention", _LLAMA_QKVO),
                        **_ff("mlp", "gate_proj", "up_proj", "down_proj")}},
    feed_forward={"decoder": "mlp"},
)
_BART_QKVO = ("q_proj", "k_proj", "v_proj", "out_proj")

ROLE_MAPS: dict[str, RoleMap] = {
    # T5 v1.1 / FLAN-T5 (gated: wi_0 is the gate, wi_1 the linear branch); plain T5 has a single "wi".
    "t5": RoleMap(
        stacks={"encoder": "encoder.block", "decoder": "decoder.block"},
        blocks={
            "encoder": {**_attn("layer.0.SelfAttention", "self_attention", _T5_QKVO),
                        **_ff("layer.1.DenseReluDense", "wi_0", "wi_1", "wo"),
                        "layer.1.DenseReluDense.wi": frozenset({"feed_forward", "ff_up"})},
            "decoder": {**_attn("layer.0.SelfAttention", "self_attention", _T5_QKVO),
                        **_attn("layer.1.EncDecAttention", "cross_attention", _T5_QKVO),
                        **_ff("layer.2.DenseReluDense", "wi_0", "wi_1", "wo"),
                        "layer.2.DenseReluDense.wi": frozenset({"feed_forward", "ff_up"})},
        },
    ),
    "bart": RoleMap(
        stacks={"encoder": "model.encoder.layers", "decoder": "model.decoder.layers"},
        blocks={
            "encoder": {**_attn("self_attn", "self_attention", _BART_QKVO), **_ff("", None, "fc1", "fc2")},
            "decoder": {**_attn("self_attn", "self_attention", _BART_QKVO),
                        **_attn("encoder_attn", "cross_attention", _BART_QKVO), **_ff("", None, "fc1", "fc2")},
        },
    ),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "mistral": _LLAMA,
    "gpt_neox": RoleMap(
        stacks={"decoder": "gpt_neox.layers"},
        blocks={"decoder": {
            # q, k and v are one fused projection in GPT-NeoX: it carries all three roles.
            "attention.query_key_value": frozenset({"attention", "self_attention", "query", "key", "value"}),
            "attention.dense": frozenset({"attention", "self_attention", "output"}),
            **_ff("mlp", None, "dense_h_to_4h", "dense_4h_to_h")}},
        feed_forward={"decoder": "mlp"},
    ),
    "bert": RoleMap(
        stacks={"encoder": "encoder.layer"},
        blocks={"encoder": {
            **_attn("attention", "self_attention", ("self.query", "self.key", "self.value", "output.dense")),
            **_ff("", None, "intermediate.dense", "output.dense")}},
    ),
}


def feed_forward_networks(model: nn.Module) -> list[nn.Module]:
    """Every block's feed-forward network (``RoleMap.feed_forward``); empty for an architecture without
    a role map or without one such module per block."""
    rmap = ROLE_MAPS.get(getattr(getattr(model, "config", None), "model_type", None))
    if rmap is None:
        return []
    return [block.get_submodule(path) for stack, path in rmap.feed_forward.items()
            for block in _stack(model, rmap.stacks[stack])]


def _strip_empty(path: str) -> str:
    return path.lstrip(".")


def role_map(model: nn.Module) -> RoleMap:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ROLE_MAPS:
        raise UserError(f"no module role map for architecture {model_type!r}; known: "
                        f"{', '.join(sorted(ROLE_MAPS))} (add one in peftbench/catalog/methods/roles.py)")
    return ROLE_MAPS[model_type]


def stack_sizes(model: nn.Module) -> dict[str, int]:
    """Number of blocks in each stack, e.g. {"encoder": 24, "decoder": 24} for FLAN-T5-XL."""
    return {stack: len(_stack(model, path)) for stack, path in role_map(model).stacks.items()}


def _stack(model: nn.Module, path: str) -> nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for prefix in ("", "bert.", "roberta."):  # heads wrap the encoder under a prefix
        try:
            return base.get_submodule(prefix + path)
        except AttributeError:
            continue
    raise UserError(f"model {type(base).__name__} has no block stack at {path!r}")


def _stack_prefix(model: nn.Module, path: str) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for prefix in ("", "bert.", "roberta."):
        try:
            base.get_submodule(prefix + path)
            return prefix + path
        except AttributeError:
            continue
    raise UserError(f"model {type(base).__name__} has no block stack at {path!r}")


def select_layers(sizes: dict[str, int], layers, seed: int) -> dict[str, list[int]]:
    """Block indices per stack for a layer selection.

    ``layers``: None (all), "early" / "later" / "random" (half of each stack), "early:F" / "later:F" /
    "random:F" (a fraction F of each stack), or a list of indices applied to every stack.
    """
    if layers is None or layers == "all":
        return {stack: list(range(n)) for stack, n in sizes.items()}
    if isinstance(layers, list):
        for stack, n in sizes.items():
            bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < n]
            if bad:
                raise UserError(f"layers: {bad} out of range for the {stack} stack (0..{n - 1})")
        return {stack: sorted(set(layers)) for stack in sizes}
    mode, _, fraction_text = str(layers).partition(":")
    fraction = _fraction(fraction_text, layers) if fraction_text else 0.5
    if mode not in ("early", "later", "random"):
        raise unknown("layer selection", str(layers), ["all", "early", "later", "random", "early:F", "later:F",
                                                       "random:F", "[i, j, ...]"])
    chosen = {}
    for stack, n in sizes.items():
        count = max(1, round(n * fraction))
        if mode == "early":
            chosen[stack] = list(range(count))
        elif mode == "later":
            chosen[stack] = list(range(n - count, n))
        else:  # a seeded random subset, different per stack, recorded in the result
            chosen[stack] = sorted(random.Random(f"layers/{stack}/{seed}").sample(range(n), count))
    return chosen


def _fraction(text: str, layers) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise UserError(f"layers: {layers!r}: the fraction must be in (0, 1]")
    return value


def parse_module_filter(modules: list[str] | None) -> tuple[set[str], set[str]]:
    """["attention", "-query"] → keep {"attention"}, drop {"query"}; every name must be a known role."""
    keep, drop = set(), set()
    for item in modules or []:
        name = item[1:] if item.startswith("-") else item
        if name not in ROLES:
            raise unknown("module role", name, ROLES)
        (drop if item.startswith("-") else keep).add(name)
    return keep, drop


def select_modules(model: nn.Module, targets: set[str], *, layers=None, modules: list[str] | None = None,
                   seed: int = 0) -> tuple[list[str], dict[str, list[int]]]:
    """Exact names of the linear modules to adapt, and the chosen block indices per stack.

    ``targets``: the roles the method adapts by default (a module qualifies if it has any of them).
    ``modules``: a further filter: plain roles keep only modules with one of them, "-role" drops them.
    """
    import torch

    rmap = role_map(model)
    keep, drop = parse_module_filter(modules)
    chosen = select_layers(stack_sizes(model), layers, seed)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = []
    for stack, path in rmap.stacks.items():
        prefix = _stack_prefix(model, path)
        for index in chosen[stack]:
            for relative, roles in rmap.blocks[stack].items():
                if not roles & targets or roles & drop or (keep and not roles & keep):
                    continue
                name = f"{prefix}.{index}.{_strip_empty(relative)}"
                try:
                    module = base.get_submodule(name)
                except AttributeError:
                    continue  # e.g. T5's gated wi_0/wi_1 versus plain wi: the map lists both
                if isinstance(module, torch.nn.Linear):
                    names.append(name)
    if not names:
        raise UserError(f"the module selection (targets {sorted(targets)}, modules {modules}, layers {layers}) "
                        f"matches no linear layer of this {model.config.model_type} model")
    return names, chosen
