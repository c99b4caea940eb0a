"""Attention kernel choices that the defaults get wrong for small benchmark batches on CPU (bench/RESULTS.md).

transformers runs attention through PyTorch's scaled-dot-product attention ("sdpa") by default, and on CPU
SDPA picks its flash kernel, which is built for long sequences: on SmolLM2 LoRA training passes of up to
~300 tokens its backward is the slow part. SDPA's
other CPU kernel ("math") upcasts bf16 inputs to fp32 and runs both batched matmuls there. transformers'
own "eager" attention, under bf16 autocast, runs the two matmuls in bf16 (fp32 accumulation) and the
softmax in fp32, the way these models computed attention before SDPA: faster than either SDPA kernel on
short training passes and on forward-only (validation) passes of up to several hundred tokens. Longer
training passes keep flash, whose blocking pays off there, and so does decoding with the key/value cache
(a one-token query: eager is slower). The thresholds and the measurements behind them: bench/RESULTS.md. GPUs keep their defaults (the speed-up plan applies this on CPU only).

Those limits were measured on a CPU without AMX (AMD EPYC, AVX-512 BF16). On a CPU with AMX, the flash
kernel's forward multiplies through AMX tiles with key and value packed for them once both lengths reach 64
tokens (PyTorch's FlashAttentionKernel.cpp, ``need_pack``; with few threads), a path eager's batched
matmuls lack, so there forward-only passes from ``AMX_FLASH_FORWARD_MIN_TOKENS`` keep flash (the limit stays
at the non-AMX one until measured). Its backward has
no such path: training passes keep the limit above on every CPU (bench/RESULTS.md: to re-measure).

The choice is ``config._attn_implementation`` of the model's modules (an encoder-decoder's stacks hold
copies of the config), switched for the pass only; the backward uses whatever its forward ran (peftbench
does not recompute activations in the backward). Configs whose implementation is not "sdpa" (a user's
"flash_attention_2", a model without SDPA support) are left as they are.

For architectures with grouped-query attention whose eager attention is transformers' standard one (the
``eager_attention_forward`` of the Llama modeling file, copied unchanged into Mistral's, Qwen2's and
Qwen3's), the pass runs ``grouped_query_eager`` instead, registered with transformers' ``AttentionInterface``:
the same arithmetic, but each key/value head meets its group of query heads in one batched matmul rather
than being copied once per query head (``repeat_kv``), whose backward sums the copies again; the loss is the
same (SmolLM2: 9 query heads on 3 key/value heads; its gain: bench/RESULTS.md).
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from peftbench.speedups.cpu import instruction_set

EAGER_TRAINING_MAX_TOKENS = 320
"""Widest training pass (padded tokens per row) that runs eager attention on CPU; wider ones keep flash."""
EAGER_FORWARD_MAX_TOKENS = 600
"""Widest forward-only pass (validation loss) that runs eager attention on a CPU without AMX."""
AMX_FLASH_FORWARD_MIN_TOKENS = EAGER_FORWARD_MAX_TOKENS + 1
"""Narrowest forward-only pass that keeps SDPA's flash kernel on a CPU with AMX (its packed AMX forward). The
same limit as without AMX until it is measured on an idle AMX machine (bench/RESULTS.md): 64 is where the
kernel starts to pack, and a change of limit changes the validation loss's rounding, so early stopping too."""
GROUPED_QUERY_EAGER = "peftbench_grouped_query_eager"
"""The name ``grouped_query_eager`` is registered under (with eager attention's additive float mask)."""
GROUPED_QUERY_EAGER_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Architectures whose eager attention ``grouped_query_eager`` computes: transformers 5's
``eager_attention_forward`` of modeling_llama.py, identical in these models' modeling files."""


