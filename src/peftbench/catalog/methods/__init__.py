"""Fine-tuning methods: a small spec plus a function that builds the PEFT config, registered by name.

``apply_method`` freezes the base model, applies the method, and returns the parameters the method
*declares* trainable (PEFT tuner layers declare theirs in ``adapter_layer_names``); a run trains exactly
those. Any PEFT method not registered here is reachable by its PEFT name (``method=loha``) with its
config keys in ``method_options``; it targets the attention projections unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftbench.catalog.methods.roles import select_modules
from peftbench.constants import TASK_TYPES
from peftbench.errors import UserError, did_you_mean, unknown
from peftbench.registry import Registry

if TYPE_CHECKING:  # imported on use: reading results and listing methods need neither (seconds)
    import peft
    from torch import nn


@dataclass(frozen=True)
class LRSchedule:
    """The paper's three learning rates (§A.3): start, end of warm-up, end of training."""

    initial: float
    peak: float
    final: float


FULL_LR = LRSchedule(3e-5, 3e-4, 3e-5)
ADAPTER_LR = LRSchedule(3e-4, 3e-3, 3e-4)
PROMPT_LR = LRSchedule(3e-3, 3e-1, 3e-2)


FAMILIES = ("full", "adapter", "prompt", "reference")
"""What a method trains: every weight, modules added to the layers, virtual tokens before the input, or nothing
(a reference row: majority, zero_shot, in_context, run by ``reference_rows.py`` beside the methods so that their
scores can be read)."""
UNREGISTERED_ORDER = 1000
"""Where methods without a registered spec sort: after the paper's, alphabetically among themselves."""


@dataclass(frozen=True)
class MethodSpec:
    """``peft_config(ctx)`` returns a PEFT config, or None for full fine-tuning.

    ``label``, ``order`` and ``family`` are the one place the report, ``peftbench params`` and
    ``peftbench recommend`` read a method's name in tables, its row order and its kind from.
    """

    name: str
    description: str
    lr: LRSchedule | None
    """None for a reference row (nothing trains)."""
    peft_config: Callable[[MethodContext], peft.PeftConfig | None]
    selectable: bool = True
    """Whether layer/module selection (ablations) applies."""
    label: str = ""
    """The name tables print (the paper's: "Full Tuning", "LoRA", ...); empty means ``name``."""
    order: int = UNREGISTERED_ORDER
    """Row order in the tables (the paper's Table 1 order for its five methods)."""
    family: str = "adapter"
    """One of FAMILIES; Figure 1 draws a bar for every method that is neither "full" nor "reference"."""
    task_types: tuple[str, ...] = TASK_TYPES
    """The task types it applies to (majority: classification only); the grid skips the others."""
    after_optimizer_step: Callable[[nn.Module, int], None] | None = None
    """Called with the model and the 0-based step index after every ``optimizer.step()``, before the
    gradients are cleared (AdaLoRA reallocates its rank budget from them there)."""

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def is_reference(self) -> bool:
        return self.family == "reference"

    @property
    def kind(self) -> str:
        """What a result records as ``method.kind``: "reference" or "fine_tuning"."""
        return "reference" if self.is_reference else "fine_tuning"


@dataclass
class MethodContext:
    """What a method's config builder may use: the model, its family, the run's selection and options."""

    model: nn.Module
    family: str  # "seq2seq" | "causal" | "encoder"
    options: dict[str, Any]
    layers: Any = None
    modules: list[str] | None = None
    seed: int = 0
    total_steps: int | None = None
    """Optimiser steps the run's schedule spans (None when only counting parameters)."""
    selected_layers: dict[str, list[int]] = field(default_factory=dict)

    @property
    def task_type(self) -> str:
        return {"seq2seq": "SEQ_2_SEQ_LM", "encoder": "SEQ_CLS"}.get(self.family, "CAUSAL_LM")

    def targets(self, roles: set[str]) -> list[str]:
        """Exact module names carrying any of ``roles``, after the run's layer and module selection."""
        names, self.selected_layers = select_modules(self.model, roles, layers=self.layers,
                                                     modules=self.modules, seed=self.seed)
        return names

    def build(self, config_cls: type[peft.PeftConfig], defaults: dict[str, Any]) -> peft.PeftConfig:
        """``config_cls(**defaults, **options)``; an unknown option is a UserError listing the valid ones."""
        valid = set(config_cls.__dataclass_fields__)
        for key in self.options:
            if key not in valid:
                raise UserError(f"method option {key!r} is not a field of {config_cls.__name__}"
                                f"{did_you_mean(key, valid)}")
        try:
            return config_cls(**{**defaults, **self.options})
        except (TypeError, ValueError) as exc:
            raise UserError(f"{config_cls.__name__}: {exc}") from None


METHODS: Registry[MethodSpec] = Registry("method")


@dataclass
class AppliedMethod:
    model: nn.Module
    trainable: dict[str, nn.Parameter]
    """Declared trainable parameters by name: exactly what the optimiser updates."""
    selected_layers: dict[str, list[int]]
    target_modules: list[str]
    after_optimizer_step: Callable[[int], None] | None = None
    """The spec's hook bound to this model: call it with the step index after each ``optimizer.step()``."""


def get_method(name: str) -> MethodSpec:
    """A registered method, or any other PEFT method by its PEFT name (lora, loha, vera, ...)."""
    if name in METHODS:
        return METHODS.get(name)
    if name in REFUSED:
        raise UserError(f"method {name}: {REFUSED[name]}")
    import peft

    peft_names = {t.value.lower(): t for t in peft.PeftType}
    if name in peft_names:
        return _generic_peft(name, peft_names[name])
    choices = METHODS.names() + sorted(n for n in peft_names if n not in METHODS)
    raise unknown("method", name, choices)  # registered ones and any PEFT method by its PEFT name


