"""One forward pass to the logits of a batch's target tokens, with the levers the plan applies.

With every lever off this is the plain transformers pass: ``model(input_ids, attention_mask)`` (seq2seq: with
the decoder inputs shifted from the labels), then the logits at the positions that predict a target token.
The levers change how the pass runs, never which logits come back: compiled layers, eager attention and bits
dropout around it; a shared prompt prefix run once; a causal batch's real tokens as one concatenated sequence, or its
feed-forward networks on the real tokens only; the LM head at the target positions only.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from torch import nn

from peftbench.constants import IGNORE
from peftbench.speedups.bits_dropout import cpu_dropout
from peftbench.speedups.compiled_layers import compiled_passes
from peftbench.speedups.concatenated_rows import concatenates_rows, forward_concatenated
from peftbench.speedups.eager_attention import pass_attention
from peftbench.speedups.plan import SpeedupPlan
from peftbench.speedups.shared_prompt_prefix import forward_with_shared_prefix
from peftbench.speedups.unpadded_feed_forward import feed_forward_on_real_tokens

Tensor = torch.Tensor


def target_logits(plan: SpeedupPlan, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """For ``batch`` (host tensors from ``batching.collate``; moved to ``plan.device`` here): the logits of
    every target token's prediction [targets, vocab], the target ids [targets] and each one's batch row
    [targets], in row-major order. ``model.training`` tells a training pass from a forward-only one."""
    with ExitStack() as stack:
        if plan.applies("compiled_layers"):
            stack.enter_context(compiled_passes())
        if plan.applies("eager_attention"):
            stack.enter_context(pass_attention(model, batch["input_ids"].shape[1], training=model.training))
        if model.training and plan.applies("bits_dropout"):
            stack.enter_context(cpu_dropout())
        if plan.family == "seq2seq":
            return _seq2seq_target_logits(model, {k: v.to(plan.device) for k, v in batch.items()})
        return _causal_target_logits(plan, model, batch)


def _seq2seq_target_logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    labels, inputs = batch["labels"], dict(batch, use_cache=False)  # the decoder decodes nothing: no KV cache
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:  # the decoder inputs without the model's own (here unused) loss over every logit
        inputs["decoder_input_ids"] = prepare(labels=labels)
        del inputs["labels"]
    mask = labels != IGNORE
    return model(**inputs).logits[mask], labels[mask], mask.nonzero()[:, 0]


def _causal_target_logits(plan: SpeedupPlan, model: nn.Module,
                          batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Position t predicts token t + 1. A prefix every row shares (``plan.prefix_length``, found on the host
    copy: no device synchronisation) predicts no target, so its logits are never needed."""
    prefix = plan.prefix_length(model, batch)
    real_host = batch["attention_mask"][:, prefix:].bool()  # the tokens after the prefix (which has no padding)
    concatenated = plan.applies("concatenated_rows") and concatenates_rows(model, real_host)
    labels = batch["labels"].to(plan.device)
    inputs = {name: batch[name].to(plan.device) for name in ("input_ids", "attention_mask")}
    inputs["use_cache"] = False  # no KV cache for a pass that decodes nothing (it copies every layer's keys)
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    keep = targets != IGNORE
    real = real_host.to(plan.device)
    if concatenated:  # the rows' real tokens as one sequence; each target follows a real token
        wanted = keep[:, prefix:][real].unsqueeze(0)
        logits = _logits_at(model, wanted, plan.applies("lm_head_on_targets"),
                            lambda: forward_concatenated(model, inputs, prefix))
    else:
        unpadded = plan.applies("unpadded_feed_forward")
        with feed_forward_on_real_tokens(model, real) if unpadded else nullcontext():
            logits = _logits_at(model, keep[:, prefix:], plan.applies("lm_head_on_targets"),
                                lambda: forward_with_shared_prefix(model, inputs, prefix) if prefix
                                else model(**inputs))
    return logits, targets[keep], keep.nonzero()[:, 0]


def _logits_at(model: nn.Module, wanted: Tensor, trim_head: bool, forward: Callable) -> Tensor:
    """The logits of ``forward()``'s output at the positions ``wanted`` ([rows, width] bool, aligned with
    the output's last positions: prompt tuning's prepended virtual tokens are skipped), row-major:
    [wanted.sum(), vocab]. ``trim_head``: the output layer runs at those positions only."""
    if trim_head and _output_layer(model) is not None:
        with logits_only_where(model, wanted):
            return forward().logits[0]
    logits = forward().logits
    return logits[:, logits.shape[1] - wanted.shape[1]:][wanted]


def _output_layer(model: nn.Module) -> nn.Module | None:
    inner = getattr(model, "module", model)  # DistributedDataParallel keeps the model as .module
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


@contextmanager
def logits_only_where(model: nn.Module, keep: Tensor):
    """While active, the output layer sees only the hidden states where ``keep`` ([batch, seq], bool) is True,
    so the model's logits come back as ``[1, keep.sum(), vocab]`` in row-major order of ``keep``.

    ``keep`` aligns with the last positions: prompt tuning's prepended virtual tokens are skipped. The LM
    head is a fifth of SmolLM2's FLOPs (49,152-way), and CoLA's answer is 2-3 of ~30 tokens.
    """
    def select(module, args):
        hidden = args[0]
        return (hidden[:, hidden.shape[1] - keep.shape[1]:][keep].unsqueeze(0), *args[1:])

    handle = _output_layer(model).register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()
