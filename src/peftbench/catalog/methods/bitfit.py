"""BitFit (Ben Zaken et al., 2021): train a bias on every linear layer of attention and feed-forward.

T5 has no biases, so PEFT's BEFT tuner adds zero-initialised ones (the paper initialises them to zero);
on models with biases the new term adds to the existing one, which is the same function class as training
that bias. FLAN-T5-XL: 72 attention blocks × 4 × 2048 + 48 feed-forwards × (5120 + 5120 + 2048) = 1,179,648.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftbench.catalog.methods import ADAPTER_LR, METHODS, MethodContext, MethodSpec

if TYPE_CHECKING:
    import peft

ROLES = {"attention", "feed_forward"}


def bitfit_config(ctx: MethodContext) -> peft.BeftConfig:
    import peft  # on use: reading results and listing methods need no PEFT

    return ctx.build(peft.BeftConfig, {"target_modules": ctx.targets(ROLES), "task_type": ctx.task_type})


METHODS.register("bitfit", MethodSpec("bitfit", "a bias on every attention and feed-forward linear",
                                      ADAPTER_LR, bitfit_config, label="BitFit", order=3))
