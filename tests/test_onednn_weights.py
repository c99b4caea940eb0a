"""Frozen bf16 linears multiplied through oneDNN's blocked weights (speedups/onednn_weights.py): the same
numbers."""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch
from speedup_helpers import plan_for
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import collate, encode
from peftbench.recipe.loss import target_loss
from peftbench.speedups import onednn_weights
from peftbench.speedups.bf16_frozen_weights import store_frozen_linears_in
from peftbench.speedups.onednn_weights import PackedFrozenLinear, pack_frozen_linears, why_not_packed

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not onednn_weights.packing_supported(), reason="oneDNN without bf16 on this CPU")]


def _lora_llama(pack: bool, bias: bool = False, store_bf16: bool = True) -> nn.Module:
    """A 2-layer Llama (hidden 256, MLP 512: every weight ≥ MIN_PACKED_ELEMENTS) under rank-3 LoRA, with its
    frozen linears in bf16 as peftbench trains it; packed or not."""
    config = LlamaConfig(vocab_size=384, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, tie_word_embeddings=True, attention_bias=bias)
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_config(config), "causal", "lora").model
    if store_bf16:
        store_frozen_linears_in(model, torch.bfloat16)
    if pack:
        pack_frozen_linears(model)
    return model


def causal_target_loss(model, batch):
    return target_loss(model, batch, plan_for(model, "eager_attention", "frozen_weights_bf16",
                                              "onednn_blocked_weights"))


def _batch():
    tokenizer = load_model("llama-tiny-random").tokenizer
    data = load_task_data(get_task("synthetic_classification"), None, 32, 0, 32)
    return collate(encode(data.train[:8], tokenizer, "causal", 512, 128), "causal", tokenizer.pad_token_id)


def _loss_and_grads(model: nn.Module, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_target_loss(model, batch)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]


def test_packs_every_frozen_bf16_linear_and_nothing_that_trains():
    model = _lora_llama(pack=True)
    kinds = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    packed_names = sorted(name for name, kind in kinds.items() if kind is PackedFrozenLinear)
    assert len(packed_names) == 15  # 2 layers × (q, k, v, o base layers + gate, up, down) + the head's copy
    assert all(name.endswith(("base_layer", "gate_proj", "up_proj", "down_proj", "lm_head")) for name in packed_names)
    assert not any(".lora_" in name for name in packed_names)  # the adapters train: plain nn.Linear


@pytest.mark.parametrize("bias", [False, True])
def test_packed_training_step_is_bit_identical(bias):
    batch = _batch()
    plain_loss, plain_grads = _loss_and_grads(_lora_llama(pack=False, bias=bias), batch)
    packed_loss, packed_grads = _loss_and_grads(_lora_llama(pack=True, bias=bias), batch)
    assert torch.equal(plain_loss, packed_loss)
    assert len(packed_grads) == 2 * 4 * 2  # A and B of q, k, v, o in 2 layers
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, packed_grads, strict=True))


def test_forward_outside_autocast_and_in_fp32_keeps_nn_linear_behaviour():
    layer = nn.Linear(128, 256).requires_grad_(False).to(torch.bfloat16)
    reference = copy.deepcopy(layer)
    assert pack_frozen_linears(layer) == 1 and type(layer) is PackedFrozenLinear
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert torch.equal(layer(x), reference(x))  # bf16 input without autocast: packed, same values
    with pytest.raises(RuntimeError):  # an fp32 input outside autocast fails as nn.Linear does
        layer(torch.randn(5, 128))
    layer.weight.requires_grad_(True)  # unfrozen after packing: nn.Linear's path, so the weight gets its gradient
    layer(x).float().sum().backward()
    assert layer.weight.grad is not None and torch.equal(layer.weight.grad, x.float().sum(0).expand(256, 128).to(torch.bfloat16))


def test_blocked_copies_follow_the_weight_and_are_not_state():
    layer = nn.Linear(128, 128, bias=False).requires_grad_(False).to(torch.bfloat16)
    pack_frozen_linears(layer)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    layer(x)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place change (a merge, a loaded state dict) is seen
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))
    layer.weight = nn.Parameter(torch.ones(128, 128, dtype=torch.bfloat16), requires_grad=False)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight))
    assert set(layer.state_dict()) == {"weight"}
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._blocked.made_from is None and torch.equal(clone(x), layer(x))


def test_small_weights_and_trained_weights_are_left_alone():
    small = nn.Linear(64, 64).requires_grad_(False).to(torch.bfloat16)  # below MIN_PACKED_ELEMENTS
    trained = nn.Linear(128, 128).to(torch.bfloat16)
    fp32 = nn.Linear(128, 128).requires_grad_(False)
    assert pack_frozen_linears(nn.ModuleList([small, trained, fp32])) == 0
    assert why_not_packed(nn.ModuleList([small, trained, fp32])) == "no frozen bf16 CPU linear of at least 16384 weights"


def test_the_plan_packs_under_bf16_unless_switched_off():
    def packed_count(model) -> int:
        return sum(type(m) is PackedFrozenLinear for m in model.modules())

    model = _lora_llama(pack=False, store_bf16=False)
    plan = plan_for(model, precision="bf16")
    assert plan.statuses["onednn_blocked_weights"].status == "applied" and packed_count(model) == 15
    model = _lora_llama(pack=False, store_bf16=False)
    plan = plan_for(model, "onednn_blocked_weights", precision="bf16")
    assert plan.statuses["onednn_blocked_weights"].status == "off" and packed_count(model) == 0
    assert plan.statuses["frozen_weights_bf16"].status == "applied"
    model = _lora_llama(pack=False, store_bf16=False)
    plan = plan_for(model, precision="no")  # fp32: nothing is stored in bf16, so nothing can be packed
    assert plan.statuses["onednn_blocked_weights"].reason == "precision no: bf16 autocast only"
    assert packed_count(model) == 0


def test_nothing_is_packed_when_the_copies_would_crowd_memory(monkeypatch):
    layer = nn.Linear(256, 256, bias=False).requires_grad_(False).to(torch.bfloat16)  # copies: 2 × 128 KiB
    monkeypatch.setattr(onednn_weights.psutil, "virtual_memory", lambda: SimpleNamespace(available=4 * 2**18 - 1))
    assert pack_frozen_linears(layer) == 0 and type(layer) is nn.Linear
    monkeypatch.setattr(onednn_weights.psutil, "virtual_memory", lambda: SimpleNamespace(available=4 * 2**18))
    assert pack_frozen_linears(layer) == 1
