"""(IA)3 (Liu et al., 2022): learned vectors, initialised to one, that rescale module outputs.

Targets the outputs of attention q, k, v, o and of the feed-forward's linear branch and output
(T5: wi_1 and wo; Llama: up_proj and down_proj): 933,888 vectors' entries on FLAN-T5-XL (Table 3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftbench.catalog.methods import ADAPTER_LR, METHODS, MethodContext, MethodSpec

if TYPE_CHECKING:
    import peft

ROLES = {"attention", "ff_up", "ff_down"}


def ia3_config(ctx: MethodContext) -> peft.IA3Config:
    import peft  # on use: reading results and listing methods need no PEFT

    # feedforward_modules=[]: every vector scales its module's output, as the issue of record specifies.
    defaults = {"target_modules": ctx.targets(ROLES), "feedforward_modules": [], "task_type": ctx.task_type}
    return ctx.build(peft.IA3Config, defaults)


METHODS.register("ia3", MethodSpec("ia3", "(IA)3 output scaling of attention and feed-forward", ADAPTER_LR,
                                   ia3_config, label="(IA)3", order=1))
