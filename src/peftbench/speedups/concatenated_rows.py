"""A causal pass over the real tokens of a right-padded batch only: its rows concatenated into one sequence.

A right-padded batch spends the same work on a padded position as on a token: in SmolLM2 LoRA training on
CoLA, the pass after the shared prefix is 64 rows × 17 positions holding 869 real tokens, so a fifth of
every projection, norm, rotary embedding and residual add is spent on padding. Here the decoder stack runs
on ``[1, tokens]`` instead: the embeddings, norms, projections with their adapters, rotary embeddings
(each token at its own position) and the feed-forward networks see the real tokens only. Attention alone
needs the rows: in each layer, ``concatenated_attention`` scatters the queries, keys and values to the padded
``[rows, heads, width, dim]`` layout, computes ``eager_attention.grouped_attention`` there with the pass's causal
and padding mask (and a shared prefix's keys and values, computed once for all rows), and gathers the
real tokens' outputs back. Every real token gets the value it had in the padded pass, so the loss and
the gradients are the same up to floating-point reordering (tests/test_concatenated_rows.py). It replaces the
feed-forward-only unpadding (unpadded_feed_forward.py) where it applies; its gain: bench/RESULTS.md.

Applied where the pass would run ``eager_attention.GROUPED_QUERY_EAGER`` (CPU, a width where eager attention pays,
the Llama family's attention), with at least ``MIN_PADDING_SHARE`` padding, to models that
``shared_prompt_prefix.supports_prefix_sharing`` admits (causal, no prompt learning, no dropout in training: a dropout
mask drawn over another layout would give other draws), without activation checkpointing (whose
recomputation would run attention after the pass). Other passes run padded.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, DynamicCache

from peftbench.speedups.eager_attention import GROUPED_QUERY_EAGER, attention_configs, grouped_attention
from peftbench.speedups.shared_prompt_prefix import body_of, supports_prefix_sharing

CONCATENATED_ATTENTION = "peftbench_concatenated_attention"
"""The name ``concatenated_attention`` is registered under (with no mask function: the layout carries the mask)."""
MIN_PADDING_SHARE = 0.05
"""Share of padded positions below which a pass runs padded (the per-layer scatters would cost more than
the padding they skip)."""


@dataclass(frozen=True)
class _Layout:
    """Where the concatenated tokens sit in the padded pass."""

    rows: torch.Tensor  # [tokens] row of each real token, row-major
    columns: torch.Tensor  # [tokens] its column after the shared prefix
    mask: torch.Tensor  # [rows, 1, width, prefix + width] additive: 0 where a query may attend, else the minimum


_LAYOUT: ContextVar[_Layout] = ContextVar("peftbench_concatenated_layout")


class _ToPadded(torch.autograd.Function):
    """[tokens, heads, dim] → [rows, heads, width, dim], zeros where a row is padded."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, n_rows: int, width: int):
        ctx.save_for_backward(rows, columns)
        padded = tokens.new_zeros(n_rows, tokens.shape[1], width, tokens.shape[2])
        padded[rows, :, columns] = tokens
        return padded

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, columns = ctx.saved_tensors
        return grad[rows, :, columns], None, None, None, None


