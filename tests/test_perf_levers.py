"""The performance levers change how fast, not what: same losses, same logits, same kernels' results."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from speedup_helpers import plan_for

from peftbench.catalog.methods import apply_method
from peftbench.catalog.methods.roles import feed_forward_networks
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import IGNORE, collate, encode
from peftbench.recipe.evaluate import validation_batches, validation_loss
from peftbench.recipe.loss import target_loss
from peftbench.speedups.bf16_frozen_weights import store_frozen_linears_in
from peftbench.speedups.eager_attention import (
    EAGER_FORWARD_MAX_TOKENS,
    EAGER_TRAINING_MAX_TOKENS,
    GROUPED_QUERY_EAGER,
    pass_attention,
)
from peftbench.speedups.shared_prompt_prefix import shared_prefix_length

pytestmark = pytest.mark.integration


def causal_target_loss(model, batch, reduction="mean", prefix=None):
    """The loss with the levers that act inside one pass (the LM head at targets, the shared prefix, unpadded
    feed-forward networks), under the attention the test chooses; ``prefix=0``: no prefix shared."""
    off = ("eager_attention", *(("shared_prompt_prefix",) if prefix == 0 else ()))
    return target_loss(model, batch, plan_for(model, *off), reduction)


def _setup(method: str, n: int = 8):
    loaded = load_model("llama-tiny-random")
    torch.manual_seed(0)
    model = apply_method(loaded.model, "causal", method).model
    data = load_task_data(get_task("synthetic_classification"), None, 32, 0, 32)
    items = encode(data.train[:n], loaded.tokenizer, "causal", 512, 128)
    return model, items, loaded.tokenizer.pad_token_id


def _reference_sum(model, batch) -> tuple[float, int]:
    """Every position's logits, then the target positions: the computation the lever avoids."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    logits = logits[:, -labels.shape[1]:][:, :-1]  # prompt tuning prepends virtual tokens
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return float(loss), int((targets != IGNORE).sum())


def test_target_only_loss_is_the_models_own_loss():
    for method in ("lora", "prompt", "full"):
        model, items, pad = _setup(method)
        batch = collate(items, "causal", pad)
        with torch.no_grad():
            own = float(model(**batch).loss)
            ours = float(causal_target_loss(model, batch))
            total, count = _reference_sum(model, batch)
            ours_sum = float(causal_target_loss(model, batch, reduction="sum"))
        assert abs(own - ours) < 1e-5, method
        assert abs(total - ours_sum) < 1e-3 and abs(ours_sum / count - own) < 1e-5, method


def test_target_only_loss_trains_the_same_gradients():
    model, items, pad = _setup("lora")
    batch = collate(items, "causal", pad)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    model(**batch).loss.backward()
    reference = [p.grad.clone() for p in lora_b]
    model.zero_grad(set_to_none=True)
    causal_target_loss(model, batch).backward()
    for expected, param in zip(reference, lora_b, strict=True):
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-7)


def test_validation_loss_matches_every_position_logits():
    model, items, pad = _setup("prompt", n=12)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 5):
            part_total, part_count = _reference_sum(model, collate(items[start: start + 5], "causal", pad))
            total, count = total + part_total, count + part_count
    measured = validation_loss(model, items, "causal", pad, 5, plan_for(model), torch.autocast("cpu", enabled=False))
    assert abs(measured - total / count) < 1e-5


def test_fused_validation_batches_cover_each_example_once_and_keep_the_loss(monkeypatch):
    model, items, pad = _setup("lora", n=12)
    lengths = [len(e.input_ids) for e in items]
    plain = validation_batches(items, "causal", 5, fuse=False)
    assert [len(b) for b in plain] == [5, 5, 2]
    assert [lengths[i] for b in plain for i in b] == sorted(lengths)  # length order
    monkeypatch.setattr("peftbench.recipe.evaluate.FUSE_MAX_TOKENS", 10_000)  # room for every batch in one pass
    fused = validation_batches(items, "causal", 5, fuse=True)
    assert [i for b in fused for i in b] == [i for b in plain for i in b] and len(fused) < len(plain)
    off = torch.autocast("cpu", enabled=False)
    apart = validation_loss(model, items, "causal", pad, 5, plan_for(model, "fused_passes"), off)
    together = validation_loss(model, items, "causal", pad, 5, plan_for(model), off)
    assert together == pytest.approx(apart, rel=1e-6)


def test_frozen_tied_head_gets_its_own_bf16_copy_with_identical_logits():
    model, items, pad = _setup("lora")
    batch = collate(items, "causal", pad)
    embedding = model.get_input_embeddings().weight
    original = embedding.detach().clone()
    assert model.get_output_embeddings().weight is embedding  # llama-tiny-random is built tied
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cast = store_frozen_linears_in(model, torch.bfloat16)
    head = model.get_output_embeddings().weight
    assert cast == 15  # 2 layers × (q, k, v, o base layers + gate, up, down) + the head
    assert head is not embedding and head.dtype == torch.bfloat16 and not head.requires_grad
    assert embedding.dtype == torch.float32 and torch.equal(embedding, original)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(before, after)  # the cast autocast did at every call, done once


