"""Compiled layers (speedups/compiled_layers.py): the repeated blocks compiled for the loss's passes only, with
the eager loss and gradients, in place of the levers whose per-pass caches and hooks would compile again."""

from __future__ import annotations

import pytest
import torch
from speedup_helpers import CPU, plain_plan, plan_for
from torch import nn

import peftbench.speedups.compiled_layers as compiled_layers
from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import SpeedupsConfig
from peftbench.recipe.batching import collate, encode
from peftbench.recipe.loss import target_loss
from peftbench.speedups import for_model

pytestmark = pytest.mark.integration

ONLY_COMPILED = SpeedupsConfig(compiled_layers=True)
needs_compiler = pytest.mark.skipif(compiled_layers.cpp_compiler() is None,
                                    reason="Inductor's CPU backend needs a C++ compiler")


def _lora_llama():
    loaded = load_model("llama-tiny-random")
    torch.manual_seed(0)
    model = apply_method(loaded.model, "causal", "lora").model
    data = load_task_data(get_task("synthetic_classification"), None, 32, 0, 32)
    batch = collate(encode(data.train[:8], loaded.tokenizer, "causal", 512, 128), "causal",
                    loaded.tokenizer.pad_token_id)
    return model, batch


def test_the_repeated_blocks_are_the_classes_the_model_declares():
    model, _ = _lora_llama()
    blocks = compiled_layers.repeated_blocks(model)
    assert [type(block).__name__ for block in blocks] == ["LlamaDecoderLayer"] * model.config.num_hidden_layers
    assert compiled_layers.repeated_blocks(nn.Sequential(nn.Linear(2, 2))) == []


@needs_compiler
def test_compiled_layers_take_the_place_of_the_per_pass_levers():
    model, _ = _lora_llama()
    statuses = plan_for(model, precision="bf16", compiled=True).statuses
    assert statuses["compiled_layers"].status == "applied"
    for lever, what in (("shared_prompt_prefix", "key/value cache"), ("concatenated_rows", "key/value cache"),
                        ("unpadded_feed_forward", "hooks")):
        assert statuses[lever].reason == f"compiled_layers: its per-pass {what} would compile the layers again"
    assert statuses["eager_attention"].status == statuses["lm_head_on_targets"].status == "applied"
    blocks = compiled_layers.repeated_blocks(model)
    assert all(isinstance(block.forward, compiled_layers._CompiledForward) for block in blocks)
    assert compiled_layers.compile_repeated_blocks(model) == 0  # a second plan does not wrap them again


def test_the_lever_says_why_it_cannot_apply(monkeypatch):
    model, _ = _lora_llama()
    monkeypatch.setattr(compiled_layers.shutil, "which", lambda name: None)
    assert for_model(model, CPU, ONLY_COMPILED).statuses["compiled_layers"].reason == (
        "no C++ compiler on PATH (Inductor's CPU backend builds its kernels with one)")
    assert compiled_layers.why_not_compiled(nn.Sequential(nn.Linear(2, 2)), torch.device("cuda")) == (
        "the model declares no repeated block (_no_split_modules)")


@needs_compiler
def test_only_the_loss_passes_run_compiled(monkeypatch):
    """Decoding, ranking and forgetting call the model outside ``compiled_passes``: their blocks run eager."""
    model, batch = _lora_llama()
    for_model(model, CPU, ONLY_COMPILED)
    calls = []
    for block in compiled_layers.repeated_blocks(model):
        eager = block.forward.eager
        block.forward.compiled = lambda *args, _eager=eager, **kwargs: calls.append(1) or _eager(*args, **kwargs)
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert calls == []
        target_loss(model, batch, for_model(model, CPU, ONLY_COMPILED))
    assert len(calls) == model.config.num_hidden_layers


@needs_compiler
@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients():
    """fp32, Inductor's CPU kernels against the eager forward and backward: the same loss and gradients up to
    floating-point reordering."""
    model, batch = _lora_llama()

    def loss_and_grads(plan):
        loss = target_loss(model, batch, plan)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    eager_loss, eager_grads = loss_and_grads(plain_plan(model))
    loss, grads = loss_and_grads(for_model(model, CPU, ONLY_COMPILED))
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for ours, reference in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
