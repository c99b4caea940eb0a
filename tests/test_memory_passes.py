"""train.max_tokens_per_pass: a batch over the budget runs as micro-batches within it, with the same gradient
and the same batch losses (each piece's mean weighted by its share of the batch's target tokens)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from peftbench.catalog.models import load_model
from peftbench.config import SpeedupsConfig, TrainConfig
from peftbench.recipe.batching import IGNORE, Encoded, plan_passes
from peftbench.recipe.steps import accumulate
from peftbench.recipe.train import make_accelerator
from peftbench.speedups import for_model

pytestmark = pytest.mark.integration


def _items(family: str, count: int = 16, seed: int = 0) -> list[Encoded]:
    """Rows of 4-40 prompt tokens and 1-12 target tokens (byte ids 3-255)."""
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        prompt = [rng.randrange(3, 256) for _ in range(rng.randrange(4, 41))]
        target = [rng.randrange(3, 256) for _ in range(rng.randrange(1, 13))] + [1]
        if family == "seq2seq":
            items.append(Encoded(prompt, target, prompt))
        else:
            items.append(Encoded(prompt + target, [IGNORE] * len(prompt) + target, prompt))
    return items


def _gradient(model_name: str, max_tokens: int | None) -> tuple[list[float], dict[str, torch.Tensor], int]:
    """The batch losses and the gradient of one optimiser step (2 batches of 8 rows, fp32, no dropout), and the
    passes the step ran as."""
    loaded = load_model(model_name)
    model = loaded.model.eval()  # eval: no dropout, so both gradients come from the same function
    cfg = TrainConfig(batch_size=8, grad_accum=2, precision="fp32", max_tokens_per_pass=max_tokens)
    accelerator = make_accelerator("fp32", loaded.architecture)
    # Every lever that applies in fp32 but compiled_layers: torch.compile would compile each pass shape of the
    # split anew (3 min of the suite); its losses are the eager ones (tests/test_compiled_layers.py).
    levers = dataclasses.replace(SpeedupsConfig.from_setting("all"), compiled_layers=False)
    plan = for_model(model, accelerator.device, levers, "no")
    items = _items(loaded.family)
    group = [list(range(0, 8)), list(range(8, 16))]
    passes = plan_passes(items, group, loaded.family, cfg.batch_size, 1, fuse=plan.fused_passes,
                         max_tokens=max_tokens)
    losses, _ = accumulate(model, accelerator, items, group, cfg, loaded.family, 0, 1, plan)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return losses, grads, len(passes)


@pytest.mark.parametrize("model_name", ["llama-tiny-random", "t5-tiny-random"])
def test_a_token_budget_keeps_the_gradient(model_name):
    whole_losses, whole, whole_passes = _gradient(model_name, None)
    split_losses, split, split_passes = _gradient(model_name, 96)
    assert split_passes > whole_passes  # the budget did split the batches
    assert split_losses == pytest.approx(whole_losses, rel=1e-5)
    assert set(split) == set(whole) and len(whole) > 0
    for name, grad in whole.items():
        torch.testing.assert_close(split[name], grad, rtol=1e-4, atol=1e-6, msg=name)
