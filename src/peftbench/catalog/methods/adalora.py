"""AdaLoRA (Zhang et al., 2023): LoRA whose rank budget is reallocated during training by importance.

PEFT prunes the budget in ``update_and_allocate``, which must run after every optimiser step while the
gradients are still there; the spec's ``after_optimizer_step`` hook does that. ``total_step`` defaults to
the optimiser steps of the run's schedule. Targets the attention projections, like LoRA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftbench.catalog.methods import ADAPTER_LR, METHODS, MethodContext, MethodSpec

if TYPE_CHECKING:
    import peft
    from torch import nn

ROLES = {"attention"}


def adalora_config(ctx: MethodContext) -> peft.AdaLoraConfig:
    import peft  # on use: reading results and listing methods need no PEFT

    # Counting parameters (peftbench params, preflight) has no schedule; the count does not depend on it.
    defaults = {"target_modules": ctx.targets(ROLES), "total_step": ctx.total_steps or 1,
                "task_type": ctx.task_type}
    return ctx.build(peft.AdaLoraConfig, defaults)


def reallocate_budget(model: nn.Module, step: int) -> None:
    model.base_model.update_and_allocate(step)


METHODS.register("adalora", MethodSpec("adalora", "AdaLoRA on attention q, k, v, o, rank budget reallocated "
                                       "every step", ADAPTER_LR, adalora_config, label="AdaLoRA", order=5,
                                       after_optimizer_step=reallocate_budget))
