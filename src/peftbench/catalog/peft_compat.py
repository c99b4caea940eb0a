"""Decoding with PEFT's prompt-learning methods on causal models under transformers 5.

transformers 5 hands the key/value cache to ``prepare_inputs_for_generation`` and the model as ``cache``;
PEFT (0.21) looks for it under its transformers 4 name, ``past_key_values``. Not finding it, PEFT's
``PeftModelForCausalLM.prepare_inputs_for_generation`` takes every decoding step for the first: prompt tuning
prepends its virtual tokens again at each step, so the cache fills with copies of the soft prompt and
the continuation is conditioned on them (other text than decoding without a cache, and slower, the cache
growing by the virtual tokens at every step); prefix tuning's keys and values would be built again at each step.

``cache_visible_to_peft`` shows PEFT the cache under the name it reads and gives the model the cache PEFT
chose under the name transformers reads, for the length of one ``generate`` call. Greedy decoding then
matches decoding without a cache token for token (tests/test_peft_compat.py). Where PEFT already reads
``cache``, or the base model's inputs carry no ``cache``, nothing changes.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

from torch import nn


def prompt_learning(model: nn.Module) -> str | None:
    """The name of ``model``'s active PEFT method when it is prompt learning ("prompt tuning", "prefix tuning",
    "p tuning"), else None (no PEFT model, or another method)."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False):
        return None
    return str(getattr(config.peft_type, "value", config.peft_type)).lower().replace("_", " ")


def _decodes_with_prompt_learning(model: nn.Module) -> bool:
    """A PEFT causal model whose active method is prompt learning (prompt, prefix or P-tuning)."""
    return (prompt_learning(model) is not None
            and hasattr(model, "base_model_prepare_inputs_for_generation")
            and not getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@contextmanager
def cache_visible_to_peft(model: nn.Module):
    """Around ``model.generate``: the decoding cache under both names for PEFT's prompt-learning step
    preparation (see the module docstring); no change for other models."""
    if not _decodes_with_prompt_learning(model):
        yield
        return
    base_prepare = model.base_model_prepare_inputs_for_generation
    peft_prepare = model.prepare_inputs_for_generation  # the class's bound method

    @functools.wraps(base_prepare)  # transformers reads the signature to validate generate's kwargs
    def base_inputs(*args, **kwargs):
        inputs = base_prepare(*args, **kwargs)
        if inputs.get("cache") is not None and "past_key_values" not in inputs:
            inputs["past_key_values"] = inputs["cache"]  # the name PEFT reads
        return inputs

    @functools.wraps(peft_prepare)
    def step_inputs(*args, **kwargs):
        inputs = peft_prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" in inputs:
            chosen = inputs.pop("past_key_values")  # the name the model reads is ``cache``
            if chosen is not None:
                inputs["cache"] = chosen  # prefix tuning: PEFT's cache of the virtual tokens' keys/values
        return inputs

    model.base_model_prepare_inputs_for_generation = base_inputs
    model.prepare_inputs_for_generation = step_inputs  # PeftModelForCausalLM.generate installs it on the base
    try:
        yield
    finally:  # generate() ends by giving the base model PEFT's saved preparation: ours, until here
        model.base_model_prepare_inputs_for_generation = base_prepare
        model.base_model.prepare_inputs_for_generation = base_prepare
        del model.prepare_inputs_for_generation  # the class's method again
