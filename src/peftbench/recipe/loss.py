"""The forward pass and its loss: fp32 cross-entropy of a batch's target tokens.

The training step, the validation loss and rank classification all score target tokens here, through the
run's speed-up plan (``speedups.forward.target_logits``), so the three measure the same function. A
causal model's target is the answer after the prompt (labels are -100 elsewhere); a seq2seq model's, the
decoder labels; an encoder classifier's, one class per row, scored by its head's logits.
"""

from __future__ import annotations

import torch

from peftbench.speedups import SpeedupPlan
from peftbench.speedups.forward import target_logits


def target_token_losses(model, batch: dict[str, torch.Tensor], speedups: SpeedupPlan
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (fp32) of every target token of ``batch`` (host tensors from ``batching.collate``) and
    the batch row each one belongs to, in row-major order."""
    if speedups.family == "encoder":  # the classification head's cross-entropy: one target per row
        inputs = {k: batch[k].to(speedups.device) for k in ("input_ids", "attention_mask")}
        logits, targets = model(**inputs).logits, batch["labels"][:, 0].to(speedups.device)
        rows = torch.arange(len(targets), device=logits.device)
    else:
        logits, targets, rows = target_logits(speedups, model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none"), rows


def target_loss(model, batch: dict[str, torch.Tensor], speedups: SpeedupPlan, reduction: str = "mean"
                ) -> torch.Tensor:
    """The batch's loss over all its target tokens: their mean (the model's own ``labels=`` loss) or sum."""
    losses, _ = target_token_losses(model, batch, speedups)
    return losses.mean() if reduction == "mean" else losses.sum()


def segment_losses(model, batch: dict[str, torch.Tensor], segments: list[tuple[int, list[int], int]],
                   speedups: SpeedupPlan) -> torch.Tensor:
    """The mean loss over the target tokens of each segment of a pass (``batching.plan_passes``: a segment is
    (batch position, rows, pieces), its rows consecutive in ``batch``)."""
    losses, rows = target_token_losses(model, batch, speedups)
    owner = torch.tensor([s for s, (_, piece, _) in enumerate(segments) for _ in piece], device=losses.device)
    segment = owner[rows]
    sums = torch.zeros(len(segments), device=losses.device).index_add_(0, segment, losses)
    return sums / torch.bincount(segment, minlength=len(segments))