PAPER_VIRTUAL_TOKENS = 100
"""Prompt-learning methods prepend this many virtual tokens unless told otherwise (paper §A.3)."""


def _generic_peft(name: str, peft_type: peft.PeftType) -> MethodSpec:
    import peft

    config_cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    fields = config_cls.__dataclass_fields__
    prompt_like = issubclass(config_cls, peft.PromptLearningConfig)

    def build(ctx: MethodContext) -> peft.PeftConfig:
        defaults: dict[str, Any] = {"task_type": ctx.task_type}
        if "target_modules" in fields and "target_modules" not in ctx.options:
            defaults["target_modules"] = ctx.targets({"attention"})
        if prompt_like and "num_virtual_tokens" in fields:
            defaults["num_virtual_tokens"] = PAPER_VIRTUAL_TOKENS
        for option, why in REQUIRED_OPTIONS.get(name, {}).items():
            if option not in ctx.options:
                raise UserError(f"method {name} needs method_options.{option}: {why}")
        return ctx.build(config_cls, defaults)

    return MethodSpec(name, f"PEFT {config_cls.__name__}", PROMPT_LR if prompt_like else ADAPTER_LR, build,
                      selectable=not prompt_like, family="prompt" if prompt_like else "adapter")


def apply_method(model: nn.Module, family: str, method: str, options: dict[str, Any] | None = None, *,
                 layers=None, modules: list[str] | None = None, seed: int = 0,
                 total_steps: int | None = None) -> AppliedMethod:
    """Apply ``method`` to ``model`` and mark exactly its declared parameters trainable."""
    spec = get_method(method)
    if spec.is_reference:
        raise UserError(f"method {method} is a reference row: it trains nothing, so there is nothing to apply")
    if not spec.selectable and (layers is not None or modules):
        raise UserError(f"method {method} adapts no per-layer modules: layer/module selection does not apply")
    ctx = MethodContext(model, family, dict(options or {}), layers, modules, seed, total_steps)
    config = spec.peft_config(ctx)
    if config is None:  # full fine-tuning: every weight is declared trainable
        trainable = dict(model.named_parameters())  # tied weights appear once
        for param in model.parameters():
            param.requires_grad_(True)
        return AppliedMethod(model, trainable, ctx.selected_layers, [])
    import peft

    peft_model = peft.get_peft_model(model, config)
    trainable = declared_adapter_params(peft_model)
    for name, param in peft_model.named_parameters():
        param.requires_grad_(name in trainable)
    targets = sorted(getattr(config, "target_modules", None) or [])
    hook = spec.after_optimizer_step
    bound = None if hook is None else (lambda step: hook(peft_model, step))
    return AppliedMethod(peft_model, trainable, ctx.selected_layers, targets, bound)


def declared_adapter_params(peft_model: peft.PeftModel) -> dict[str, nn.Parameter]:
    """Parameters that PEFT's tuner layers and prompt encoders declare as the adapter's own, and the trained
    copies of the modules PEFT saves whole (``modules_to_save``: a SEQ_CLS model's classification head)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    declared: dict[str, nn.Parameter] = {}
    for module_name, module in peft_model.named_modules():
        if isinstance(module, BaseTunerLayer | ModulesToSaveWrapper):
            for attr in module.adapter_layer_names:
                container = getattr(module, attr)
                for param_name, param in container.named_parameters():
                    declared[f"{module_name}.{attr}.{param_name}"] = param
    for adapter, encoder in getattr(peft_model, "prompt_encoder", {}).items():
        for param_name, param in encoder.named_parameters():
            declared[f"prompt_encoder.{adapter}.{param_name}"] = param
    if not declared:
        raise UserError("the PEFT method declared no trainable parameters for this model")
    return declared


TUNED_LR = "+lr_search"
"""Suffix of a method's name in the cells of its runs with a searched learning rate (``lr_search``): a cell
of its own, never pooled with the method's fixed-rate runs."""


def base_method(name: str) -> str:
    """``name`` without ``TUNED_LR``."""
    return name.removesuffix(TUNED_LR)


def method_label(name: str) -> str:
    """The name a table prints for ``name``: its spec's label, else the name itself; "(tuned LR)" after it
    for a cell of searched learning rates."""
    base = base_method(name)
    label = METHODS.get(base).display if base in METHODS else base
    return f"{label} (tuned LR)" if name != base else label


def method_order(name: str) -> tuple[int, str]:
    """Sort key of ``name`` in tables: its spec's order (a tuned-LR cell right after its method), then the name."""
    base = base_method(name)
    return (METHODS.get(base).order if base in METHODS else UNREGISTERED_ORDER, name)


def method_family(name: str) -> str:
    """The family (FAMILIES) of ``name``, or "adapter" for a name no longer resolvable."""
    try:
        return get_method(base_method(name)).family
    except UserError:
        return "adapter"


# PEFT methods this recipe cannot train, each with why (checked before any run starts).
REFUSED: dict[str, str] = {
    "multitask_prompt_tuning": "it needs a task id per example (task_ids), which single-task runs do not have",
    "poly": "it needs a task id per example (task_ids), which single-task runs do not have",
    "shadow": "it wraps whole decoder blocks, which the role maps (methods/roles.py) do not name as targets",
}
# PEFT methods that train only with an option PEFT leaves empty by default.
REQUIRED_OPTIONS: dict[str, dict[str, str]] = {
    "trainable_tokens": {"token_indices": "the ids of the tokens whose embeddings train (a list)"},
}

# Import the method modules so they register themselves (one line each).
from peftbench.catalog.methods import adalora, bitfit, full, ia3, lora, prompt, reference  # noqa: E402,F401