def test_trained_tied_head_is_left_shared():
    model, _, _ = _setup("full")
    assert store_frozen_linears_in(model, torch.bfloat16) == 0
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _attention_choices(model) -> set[str]:
    return {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")}


def test_pass_attention_runs_eager_for_short_passes_only(monkeypatch):  # CPU only: tests/test_speedups.py
    # the limits of a CPU without AMX (with AMX, forward-only passes keep flash sooner: tests/test_peak.py)
    monkeypatch.setattr("peftbench.speedups.eager_attention._this_cpu", lambda: "avx512-bf16")
    model, _, _ = _setup("lora")
    assert _attention_choices(model) == {"sdpa"}
    with pass_attention(model, EAGER_TRAINING_MAX_TOKENS, training=True):
        assert _attention_choices(model) == {GROUPED_QUERY_EAGER}  # Llama: eager, grouped-query form
    assert _attention_choices(model) == {"sdpa"}
    for width, training in ((EAGER_TRAINING_MAX_TOKENS + 1, True), (EAGER_FORWARD_MAX_TOKENS + 1, False)):
        with pass_attention(model, width, training):
            assert _attention_choices(model) == {"sdpa"}, (width, training)
    with pass_attention(model, EAGER_FORWARD_MAX_TOKENS, training=False):
        assert _attention_choices(model) == {GROUPED_QUERY_EAGER}


def test_pass_attention_reaches_the_copied_configs_of_an_encoder_decoder():
    model = load_model("t5-tiny-random").model
    stacks = (model.encoder.config, model.decoder.config)
    assert all(c is not model.config and c._attn_implementation == "sdpa" for c in stacks)
    with pass_attention(model, 8, training=True):
        assert _attention_choices(model) == {"eager"}
    assert _attention_choices(model) == {"sdpa"}


def test_pass_attention_leaves_a_chosen_implementation_alone():
    model, _, _ = _setup("lora")
    model.config._attn_implementation = "eager"
    with pass_attention(model, 8, training=True):
        pass
    assert _attention_choices(model) == {"eager"}


def test_eager_attention_gives_the_same_loss_and_gradients():
    model, items, pad = _setup("lora")
    batch = collate(items, "causal", pad)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    results = {}
    for name, attention in (("sdpa", nullcontext()), ("eager", pass_attention(model, 64, training=True))):
        with attention:
            loss = causal_target_loss(model, batch)
        loss.backward()
        results[name] = (float(loss.detach()), [p.grad.clone() for p in lora])
        model.zero_grad(set_to_none=True)
    assert abs(results["sdpa"][0] - results["eager"][0]) < 1e-5  # fp32: the same function, other kernels
    assert any(g.abs().sum() > 0 for g in results["sdpa"][1])
    for sdpa, eager in zip(results["sdpa"][1], results["eager"][1], strict=True):
        torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        default = causal_target_loss(model, batch)
        with pass_attention(model, 64, training=True):
            eager = causal_target_loss(model, batch)
    assert abs(float(default) - float(eager)) < 2e-2  # bf16 matmuls in eager; to bf16 rounding


@pytest.mark.parametrize("share_prefix", [False, True])
def test_grouped_query_eager_is_eager_attention_without_the_key_value_copies(share_prefix):
    model, items, pad = _setup("lora")
    assert model.config.num_attention_heads == 2 * model.config.num_key_value_heads  # grouped: 4 on 2
    batch = collate(items, "causal", pad)
    prefix = shared_prefix_length(batch) if share_prefix else 0
    assert prefix > 0 or not share_prefix  # with a prefix, keys outnumber the suffix pass's queries
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    results = {}
    for name in ("eager", GROUPED_QUERY_EAGER):
        model.config._attn_implementation_internal = name
        loss = causal_target_loss(model, batch, prefix=prefix)
        loss.backward()
        results[name] = (float(loss.detach()), [p.grad.clone() for p in lora])
        model.zero_grad(set_to_none=True)
        weights = model(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True).attentions
        results[name] += (weights[0],)
    model.config._attn_implementation_internal = "sdpa"
    (eager_loss, eager_grads, eager_weights), (loss, grads, weights) = results.values()
    assert loss == pytest.approx(eager_loss, rel=1e-6)
    assert any(g.abs().sum() > 0 for g in eager_grads)
    for mine, reference in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-7)
    assert weights.shape == eager_weights.shape == (len(items), 4, *batch["input_ids"].shape[1:] * 2)
    torch.testing.assert_close(weights, eager_weights)