class _ToConcatenated(torch.autograd.Function):
    """[rows, heads, width, dim] → [tokens, heads, dim]; the inverse of ``_ToPadded`` (each position is
    gathered once, so the backward writes, rather than accumulates, the gradients)."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor):
        ctx.save_for_backward(rows, columns)
        ctx.padded_shape = padded.shape
        return padded[rows, :, columns]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, columns = ctx.saved_tensors
        padded = grad.new_zeros(ctx.padded_shape)
        padded[rows, :, columns] = grad
        return padded, None, None


def concatenated_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """transformers' attention signature for a concatenated pass: query [1, heads, tokens, dim]; key and value
    [1, kv_heads, prefix + tokens, dim] (a shared prefix's cached keys first); ``attention_mask`` is None
    (the pass's layout carries the mask). Returns the output [1, tokens, heads, dim] and no probabilities."""
    layout = _LAYOUT.get(None)
    if layout is None:
        raise RuntimeError(f"{CONCATENATED_ATTENTION} runs only inside concatenated_rows.forward_concatenated, which sets its layout")
    n_rows, width = layout.mask.shape[0], layout.mask.shape[2]
    prefix = key.shape[2] - query.shape[2]

    def padded(states: torch.Tensor) -> torch.Tensor:  # [1, h, tokens, dim] → [rows, h, width, dim]
        return _ToPadded.apply(states[0].transpose(0, 1), layout.rows, layout.columns, n_rows, width)

    key_rows, value_rows = padded(key[:, :, prefix:]), padded(value[:, :, prefix:])
    if prefix:  # the prefix's keys and values, the same for every row (the expand's backward sums the rows)
        key_rows = torch.cat([key[:, :, :prefix].expand(n_rows, -1, -1, -1), key_rows], dim=2)
        value_rows = torch.cat([value[:, :, :prefix].expand(n_rows, -1, -1, -1), value_rows], dim=2)
    output, _ = grouped_attention(module, padded(query), key_rows, value_rows, layout.mask, scaling, dropout)
    return _ToConcatenated.apply(output, layout.rows, layout.columns).unsqueeze(0), None


AttentionInterface.register(CONCATENATED_ATTENTION, concatenated_attention)


def concatenates_rows(model: nn.Module, real: torch.Tensor) -> bool:
    """Whether a pass of ``model`` whose real tokens ``real`` ([rows, width] bool) marks runs as one concatenated sequence."""
    if real.numel() == 0 or not supports_prefix_sharing(model):
        return False
    if not attention_configs(model, GROUPED_QUERY_EAGER):  # eager_attention.pass_attention chose another kernel
        return False
    if _recomputes_activations(body_of(model)):  # the backward would rerun attention after the pass's layout
        return False
    return 1 - real.float().mean().item() >= MIN_PADDING_SHARE


def _recomputes_activations(body: nn.Module) -> bool:
    """Whether a training pass of the decoder stack ``body`` recomputes its layers in the backward
    (transformers' activation checkpointing sets each layer's flag)."""
    return body.training and any(getattr(layer, "gradient_checkpointing", False)
                                 for layer in getattr(body, "layers", ()))


def forward_concatenated(model: nn.Module, inputs: dict[str, torch.Tensor], prefix: int):
    """``model``'s output (under ``concatenates_rows``) for ``inputs`` (input_ids, attention_mask; right-padded)
    after their first ``prefix`` tokens, whose keys and values are computed once, from row 0. The output
    covers the real tokens after the prefix, as one row in row-major order: logits [1, tokens, vocab]."""
    ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    real = attention_mask[:, prefix:].bool()
    rows, columns = real.nonzero(as_tuple=True)
    body, cache = body_of(model), None
    if prefix:  # the prefix's keys and values, from row 0 once: the concatenated pass has one row
        cache = DynamicCache(config=body.config)
        body(input_ids=ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix], cache=cache, use_cache=True)
    layout = _Layout(rows, columns, _additive_mask(real, prefix, body.get_input_embeddings().weight.dtype))
    with _concatenated_attention(model, layout):
        return model(input_ids=ids[:, prefix:][real].unsqueeze(0), position_ids=(prefix + columns).unsqueeze(0),
                     cache=cache, use_cache=cache is not None)


def _additive_mask(real: torch.Tensor, prefix: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, 1, width, prefix + width]: each query sees the prefix, and the real tokens of its row up to
    itself; in ``dtype``, as transformers' eager mask (the model's embedding dtype) is."""
    n_rows, width = real.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
    allowed = torch.cat([real.new_ones(n_rows, width, prefix), causal & real[:, None, :]], dim=2)
    mask = torch.zeros(n_rows, 1, width, prefix + width, dtype=dtype, device=real.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


@contextmanager
def _concatenated_attention(model: nn.Module, layout: _Layout):
    configs = attention_configs(model, GROUPED_QUERY_EAGER)
    token = _LAYOUT.set(layout)
    for config in configs:
        config._attn_implementation_internal = CONCATENATED_ATTENTION
    try:
        yield
    finally:
        for config in configs:
            config._attn_implementation_internal = GROUPED_QUERY_EAGER
        _LAYOUT.reset(token)

