"""Feed-forward networks run on a pass's real tokens only, not on its padding.

A right-padded batch spends the same matrix work on a padded position as on a token. In SmolLM2 LoRA
training on CoLA, the suffix pass after the shared prefix is 64 rows × 17 positions holding 869 real
tokens: a fifth of it is padding. A decoder block's feed-forward network (gate, up and down projections:
three quarters of its linear FLOPs) maps each token's hidden state alone. Gathering the real tokens into
one (tokens, features) matrix, running the network there and scattering its output back gives every real
token the value it had; padded positions get zeros, which no real token reads (attention masks padded
keys, and the loss and the LM head skip them). So the loss and the gradients are the same, up to
floating-point reordering (its gain: bench/RESULTS.md). The attention projections are left padded: their
gathers cost about what they save.

Applied to CPU passes with at least ``MIN_PADDING_SHARE`` padding, for architectures whose role map names
the feed-forward module (methods/roles.py), where ``concatenated_rows`` does not run the whole pass as one
sequence (it does for the Llama family's eager passes; the feed-forward networks then see no padded hidden
states and this does nothing). GPUs keep the padded pass (not measured there).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from peftbench.catalog.methods.roles import feed_forward_networks

MIN_PADDING_SHARE = 0.05
"""Share of padded positions below which a pass runs padded (the gathers would cost more than they save)."""


@contextmanager
def feed_forward_on_real_tokens(model: nn.Module, real: torch.Tensor):
    """While active, the feed-forward networks of ``model`` run only on the positions that ``real``
    ([rows, width], bool) marks, for hidden states of that [rows, width] shape; hidden states of any other
    shape (a shared prefix's own pass, prompt tuning's virtual tokens) go through as they are."""
    networks = feed_forward_networks(model)
    if not networks or real.numel() == 0 or 1 - real.float().mean().item() < MIN_PADDING_SHARE:
        yield
        return
    positions = real.reshape(-1).nonzero().squeeze(1)
    padded_shapes: dict[nn.Module, torch.Size] = {}

    def gather(module, args):
        hidden = args[0]
        if hidden.shape[:2] != real.shape:
            return None
        padded_shapes[module] = hidden.shape
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions),)

    def scatter(module, args, output):
        shape = padded_shapes.pop(module, None)
        if shape is None:
            return None
        padded = output.new_zeros(shape[0] * shape[1], output.shape[-1])
        return padded.index_copy(0, positions, output).reshape(shape[0], shape[1], -1)

    handles = [hook for network in networks
               for hook in (network.register_forward_pre_hook(gather), network.register_forward_hook(scatter))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
