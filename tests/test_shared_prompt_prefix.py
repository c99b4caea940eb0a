"""A prompt prefix shared by every row runs once: same loss and gradients, less work
(speedups/shared_prompt_prefix.py)."""

from __future__ import annotations

import pytest
import torch
from speedup_helpers import plan_for

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import IGNORE, collate, encode
from peftbench.recipe.evaluate import validation_loss
from peftbench.recipe.loss import target_loss
from peftbench.speedups.shared_prompt_prefix import (
    MIN_SHARED_TOKENS,
    shared_prefix_length,
    supports_prefix_sharing,
)

pytestmark = pytest.mark.integration


def _batch(task: str = "synthetic_classification", n: int = 8):
    loaded = load_model("llama-tiny-random")
    data = load_task_data(get_task(task), None, 32, 0, 32)
    return collate(encode(data.train[:n], loaded.tokenizer, "causal", 512, 128), "causal",
                   loaded.tokenizer.pad_token_id)


def _loss_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    loss = target_loss(model, batch, plan_for(model, "eager_attention", *(() if share else ("shared_prompt_prefix",))))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def test_prefix_is_the_common_start_stopping_before_the_first_target():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0],
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99, 12, 13, 14]])
    labels = torch.full_like(ids, IGNORE)
    labels[0, 12:13] = 13  # row 0's first target is at 12: position 11 predicts it
    labels[1, 13] = 14
    batch = {"input_ids": ids, "labels": labels}
    assert shared_prefix_length(batch) == 10  # ids agree up to column 10
    labels[0, 10] = 11
    assert shared_prefix_length(batch) == 9  # position 9 predicts a target: it stays out of the prefix
    labels[0, 8] = 9
    assert shared_prefix_length(batch) == 0  # 7 tokens: fewer than MIN_SHARED_TOKENS
    assert MIN_SHARED_TOKENS == 8
    assert shared_prefix_length({"input_ids": ids[:1], "labels": labels[:1]}) == 0  # one row: nothing to share


def test_real_batch_shares_its_template_prefix():
    batch = _batch()
    assert batch["input_ids"].shape == (8, 116)
    assert shared_prefix_length(batch) == 50


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit", "full"])
def test_shared_prefix_gives_the_same_loss_and_gradients(method):
    loaded = load_model("llama-tiny-random")
    torch.manual_seed(0)
    model = apply_method(loaded.model, "causal", method).model
    model.eval()  # no dropout: the two computations must agree number for number
    batch = _batch()
    plain_loss, plain = _loss_and_grads(model, batch, False)
    shared_loss, shared = _loss_and_grads(model, batch, True)
    assert shared_loss == pytest.approx(plain_loss, rel=1e-6)
    assert shared.keys() == plain.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(shared[name], grad, rtol=1e-4, atol=1e-6)


def test_validation_loss_is_unchanged_by_prefix_sharing():
    loaded = load_model("llama-tiny-random")
    model = apply_method(loaded.model, "causal", "lora").model
    data = load_task_data(get_task("synthetic_data_to_text"), None, 32, 0, 32)
    items = encode(data.validation[:12], loaded.tokenizer, "causal", 512, 128)
    pad = loaded.tokenizer.pad_token_id
    off = torch.autocast("cpu", enabled=False)
    shared = validation_loss(model, items, "causal", pad, 5, plan_for(model), off)
    plain = validation_loss(model, items, "causal", pad, 5, plan_for(model, "shared_prompt_prefix"), off)
    assert shared == pytest.approx(plain, rel=1e-6)


def test_not_applied_to_virtual_tokens_or_encoder_decoder_models():
    assert supports_prefix_sharing(apply_method(load_model("llama-tiny-random").model, "causal", "lora").model)
    assert not supports_prefix_sharing(apply_method(load_model("llama-tiny-random").model, "causal", "prompt").model)
    t5 = load_model("t5-tiny-random")
    assert not supports_prefix_sharing(apply_method(t5.model, "seq2seq", "lora").model)


def test_not_applied_while_dropout_is_at_work():
    loaded = load_model("llama-tiny-random")
    model = apply_method(loaded.model, "causal", "lora").model
    model.train()
    assert supports_prefix_sharing(model)  # no dropout in this model: training shares too
    model.get_base_model().config.attention_dropout = 0.1
    assert not supports_prefix_sharing(model)  # the rows would share one dropout mask over the prefix
    model.eval()
    assert supports_prefix_sharing(model)
