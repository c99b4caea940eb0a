"""Speed-ups behind one seam: levers that make a run faster without changing what it computes.

``resolve(config.speedups)`` starts a run's ``SpeedupPlan`` (before the model loads);
``plan.apply_to_model`` applies the model-level levers and decides the rest, once per run, with every
device check; ``plan.record()`` is the result's ``speedups`` entry. The loss (``peftbench/recipe/loss.py``) runs
its forward through ``forward.target_logits``; with every lever off (``speedups=none``) that is the plain
transformers pass. The levers, one module each (their measured gains: ``config.SpeedupsConfig``):

- ``freed_memory``: glibc keeps freed memory in the process (``keep_freed_memory``)
- ``bf16_frozen_weights``: frozen linears stored in bf16 once (``frozen_weights_bf16``)
- ``onednn_weights``: frozen bf16 linears in oneDNN's prepacked layout (``onednn_blocked_weights``)
- ``forward.logits_only_where``: the LM head at target positions only (``lm_head_on_targets``)
- ``shared_prompt_prefix``: the instruction every row shares runs once (``shared_prompt_prefix``)
- ``eager_attention``: eager / grouped-query attention for short CPU passes (``eager_attention``)
- ``concatenated_rows``: a batch's real tokens as one sequence (``concatenated_rows``)
- ``unpadded_feed_forward``: feed-forward networks on real tokens only (``unpadded_feed_forward``)
- ``compiled_layers``: the repeated blocks compiled by ``torch.compile`` (``compiled_layers``)
- ``bits_dropout``: dropout masks from 16 random bits (``bits_dropout``)
- fused passes (``batching.plan_passes``) and fused AdamW, which the plan only switches.
"""

from peftbench.speedups.plan import APPLIED, NOT_APPLICABLE, OFF, LeverStatus, SpeedupPlan, for_model, resolve

__all__ = ["APPLIED", "NOT_APPLICABLE", "OFF", "LeverStatus", "SpeedupPlan", "for_model", "resolve"]
