"""Prompt tuning (Lester et al., 2021): 100 trainable soft-prompt embeddings prepended to the input.

On encoder-decoder models PEFT's default also prepends a second set to the decoder, doubling the count;
the paper's 204,800 (= 100 × 2048 on FLAN-T5-XL) is the encoder's set alone: num_transformer_submodules=1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftbench.catalog.methods import METHODS, PROMPT_LR, MethodContext, MethodSpec

if TYPE_CHECKING:
    import peft


def prompt_config(ctx: MethodContext) -> peft.PromptTuningConfig:
    import peft  # on use: reading results and listing methods need no PEFT

    defaults = {"num_virtual_tokens": 100, "num_transformer_submodules": 1, "task_type": ctx.task_type}
    return ctx.build(peft.PromptTuningConfig, defaults)


METHODS.register("prompt", MethodSpec("prompt", "100 soft-prompt tokens on the encoder input", PROMPT_LR,
                                      prompt_config, selectable=False, label="Prompt Tune", order=4,
                                      family="prompt"))