def eager_attention_pays(width: int, training: bool, cpu: str | None = None) -> bool:
    """Whether a CPU pass of ``width`` tokens per row runs faster with eager attention; ``cpu``: the matrix
    instruction set (``speedups.cpu.instruction_set``), this CPU's when None."""
    if training:
        return width <= EAGER_TRAINING_MAX_TOKENS
    amx = (cpu or _this_cpu()) == "amx-bf16"
    return width < AMX_FLASH_FORWARD_MIN_TOKENS if amx else width <= EAGER_FORWARD_MAX_TOKENS


@functools.cache
def _this_cpu() -> str:
    return instruction_set()  # reads /proc/cpuinfo: once per process


@contextmanager
def pass_attention(model: nn.Module, width: int, training: bool):
    """Around one CPU forward pass of ``model`` (a transformers model, PEFT-wrapped or not): eager attention
    where ``eager_attention_pays``, the model's own choice otherwise. ``width``: the batch's ``input_ids``
    width (prompt tuning's virtual tokens come on top)."""
    switched = attention_configs(model, "sdpa") if eager_attention_pays(width, training) else []
    for config in switched:  # the internal field, as set_attn_implementation does: no recursion into sub-configs
        grouped = config.model_type in GROUPED_QUERY_EAGER_MODEL_TYPES
        config._attn_implementation_internal = GROUPED_QUERY_EAGER if grouped else "eager"
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation_internal = "sdpa"


def attention_configs(model: nn.Module, implementation: str) -> list[PretrainedConfig]:
    """The distinct configs of ``model``'s modules that select attention ``implementation`` now."""
    return [c for c in _module_configs(model) if c._attn_implementation == implementation]


def _module_configs(model: nn.Module) -> list[PretrainedConfig]:
    """The distinct configs that ``model``'s modules hold, found once per model: a walk over SmolLM2's
    modules takes about 4 ms, and every training pass asks. Adapters injected later add no config."""
    configs = _CONFIGS.get(model)
    if configs is None:
        found = {id(c): c for module in model.modules()
                 if isinstance(c := getattr(module, "config", None), PretrainedConfig)}
        configs = _CONFIGS[model] = list(found.values())
    return configs


_CONFIGS: weakref.WeakKeyDictionary[nn.Module, list[PretrainedConfig]] = weakref.WeakKeyDictionary()


def grouped_query_eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Eager attention with each key/value head shared by its group of query heads without copies.

    query [batch, heads, q, dim]; key, value [batch, kv_heads, k, dim] (heads = kv_heads × groups, query
    head h uses key/value head h // groups, as ``repeat_kv`` pairs them); attention_mask additive,
    [batch, 1 or heads, q, k]. Returns the output [batch, q, heads, dim] and the probabilities
    [batch, heads, q, k], as transformers' eager attention does.
    """
    output, probabilities = grouped_attention(module, query, key, value, attention_mask, scaling, dropout)
    return output.transpose(1, 2).contiguous(), probabilities


def grouped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0):
    """``grouped_query_eager``'s arithmetic; returns the output [batch, heads, q, dim] and the probabilities."""
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # [batch, kv_heads, groups × q, dim] @ [batch, kv_heads, dim, k]: one matmul per key/value head
    scores = torch.matmul(query.reshape(batch, kv_heads, groups * q_len, dim), key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :k_len]
        mask = mask.view(batch, kv_heads, groups, q_len, k_len) if mask.shape[1] == heads else mask[:, :, None]
        scores = (scores.view(batch, kv_heads, groups, q_len, k_len) + mask).view(batch, kv_heads, groups * q_len, k_len)
    probabilities = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probabilities = nn.functional.dropout(probabilities, p=dropout, training=module.training)
    output = torch.matmul(probabilities, value).view(batch, heads, q_len, dim)
    return output, probabilities.view(batch, heads, q_len, k_len)


AttentionInterface.register(GROUPED_QUERY_EAGER, grouped_query_eager)
AttentionMaskInterface.register(GROUPED_QUERY_EAGER, eager_mask)
