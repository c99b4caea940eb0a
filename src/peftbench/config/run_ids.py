"""Run ids: which settings a run id hashes (``RunConfig.identity``).

An id hashes every setting that differs from ``ID_DEFAULTS``, the value each setting had when it was
introduced: a setting added with a default leaves every id as it was, and changing a default changes the
ids of the runs it changes, so old results are never taken for runs that compute something else.
"""

from __future__ import annotations

from typing import Any

_ID_COORDINATES = ("model", "method", "task", "scale", "seed", "ablation", "data_dir", "trackers", "serve")
"""RunConfig fields the id names directly (or, for trackers and serve, leaves out)."""

# fmt: off
ID_DEFAULTS: dict[str, Any] = {
    # Each setting with the default it was introduced with; never edit a value here (that would make old
    # results look done for runs that compute something else): a new setting adds its line.
    "layers": None, "modules": None, "method_options": {}, "trust_remote_code": False, "model_revision": None,
    "train.batch_size": 16, "train.grad_accum": 4, "train.max_epochs": None, "train.patience": 1,
    "train.min_delta": 0.0, "train.warmup_fraction": 0.1, "train.lr_initial": None, "train.lr_peak": None,
    "train.lr_final": None, "train.weight_decay": 0.0, "train.max_grad_norm": 1.0, "train.precision": "auto",
    "train.max_source_tokens": 512, "train.max_target_tokens": 128, "train.eval_batch_size": 32,
    "train.val_metric_examples": 200, "train.rank_classification": True, "train.eval_examples": 2500,
    "train.group_by_length": True, "train.save_adapter": True, "train.checkpoint_every_epoch": True,
    "train.checkpoint_interval_s": 60.0, "train.num_threads": None, "train.max_oom_retries": 4,
    "train.test_examples": None, "train.lr_scale": 1.0, "train.run_test": True, "lr_search": None,
    "train.measure_peak": None, "train.max_tokens_per_pass": None, "train.gradient_checkpointing": False,
    "speedups.keep_freed_memory": True, "speedups.fused_adamw": True, "speedups.fused_passes": True,
    "speedups.frozen_weights_bf16": True, "speedups.onednn_blocked_weights": True,
    "speedups.lm_head_on_targets": True, "speedups.shared_prompt_prefix": True, "speedups.eager_attention": True,
    "speedups.concatenated_rows": True, "speedups.unpadded_feed_forward": True, "speedups.bits_dropout": True,
    "speedups.compiled_layers": False,
    "forgetting.enabled": True, "forgetting.data_file": None, "forgetting.hub_dataset": "Salesforce/wikitext",
    "forgetting.hub_config": "wikitext-2-raw-v1", "forgetting.tokens": 4096, "forgetting.max_paragraph_tokens": 256,
}
# fmt: on


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"patience": 1}}`` → ``{"train.patience": 1}`` for every section (a mapping other than
    ``method_options``, which is one setting)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and key != "method_options":
            flat.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat


def changed_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's config (``RunConfig.to_dict()``) that differ from ``ID_DEFAULTS``, flattened.
    ``train.measure_peak`` is in the table like every setting but changes what is recorded, not computed."""
    settings = _flatten({k: v for k, v in config.items() if k not in _ID_COORDINATES})
    settings.pop("train.measure_peak")
    unknown_settings = sorted(set(settings) - set(ID_DEFAULTS))
    if unknown_settings:
        raise RuntimeError(f"config setting(s) {', '.join(unknown_settings)} are not in config.ID_DEFAULTS: "
                           f"add each with the default it is introduced with")
    return {k: v for k, v in settings.items() if v != ID_DEFAULTS[k]}
