"""The contract every registered method keeps, on both tiny model families.

After one optimiser step only the parameters the method declares trainable have changed; their count is
exact (computed by hand below from the tiny configs); and the loss on a repeated batch goes down.
"""

from __future__ import annotations

import pytest
import torch

from peftbench.catalog.methods import METHODS, apply_method, get_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks.data import Example
from peftbench.recipe.batching import collate, encode

pytestmark = pytest.mark.integration

# Tiny T5 (models.tiny_t5_config): d_model 32, inner attention dim 4 heads × 8 = 32, d_ff 64, gated
# (wi_0, wi_1, wo), 2 encoder + 2 decoder blocks → 6 attention blocks (2 enc self, 2 dec self, 2 cross),
# 4 feed-forwards; vocabulary 384; transformers ties lm_head to the shared embedding.
T5_ATTENTION_BLOCKS, T5_FF = 6, 4
T5_TOTAL = (
    384 * 32  # shared embedding (= lm_head)
    + 2 * (4 * 32 * 32 + 32 + 2 * 64 * 32 + 32 * 64 + 32) + 32 * 4 + 32  # encoder blocks, rel. bias, final norm
    + 2 * (8 * 32 * 32 + 2 * 32 + 2 * 64 * 32 + 32 * 64 + 32) + 32 * 4 + 32  # decoder blocks, rel. bias, norm
)
# Tiny Llama (models.tiny_llama_config): hidden 32, 4 heads of 8, 2 KV heads → k/v project to 16,
# intermediate 64, 2 blocks, vocabulary 384, tied embeddings.
LLAMA_TOTAL = 384 * 32 + 2 * (32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 64 * 32 + 2 * 32) + 32

EXPECTED_TRAINABLE = {
    "t5-tiny-random": {
        "full": T5_TOTAL,
        "lora": T5_ATTENTION_BLOCKS * 4 * 3 * (32 + 32),  # rank 3 on q, k, v, o: r × (in + out) each
        "ia3": T5_ATTENTION_BLOCKS * 4 * 32 + T5_FF * (64 + 32),  # outputs of q,k,v,o and wi_1, wo
        "prompt": 100 * 32,  # 100 virtual tokens × d_model, encoder side only
        "bitfit": T5_ATTENTION_BLOCKS * 4 * 32 + T5_FF * (64 + 64 + 32),  # a bias per attention/FF linear
        # AdaLoRA, init_r 12 on q, k, v, o: P (r × in), Q (out × r) and the r singular values each.
        "adalora": T5_ATTENTION_BLOCKS * 4 * (12 * 32 + 32 * 12 + 12),
    },
    "llama-tiny-random": {
        "full": LLAMA_TOTAL,
        "lora": 2 * 3 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32)),  # q, k, v, o with GQA k/v
        "ia3": 2 * ((32 + 16 + 16 + 32) + (64 + 32)),  # q,k,v,o outputs + up_proj, down_proj outputs
        "prompt": 100 * 32,
        "bitfit": 2 * ((32 + 16 + 16 + 32) + (64 + 64 + 32)),
        "adalora": 2 * (2 * (12 * 32 + 32 * 12 + 12) + 2 * (12 * 32 + 16 * 12 + 12)),
    },
}


def _batch(loaded) -> dict[str, torch.Tensor]:
    examples = [Example(f"t:{i}", f"Topic of text number {i}:", word, (word,))
                for i, word in enumerate(["sports", "food", "tech", "food"])]
    encoded = encode(examples, loaded.tokenizer, loaded.family, max_source=64, max_target=16)
    return collate(encoded, loaded.family, loaded.tokenizer.pad_token_id)


def test_the_paper_methods_are_registered():
    assert set(METHODS.names()) >= {"full", "lora", "ia3", "prompt", "bitfit"}


@pytest.mark.parametrize("model_name", sorted(EXPECTED_TRAINABLE))
@pytest.mark.parametrize("method", [name for name in METHODS.names() if not METHODS.get(name).is_reference])
def test_method_contract(model_name, method):
    torch.manual_seed(0)
    loaded = load_model(model_name)
    applied = apply_method(loaded.model, loaded.family, method)
    model, trainable = applied.model, applied.trainable

    assert sum(p.numel() for p in trainable.values()) == EXPECTED_TRAINABLE[model_name][method]
    requires_grad = {name for name, p in model.named_parameters() if p.requires_grad}
    assert requires_grad == set(trainable), "requires_grad must be exactly the declared set"

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # The method family's own peak learning rate (paper §A.3); eval mode so dropout adds no noise.
    optimizer = torch.optim.AdamW(trainable.values(), lr=get_method(method).lr.peak)
    batch = _batch(loaded)
    model.eval()
    losses = []
    for _ in range(5):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed <= set(trainable), f"undeclared parameters changed: {sorted(changed - set(trainable))[:3]}"
    assert changed, "no declared parameter changed"
    assert losses[-1] < losses[0], f"loss did not go down on a repeated batch: {losses}"


def test_any_peft_method_by_name_reaches_peft():
    loaded = load_model("t5-tiny-random")
    applied = apply_method(loaded.model, loaded.family, "loha", {"r": 2})
    # LoHa on q, k, v, o of 6 attention blocks: two Hadamard factors, each a rank-2 pair (out × r) and
    # (r × in) → 2 × r × (in + out) per module.
    assert sum(p.numel() for p in applied.trainable.values()) == 6 * 4 * 2 * 2 * (32 + 32)


def test_lora_rank_is_a_setting():
    loaded = load_model("t5-tiny-random")
    applied = apply_method(loaded.model, loaded.family, "lora", {"r": 2})
    assert sum(p.numel() for p in applied.trainable.values()) == 6 * 4 * 2 * (32 + 32)
