"""LoRA (Hu et al., 2021): rank-r updates on the attention projections q, k, v, o of every attention block.

Rank 3 reproduces the paper's Table 3 counts (3,538,944 on FLAN-T5-XL = 72 blocks × 4 × 3 × (2048 + 2048));
the paper's text says rank 2, which would give 2,359,296. ``method_options: {lora: {r: 2}}`` runs the text's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftbench.catalog.methods import ADAPTER_LR, METHODS, MethodContext, MethodSpec

if TYPE_CHECKING:
    import peft

ROLES = {"attention"}  # q, k, v, o of every attention block: self and cross


def lora_config(ctx: MethodContext) -> peft.LoraConfig:
    import peft  # on use: reading results and listing methods need no PEFT

    defaults = {"r": 3, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
                "target_modules": ctx.targets(ROLES),
                "task_type": ctx.task_type}
    return ctx.build(peft.LoraConfig, defaults)


METHODS.register("lora", MethodSpec("lora", "rank-3 LoRA on attention q, k, v, o", ADAPTER_LR, lora_config,
                                    label="LoRA", order=2))
