"""Decoding a causal model with PEFT prompt learning: the cache is used, and the text is decoding's without it."""

from __future__ import annotations

import peft
import pytest
import torch

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.peft_compat import cache_visible_to_peft
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import collate_prompts, encode

pytestmark = pytest.mark.integration


def _prompt_learning_model(kind: str):
    loaded = load_model("llama-tiny-random")
    torch.manual_seed(0)
    if kind == "prompt":
        model = apply_method(loaded.model, "causal", "prompt", {"num_virtual_tokens": 5}).model
    else:
        model = peft.get_peft_model(loaded.model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    for param in model.parameters():  # a trained-looking soft prompt: far from the random initialisation
        if param.requires_grad:
            param.data.normal_(0, 1)
    return model.eval(), loaded.tokenizer


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_prompt_learning_decodes_with_the_cache_as_without_it(kind):
    model, tokenizer = _prompt_learning_model(kind)
    data = load_task_data(get_task("synthetic_data_to_text"), None, 8, 0, 8)
    batch = collate_prompts(encode(data.test[:4], tokenizer, "causal", 512, 128), tokenizer.pad_token_id, left=True)
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    widths = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append((kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds")
                                                    is not None else kwargs["input_ids"]).shape[1]),
        with_kwargs=True)
    with torch.no_grad():
        reference = model.generate(**batch, **settings, use_cache=False)  # every step from the whole sequence
        widths.clear()
        with cache_visible_to_peft(model):
            cached = model.generate(**batch, **settings)
    hook.remove()
    assert torch.equal(cached, reference)
    prompt = batch["input_ids"].shape[1] + (5 if kind == "prompt" else 0)  # prompt tuning prepends its 5
    assert widths[0] == prompt and set(widths[1:]) == {1}, widths  # one new token per step after the prompt
    assert "prepare_inputs_for_generation" not in vars(model)  # the class's method again
    assert model.base_model_prepare_inputs_for_generation.__func__ is type(model.base_model).prepare_inputs_for_generation


def test_models_without_prompt_learning_are_left_alone():
    loaded = load_model("llama-tiny-random")
    model = apply_method(loaded.model, "causal", "lora").model
    before = dict(vars(model))
    with cache_visible_to_peft(model):
        assert dict(vars(model)) == before