def _gradients_and_losses(model_name: str, method: str, fuse: bool):
    from accelerate import Accelerator

    import peftbench.recipe.steps
    from peftbench.config import TrainConfig

    loaded = load_model(model_name)
    torch.manual_seed(0)
    model = apply_method(loaded.model, loaded.family, method).model
    model.eval()  # no dropout: the two plans must give the same numbers, not the same distribution
    data = load_task_data(get_task("synthetic_classification"), None, 32, 0, 32)
    items = encode(data.train[:14], loaded.tokenizer, loaded.family, 512, 128)
    group = [list(range(0, 4)), list(range(4, 8)), list(range(8, 12)), list(range(12, 14))]
    cfg = TrainConfig(batch_size=4, grad_accum=4, precision="fp32")
    speedups = plan_for(model, *(() if fuse else ("fused_passes",)))
    losses, tokens = peftbench.recipe.steps.accumulate(model, Accelerator(cpu=True), items, group, cfg, loaded.family,
                                                 loaded.tokenizer.pad_token_id, 1, speedups)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses, tokens, grads


def test_fused_passes_give_the_same_step_as_one_batch_at_a_time():
    from peftbench.recipe.batching import plan_passes

    items = encode(load_task_data(get_task("synthetic_classification"), None, 32, 0, 32).train[:14],
                   load_model("llama-tiny-random").tokenizer, "causal", 512, 128)
    group = [list(range(0, 4)), list(range(4, 8)), list(range(8, 12)), list(range(12, 14))]
    fused = plan_passes(items, group, "causal", 4, 1, fuse=True)
    assert len(fused) < len(group) and [s[0] for p in fused for s in p] == [0, 1, 2, 3]
    halved = plan_passes(items, group, "causal", 4, 2, fuse=True)  # halved micro-batches: never fused
    assert [(p, rows) for (p, rows, _), in halved] == [(0, [0, 1]), (0, [2, 3]), (1, [4, 5]), (1, [6, 7]),
                                                      (2, [8, 9]), (2, [10, 11]), (3, [12, 13])]
    targets = [sum(label != -100 for label in item.labels[1:]) for item in items]  # tokens each row is scored on
    for (position, rows, share), in halved:  # each piece weighs its share of its batch's target tokens
        assert share == pytest.approx(sum(targets[i] for i in rows) / sum(targets[i] for i in group[position]))
    for model_name, method in (("llama-tiny-random", "lora"), ("t5-tiny-random", "full")):
        one_losses, one_tokens, one_grads = _gradients_and_losses(model_name, method, False)
        fused_losses, fused_tokens, fused_grads = _gradients_and_losses(model_name, method, True)
        assert fused_tokens == one_tokens
        assert fused_losses == pytest.approx(one_losses, rel=1e-5)
        assert fused_grads.keys() == one_grads.keys()
        for name, grad in fused_grads.items():
            torch.testing.assert_close(grad, one_grads[name], rtol=1e-4, atol=1e-6)


def _loss_and_lora_grads(model, batch, prefix):
    loss = causal_target_loss(model, batch, prefix=prefix)
    loss.backward()
    grads = [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("share_prefix", [False, True])
def test_feed_forward_on_real_tokens_keeps_the_loss_and_gradients(share_prefix, monkeypatch):
    import peftbench.speedups.unpadded_feed_forward as unpadded_feed_forward

    model, items, pad = _setup("lora", n=8)
    batch = collate(items, "causal", pad)
    prefix = shared_prefix_length(batch) if share_prefix else 0
    assert (prefix > 0) == share_prefix
    real = batch["attention_mask"][:, prefix:].bool()
    assert not real.all()  # 2 % padding here: below the default threshold, so the test sets it to 0
    networks = feed_forward_networks(model)
    assert [type(n).__name__ for n in networks] == ["LlamaMLP", "LlamaMLP"]
    seen = []  # the input shape of the first block's down projection, per pass (a shared prefix's pass first)
    probe = networks[0].down_proj.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    monkeypatch.setattr(unpadded_feed_forward, "MIN_PADDING_SHARE", 0.0)
    unpadded = _loss_and_lora_grads(model, batch, prefix)
    unpadded_shape = seen[-1]
    monkeypatch.setattr(unpadded_feed_forward, "MIN_PADDING_SHARE", 2.0)  # never applies: the padded pass
    padded = _loss_and_lora_grads(model, batch, prefix)
    probe.remove()
    assert unpadded_shape[:-1] == (int(real.sum()),)  # (real tokens, features)
    assert seen[-1][:-1] == tuple(real.shape)  # (rows, width, features)
    assert abs(unpadded[0] - padded[0]) < 1e-5
    assert any(g.abs().sum() > 0 for g in padded[1])
    for a, b in zip(unpadded[1], padded[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not any(n._forward_pre_hooks or n._forward_hooks for n in networks)  # removed after the pass


def test_feed_forward_networks_come_from_the_role_map():
    assert len(feed_forward_networks(load_model("llama-tiny-random").model)) == 2
    assert feed_forward_networks(load_model("t5-tiny-random").model) == []  # no single per-token module named
