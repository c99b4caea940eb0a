"""Concatenated rows (speedups/concatenated_rows.py): a batch's real tokens as one sequence give the padded
pass's loss and gradients."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from speedup_helpers import plan_for

import peftbench.speedups.concatenated_rows as concatenated_rows
from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import collate, encode
from peftbench.recipe.evaluate import validation_loss
from peftbench.recipe.loss import target_loss
from peftbench.speedups.eager_attention import GROUPED_QUERY_EAGER, pass_attention
from peftbench.speedups.shared_prompt_prefix import shared_prefix_length

pytestmark = pytest.mark.integration


def _setup(method: str = "lora", lora_dropout: float = 0.0):
    loaded = load_model("llama-tiny-random")
    torch.manual_seed(0)
    options = {"lora_dropout": lora_dropout} if method == "lora" else None
    model = apply_method(loaded.model, "causal", method, options).model
    data = load_task_data(get_task("synthetic_classification"), None, 32, 0, 32)
    items = encode(data.train[:8], loaded.tokenizer, "causal", 512, 128)
    return model, items, loaded.tokenizer.pad_token_id


def _run(model, batch, prefix: int, concatenated: bool, monkeypatch) -> tuple[float, list[torch.Tensor], list[tuple]]:
    """The loss, the trainable parameters' gradients and the hidden-state shapes the first q projection saw."""
    monkeypatch.setattr(concatenated_rows, "MIN_PADDING_SHARE", 0.0 if concatenated else 2.0)  # 2.0: never
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    seen = []
    probe = q_proj.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    loss = target_loss(model, batch, plan_for(model, *(() if prefix else ("shared_prompt_prefix",))))
    probe.remove()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads, seen


@pytest.mark.parametrize("share_prefix", [False, True])
def test_concatenated_pass_gives_the_padded_loss_and_gradients(share_prefix, monkeypatch):
    model, items, pad = _setup()
    batch = collate(items, "causal", pad)
    prefix = shared_prefix_length(batch) if share_prefix else 0
    assert (prefix > 0) == share_prefix
    real = batch["attention_mask"][:, prefix:].bool()
    assert not real.all()
    loss, grads, seen = _run(model, batch, prefix, True, monkeypatch)
    padded_loss, padded_grads, padded_seen = _run(model, batch, prefix, False, monkeypatch)
    prefix_pass = [(1, prefix, 32)] if prefix else []  # the prefix's own pass: row 0 alone
    assert seen == [*prefix_pass, (1, int(real.sum()), 32)]  # one row of the real tokens
    assert padded_seen == [*prefix_pass, (*batch["input_ids"][:, prefix:].shape, 32)]
    assert loss == pytest.approx(padded_loss, abs=1e-5)
    assert any(g.abs().sum() > 0 for g in padded_grads)
    for got, expected in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"  # pass_attention's switch, and the concatenated one, undone
    with pytest.raises(LookupError):
        concatenated_rows._LAYOUT.get()


def test_concatenated_pass_under_bf16_autocast_stays_within_rounding(monkeypatch):
    model, items, pad = _setup()
    batch = collate(items, "causal", pad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads, _ = _run(model, batch, 0, True, monkeypatch)
        padded_loss, padded_grads, _ = _run(model, batch, 0, False, monkeypatch)
    assert loss == pytest.approx(padded_loss, abs=2e-2)
    for got, expected in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-3 * float(expected.abs().max()))


def test_validation_loss_is_the_same_concatenated(monkeypatch):
    monkeypatch.setattr("peftbench.speedups.eager_attention._this_cpu", lambda: "avx512-bf16")  # no AMX: eager
    model, items, pad = _setup()
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    losses, rows_seen = {}, {}
    for share in (0.0, 2.0):
        monkeypatch.setattr(concatenated_rows, "MIN_PADDING_SHARE", share)
        rows_seen[share] = seen = set()
        probe = q_proj.register_forward_hook(lambda module, args, out, seen=seen: seen.add(args[0].shape[0]))
        losses[share] = validation_loss(model, items, "causal", pad, 4, plan_for(model), nullcontext())
        probe.remove()
    assert losses[0.0] == pytest.approx(losses[2.0], abs=1e-5)
    assert rows_seen == {0.0: {1}, 2.0: {1, 8}}  # concatenated: one row (the prefix's pass is one row either way)


def test_concatenates_only_grouped_query_eager_passes_without_dropout_or_virtual_tokens(monkeypatch):
    monkeypatch.setattr(concatenated_rows, "MIN_PADDING_SHARE", 0.0)
    model, items, pad = _setup()
    real = collate(items, "causal", pad)["attention_mask"].bool()
    assert not concatenated_rows.concatenates_rows(model, real)  # SDPA: pass_attention chose no eager kernel
    with pass_attention(model, real.shape[1], training=True):
        assert concatenated_rows.concatenates_rows(model, real)
        assert not concatenated_rows.concatenates_rows(model, torch.ones(3, 0, dtype=torch.bool))
        monkeypatch.setattr(concatenated_rows, "MIN_PADDING_SHARE", 0.05)
        assert not concatenated_rows.concatenates_rows(model, torch.ones(4, 8, dtype=torch.bool))  # no padding to skip
    for method, dropout in (("prompt", 0.0), ("lora", 0.1)):
        other, _, _ = _setup(method, dropout)
        other.train()
        with pass_attention(other, real.shape[1], training=True):
            assert {c._attn_implementation for c in [other.config]} == {GROUPED_QUERY_EAGER}
            assert not concatenated_rows.concatenates_rows(other, torch.tensor([[True, False]] * 4)), method


def test_activation_checkpointing_keeps_the_padded_pass(monkeypatch):
    monkeypatch.setattr(concatenated_rows, "MIN_PADDING_SHARE", 0.0)
    model, items, pad = _setup()
    model.train()
    real = collate(items, "causal", pad)["attention_mask"].bool()
    with pass_attention(model, real.shape[1], training=True):
        assert concatenated_rows.concatenates_rows(model, real)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert not concatenated_rows.concatenates_rows(model, real)
