"""The speed-up plan of one run: which levers apply, decided once from the config, the device and the model.

``resolve`` starts it before the model loads (the process-wide lever: freed memory kept); ``apply_to_model``
then applies the model-level levers (frozen linears in bf16, oneDNN's blocked weights) and decides every
lever that depends on the device, the architecture or the method. The optimiser, the step, validation and ranking
read the plan (``fused_adamw``, ``fused_passes``, and ``forward.target_logits`` through ``loss.py``) and never
test a device themselves.
Every lever ends ``applied``, ``not_applicable`` (with the reason) or ``off`` (``record``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from peftbench.catalog.methods.roles import feed_forward_networks
from peftbench.catalog.models import family_of
from peftbench.catalog.peft_compat import prompt_learning
from peftbench.config import SpeedupsConfig
from peftbench.speedups import freed_memory
from peftbench.speedups.bf16_frozen_weights import store_frozen_linears_in
from peftbench.speedups.compiled_layers import compile_repeated_blocks, why_not_compiled
from peftbench.speedups.eager_attention import GROUPED_QUERY_EAGER_MODEL_TYPES, attention_configs
from peftbench.speedups.onednn_weights import pack_frozen_linears, why_not_packed
from peftbench.speedups.shared_prompt_prefix import has_dropout, shared_prefix_length

APPLIED, NOT_APPLICABLE, OFF = "applied", "not_applicable", "off"
PER_PASS = "its per-pass {} would compile the layers again"
"""Why a lever that changes each pass's cache or hooks gives way to ``compiled_layers``."""


@dataclass(frozen=True)
class LeverStatus:
    status: str
    """applied, not_applicable or off."""
    reason: str | None = None
    """Why a lever does not apply, or where an applied one is limited."""


