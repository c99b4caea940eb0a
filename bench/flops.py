"""Model FLOPs of a training step, and the GEMM peak they are divided by (model FLOPs utilisation).

The FLOPs counted are those a target-token loss *needs*, the same formula for both sides of a comparison:

- every linear layer of the body at every real (non-padding) token: 2·in·out forward, 2·in·out for the
  gradient of its input (backward), and 2·in·out more for the gradient of its weight when the weight
  trains. So a frozen base costs ≈ 4N per token and full tuning ≈ 6N (N: the body's linear weights).
- the output head (d × vocab) only at positions that predict a target token: the loss needs no other
  logits (a script that computes every position's logits does extra work that is not counted).
- attention scores and the weighted sum, 4·(heads·head_dim) per (query, key) pair forward and twice that
  backward: causal self-attention has t keys at position t, an encoder T, cross-attention T_encoder.
- seq2seq: encoder linears at encoder tokens, decoder linears at decoder tokens, except cross-attention's
  key/value projections, which run over the encoder's output for every decoder layer.

Embedding lookups, norms and activations are not counted (they are not FLOPs-bound). The result is a
lower bound on the work done, so MFU is never flattered. A run's recorded ``throughput.mfu``
(src/peftbench/recipe/peak.py) counts per token the same linears, by the same rule (``linear_train_flops``),
without the head and the attention scores, against the peak measured at the model's own shapes
(bench/gemm_peak.py prints it); ``gemm_peak`` here is the square-matrix peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from peftbench.recipe.peak import linear_train_flops

_CROSS_KV = ("EncDecAttention.k", "EncDecAttention.v", "encoder_attn.k_proj", "encoder_attn.v_proj")


@dataclass
class LinearCosts:
    """FLOPs per token of each part of the model, forward + backward (see the module docstring)."""

    encoder: float = 0.0
    """Per encoder token (causal models: per token)."""
    decoder: float = 0.0
    """Per decoder token (seq2seq only)."""
    cross_kv: float = 0.0
    """Per encoder token, cross-attention key/value projections of all decoder layers."""
    head: float = 0.0
    """Per target position."""
    attention_width: int = 0
    """heads × head_dim of one attention layer."""
    layers: int = 0
    decoder_layers: int = 0


def linear_costs(model: nn.Module) -> LinearCosts:
    config = model.config
    inner = getattr(model, "get_base_model", lambda: model)()
    head = inner.get_output_embeddings()
    any_trainable = any(p.requires_grad for p in model.parameters())
    costs = LinearCosts()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        flops = linear_train_flops(module, any_trainable)
        if module is head:
            costs.head += flops
        elif any(part in name for part in _CROSS_KV):
            costs.cross_kv += flops
        elif ".decoder." in f".{name}.":
            costs.decoder += flops
        else:
            costs.encoder += flops
    if getattr(config, "is_encoder_decoder", False):  # T5 / BART
        heads = getattr(config, "num_heads", None) or config.encoder_attention_heads
        head_dim = getattr(config, "d_kv", None) or config.d_model // heads
        costs.layers = config.num_layers if hasattr(config, "num_layers") else config.encoder_layers
        costs.decoder_layers = getattr(config, "num_decoder_layers", None) or config.decoder_layers
    else:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        costs.layers = config.num_hidden_layers
    costs.attention_width = heads * head_dim
    return costs


def attention_pair_flops(costs: LinearCosts) -> float:
    """FLOPs per (query, key) pair of one attention layer: forward 4·width, backward 8·width."""
    return 3 * 4.0 * costs.attention_width


def example_flops(costs: LinearCosts, source_tokens: int, target_tokens: int, decoder_tokens: int = 0) -> float:
    """Training FLOPs of one example. Causal: ``source_tokens`` is the whole sequence (prompt + target),
    ``target_tokens`` the positions scored. Seq2seq: encoder and decoder lengths; every decoder token is scored."""
    pair = attention_pair_flops(costs)
    if decoder_tokens == 0:  # causal
        causal_pairs = source_tokens * (source_tokens + 1) / 2
        return (costs.encoder * source_tokens + costs.head * target_tokens
                + pair * costs.layers * causal_pairs)
    attention = (costs.layers * source_tokens ** 2
                 + costs.decoder_layers * (decoder_tokens * (decoder_tokens + 1) / 2 + decoder_tokens * source_tokens))
    return (costs.encoder * source_tokens + costs.cross_kv * source_tokens + costs.decoder * decoder_tokens
            + costs.head * decoder_tokens + pair * attention)


def gemm_peak(device: str, dtype: torch.dtype, sizes: tuple[int, ...], seconds: float = 1.5) -> dict:
    """Best sustained FLOP/s of square ``n × n`` matmuls in ``dtype`` on ``device`` (same threads as the runs)."""
    best = {"flops_per_s": 0.0, "n": None}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for _ in range(2):  # warm-up: kernel selection, page faults
            a @ b
        _sync(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        _sync(device)
        rate = 2.0 * n ** 3 * count / (time.perf_counter() - started)
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "n": n}
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_sizes(device: str) -> tuple[int, ...]:
    return (4096, 8192, 16384) if device.startswith("cuda") else (1024, 2048, 3072)


if __name__ == "__main__":  # python bench/flops.py cpu|cuda [--quick]: the peaks as JSON (compare_trainer.py)
    import json
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    # --quick (compare_trainer.py --quick, a smoke test): one small size for 0.2 s, a rough peak in ~1 s
    quick = "--quick" in sys.argv[2:]
    sizes, seconds = ((512,), 0.2) if quick else (gemm_sizes(target), 1.5)
    print(json.dumps({"threads": torch.get_num_threads(), "quick": quick,
                      "fp32": gemm_peak(target, torch.float32, sizes, seconds),
                      "bf16": gemm_peak(target, torch.bfloat16, sizes, seconds)}))
