"""CPU dropout from random bits: torch's dropout distribution and scaling, a cheaper mask, swapped for the pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftbench.catalog.models import load_model
from peftbench.speedups.bits_dropout import bits_dropout, cpu_dropout
from peftbench.speedups.eager_attention import pass_attention

pytestmark = pytest.mark.unit


def test_keeps_each_element_with_probability_one_minus_p_and_scales_by_its_inverse():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = bits_dropout(x, 0.1)
    dropped = int((y == 0).sum())
    assert dropped == 99_999  # pins the stream: four elements per int64 draw of the default generator
    assert abs(dropped / x.numel() - 0.1) < 4 * (0.1 * 0.9 / x.numel()) ** 0.5
    # p resolved to 2**-16: 6,554 of the 65,536 values drop (p = 0.100006; FlashAttention resolves it to 1/255)
    assert torch.equal(y[y != 0], torch.full((x.numel() - dropped,), 2**16 / (2**16 - 6554)))


def test_mask_rounds_its_scale_as_torch_does_in_bf16():
    x = torch.ones(10_000, dtype=torch.bfloat16)
    kept = bits_dropout(x, 0.1).unique()
    assert kept.dtype == torch.bfloat16
    assert kept.tolist() == [0.0, F.dropout(torch.ones(64, dtype=torch.bfloat16), 0.1).max().item()]


def test_is_reproducible_from_the_seed_and_has_the_mask_as_gradient():
    x = torch.randn(3, 5, 7, requires_grad=True)
    torch.manual_seed(1)
    y = bits_dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    torch.manual_seed(1)
    assert torch.equal(bits_dropout(x.detach(), 0.3), y.detach())
    assert torch.equal(x.grad, torch.where(y != 0, torch.tensor(2**16 / (2**16 - round(0.3 * 2**16))), 0.0))
    assert y.shape == x.shape and bits_dropout(torch.zeros(()), 0.5).shape == ()


@pytest.mark.parametrize("case", ["evaluation", "p=0", "p=1", "p below 2**-17", "p above 1 - 2**-17", "inplace",
                                  "integer"])
def test_leaves_what_it_does_not_speed_up_or_cannot_resolve_to_torch(case):
    x = torch.arange(12) if case == "integer" else torch.randn(12)
    args = {"evaluation": (0.5, False, False), "p=0": (0.0, True, False), "p=1": (1.0, True, False),
            "p below 2**-17": (2**-18, True, False), "p above 1 - 2**-17": (1 - 2**-18, True, False),
            "inplace": (0.5, True, True), "integer": (0.5, True, False)}[case]
    if case == "integer":
        with pytest.raises(RuntimeError):  # torch's own error for an integer input
            bits_dropout(x, *args)
        return
    torch.manual_seed(2)
    expected = F.dropout(x.clone(), *args)
    torch.manual_seed(2)
    assert torch.equal(bits_dropout(x.clone(), *args), expected)


def test_cpu_dropout_swaps_modules_and_attention_dropout_for_the_pass_only():
    model = load_model("t5-tiny-random").model.train()
    assert model.config.dropout_rate > 0 and any(isinstance(m, nn.Dropout) for m in model.modules())
    calls = []

    def counting(input, p=0.5, training=True, inplace=False):
        calls.append(tuple(input.shape))
        return bits_dropout(input, p, training, inplace)

    ids = torch.randint(3, 200, (2, 9))
    with pass_attention(model, 9, training=True), cpu_dropout():  # eager attention, as a CPU run has it
        assert F.dropout is bits_dropout
        F.dropout = counting  # what the pass calls, seen through the swapped attribute
        model(input_ids=ids, labels=ids[:, :4].contiguous()).loss.backward()
    assert F.dropout is not bits_dropout and F.dropout is not counting
    heads = model.config.num_heads
    assert (2, heads, 9, 9) in calls  # the encoder's attention probabilities
    assert (2, 9, model.config.d_model) in calls  # an nn.Dropout on the hidden states


def test_cpu_dropout_restores_torch_after_an_error():  # other devices: tests/test_speedups.py
    before = F.dropout
    with pytest.raises(ValueError), cpu_dropout():
        raise ValueError
    assert F.dropout is before