class SpeedupPlan:
    """The levers of one run. Before ``apply_to_model`` only the process-wide ones are decided."""

    def __init__(self, config: SpeedupsConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        self.family = "causal"
        self.statuses: dict[str, LeverStatus] = {}
        self.prefix_while_training = True
        """False when the model has dropout: rows sharing a prefix would share its dropout masks."""
        self.virtual_tokens = 0
        """Tokens prompt learning puts before every row: fused passes count them against their budget."""
        self._decide("keep_freed_memory", freed_memory.why_not_kept)
        self._decide("fused_adamw", lambda: None)

    def applies(self, lever: str) -> bool:
        return self.statuses.get(lever, LeverStatus(OFF)).status == APPLIED

    @property
    def fused_adamw(self) -> bool:
        return self.applies("fused_adamw")

    @property
    def fused_passes(self) -> bool:
        """Consecutive small batches share one forward/backward pass (``batching.plan_passes``)."""
        return self.applies("fused_passes")

    def apply_to_model(self, model: nn.Module, device: torch.device, precision: str) -> SpeedupPlan:
        """Apply the model-level levers to ``model`` (in place) and decide the rest for it. ``precision``:
        the run's mixed precision (accelerate's "bf16", "fp16" or "no")."""
        self.device = device
        config = getattr(model, "config", None)
        self.family = family_of(config) if config is not None else "causal"
        cpu = None if device.type == "cpu" else f"device {device.type}: measured and built for CPUs"
        causal = {"seq2seq": "encoder-decoder model", "encoder": "encoder-only classifier"}.get(self.family)
        prompt = prompt_learning(getattr(model, "module", model))  # DistributedDataParallel
        self.virtual_tokens = _virtual_tokens(model) if prompt else 0
        dropout = has_dropout(model)
        self.prefix_while_training = not dropout
        bf16 = None if precision == "bf16" else f"precision {precision}: bf16 autocast only"
        self._decide("fused_passes", lambda: cpu)
        self._decide("frozen_weights_bf16", lambda: bf16 or _store_frozen_linears_in_bf16(model))
        self._decide("compiled_layers", lambda: why_not_compiled(model, device))
        self._decide("onednn_blocked_weights", lambda: _prepack_frozen_linears(model, _first(
            cpu, bf16, self._needs_prerequisite("onednn_blocked_weights"),
            self._given_way_to_compiled("Inductor lowers the frozen linears itself"))))
        self._decide("lm_head_on_targets", lambda: _first(
            causal and f"{causal}: " + ("its head classifies the whole sequence" if self.family == "encoder"
                                        else "every decoder position predicts a target"),
            _no_output_layer(model)))
        limited = "validation and ranking only: the model has dropout" if dropout else None
        self._decide("shared_prompt_prefix", lambda: _first(
            self._given_way_to_compiled(PER_PASS.format("key/value cache")),
            causal and f"{causal}: the encoder attends both ways",
            prompt and f"{prompt}: its virtual tokens come before the prompt, so no prefix is shared",
            _no_output_layer(model)), limited)
        self._decide("eager_attention", lambda: cpu or _not_on_sdpa(model))
        self._decide("concatenated_rows", lambda: _first(
            cpu, self._given_way_to_compiled(PER_PASS.format("key/value cache")), causal, prompt and f"{prompt}: its virtual tokens are not rows of the batch",
            self._needs_prerequisite("concatenated_rows"), _not_llama_attention(model), _no_output_layer(model)), limited)
        self._decide("unpadded_feed_forward", lambda: _first(
            cpu, self._given_way_to_compiled(PER_PASS.format("hooks")), causal and f"{causal}: its loss runs the padded forward",
            prompt and f"{prompt}: its virtual tokens change the hidden states' shape",
            None if feed_forward_networks(model) else f"no feed-forward role map for {_model_type(model)}"))
        self._decide("bits_dropout", lambda: cpu or (None if dropout else "the model has no dropout"))
        if self.applies("compiled_layers"):  # last: the blocks compile with every model-level lever in place
            compile_repeated_blocks(model)
        return self

    def prefix_length(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
        """Leading tokens every row of ``batch`` (host tensors) shares that run once (0: none)."""
        if not self.applies("shared_prompt_prefix") or (model.training and not self.prefix_while_training):
            return 0
        return shared_prefix_length(batch)

    def record(self) -> dict[str, Any]:
        """``result["speedups"]``: the setting and every lever's status (undecided levers: not applicable)."""
        levers = {name: asdict(self.statuses.get(name, LeverStatus(NOT_APPLICABLE, "not decided for a model")))
                  for name in SpeedupsConfig.levers()}
        return {"setting": self.config.setting, "levers": levers}

    def _decide(self, lever: str, blocker, limited: str | None = None) -> None:
        """``off`` when the config turns ``lever`` off; else ``blocker()`` (which applies the lever where it
        has an effect to apply) gives the reason it does not apply, or None: applied."""
        if not getattr(self.config, lever):
            self.statuses[lever] = LeverStatus(OFF)
            return
        reason = blocker()
        self.statuses[lever] = LeverStatus(NOT_APPLICABLE, reason) if reason else LeverStatus(APPLIED, limited)

    def _given_way_to_compiled(self, why: str) -> str | None:
        """Why a lever does not apply beside ``compiled_layers`` where that applies, or None."""
        return f"compiled_layers: {why}" if self.applies("compiled_layers") else None

    def _needs_prerequisite(self, lever: str) -> str | None:
        """Why ``lever`` does not apply for want of its prerequisite (``SpeedupsConfig.PREREQUISITES``), or None."""
        prerequisite = SpeedupsConfig.PREREQUISITES[lever]
        return None if self.applies(prerequisite) else f"needs {prerequisite}"


def resolve(config: SpeedupsConfig) -> SpeedupPlan:
    """The run's speed-up plan; the process-wide lever applies now, so call it before the model loads."""
    return SpeedupPlan(config)


def for_model(model: nn.Module, device: torch.device, config: SpeedupsConfig | None = None,
              precision: str = "no") -> SpeedupPlan:
    """``resolve`` and ``apply_to_model`` in one call (tests, benchmarks); no ``config``: every lever."""
    return resolve(config or SpeedupsConfig.from_setting("all")).apply_to_model(model, device, precision)


def _first(*reasons: str | None) -> str | None:
    return next((reason for reason in reasons if reason), None)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _virtual_tokens(model: nn.Module) -> int:
    config = getattr(getattr(model, "module", model), "active_peft_config", None)
    return int(getattr(config, "num_virtual_tokens", 0) or 0)


def _store_frozen_linears_in_bf16(model: nn.Module) -> str | None:
    if store_frozen_linears_in(model, torch.bfloat16):
        return None
    if all(p.requires_grad for p in model.parameters()):
        return "full tuning: no frozen linears"
    return "no frozen nn.Linear layer to store in bf16"


def _prepack_frozen_linears(model: nn.Module, blocker: str | None) -> str | None:
    reason = blocker or why_not_packed(model)
    if reason is None:
        pack_frozen_linears(model)
    return reason


def _no_output_layer(model: nn.Module) -> str | None:
    getter = getattr(getattr(model, "module", model), "get_output_embeddings", None)
    return None if getter is not None and getter() is not None else "the model has no output layer to trim"


def _not_on_sdpa(model: nn.Module) -> str | None:
    if attention_configs(model, "sdpa"):
        return None
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return f"attention implementation {implementation}: only SDPA is switched"


def _not_llama_attention(model: nn.Module) -> str | None:
    model_type = _model_type(model)
    if model_type in GROUPED_QUERY_EAGER_MODEL_TYPES:
        return None
    return f"{model_type}: not a Llama-family attention ({', '.join(sorted(GROUPED_QUERY_EAGER_MODEL_TYPES))})"
