"""Parameter accounting on the meta device: what each method and ablation trains (paper §A.4, Table 3).

The model is built from its config alone on the meta device (no weights, no download), the method is
applied exactly as a run applies it, and the parameters the method *declares* trainable are summed.
``peftbench params flan-t5-xl`` (``params_command.py``) prints the paper's Table 3 with those numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from peftbench.catalog.ablations import (
    ABLATIONS,
    FULL_LAYERS_LABEL,
    PAPER_ABLATIONS,
    PAPER_METHODS,
    ablation_label,
    resolve_selection,
)
from peftbench.catalog.methods import METHODS, apply_method, get_method, method_label
from peftbench.catalog.methods.roles import ROLE_MAPS
from peftbench.catalog.models import auto_class, family_of, load_config, resolve_source
from peftbench.errors import UserError

# The five methods of the paper; (IA)3 before LoRA as in Table 3, which has only those two.
PAPER_FLAN_T5_XL_TOTAL = 2_849_757_184  # Table 3, "Total Parameters (no PEFT)"

TOTAL_LABEL = "Total Parameters (no PEFT)"


@dataclass
class ParamCount:
    """Trainable and total parameters of one (model, method, selection)."""

    model: str
    method: str
    ablation: str | None
    layers: Any
    modules: list[str] | None
    trainable: int
    """Sum of the parameters the method declares trainable (each tensor once)."""
    total: int
    """Unique parameters of the base model as a run loads it, before the method adds any."""
    selected_layers: dict[str, list[int]] = field(default_factory=dict)
    """Block indices adapted per stack (empty for prompt tuning and full fine-tuning)."""
    target_modules: list[str] = field(default_factory=list)
    lm_head_untied: bool = False
    """True when the meta build tied lm_head to the embedding but the checkpoint keeps its own."""

    @property
    def label(self) -> str:
        return row_label(self.method, self.ablation, self.layers, self.modules)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["target_modules"]  # hundreds of names on a large model: the count is what a table needs
        data.update(label=self.label, percent=self.percent, adapted_modules=len(self.target_modules))
        return data


def row_label(method: str, ablation: str | None, layers=None, modules=None) -> str:
    """The paper's row name: ``(IA)3 (select early layers)``, ``LoRA (drop self-attention)``, ``BitFit``."""
    name = method_label(method)
    if layers is not None or modules:
        custom = ", ".join(
            f"{key}={_compact(value)}"
            for key, value in (("layers", layers), ("modules", modules))
            if value is not None and value != []
        )
        return f"{name} ({custom})"
    if ablation is None and method not in PAPER_ABLATIONS:
        return name  # "BitFit", "Prompt tuning": the paper ablates only LoRA and (IA)3
    return f"{name} ({ablation_label(ablation, FULL_LAYERS_LABEL)})"


def _compact(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def unique_param_count(model: nn.Module) -> int:
    """Parameters counted once per tensor: tied weights (shared embeddings) are one tensor."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


def build_meta_model(model_name: str, revision: str | None = None) -> tuple[nn.Module, str, PretrainedConfig, bool]:
    """(model on the meta device, family, config, whether lm_head was untied to match the checkpoint)."""
    config = load_config(model_name, revision=revision)
    family = family_of(config)
    with torch.device("meta"):  # an encoder model: with a two-class head (the grid's tasks are not known here)
        model = auto_class(family).from_config(config)
    from_checkpoint = resolve_source(model_name).build is None  # the tiny models are built from config
    untied = from_checkpoint and _untie_checkpoint_lm_head(model, config)
    return model, family, config, untied


def _untie_checkpoint_lm_head(model: nn.Module, config: PretrainedConfig) -> bool:
    """Give lm_head its own tensor when the checkpoint has one, as ``from_pretrained`` does.

    transformers >= 5 builds every T5 with lm_head tied to the shared embedding (``T5Config`` forces
    ``tie_word_embeddings=True`` and keeps the file's ``false`` only as ``scale_decoder_outputs=False``).
    T5 v1.1 / FLAN-T5 checkpoints hold a separately trained lm_head, and ``from_pretrained`` unties the two
    when it finds both with different values; so the model a run loads and trains has one more
    vocab × d_model matrix than the config-only build.
    """
    if getattr(config, "scale_decoder_outputs", None) is not False:
        return False  # not a T5 whose file declared tie_word_embeddings: false
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not embedding.weight:
        return False
    head.weight = nn.Parameter(torch.empty_like(head.weight))  # still on the meta device
    return True


def count_params(
    model_name: str,
    method: str,
    ablation: str | None = None,
    layers=None,
    modules: list[str] | None = None,
    method_options: dict[str, Any] | None = None,
    seed: int = 0,
    revision: str | None = None,
) -> ParamCount:
    """Trainable and total parameters of ``method`` (with an ablation or a layer/module selection);
    ``revision``: a hub model's branch, tag or commit."""
    spec = get_method(method)
    selected_layers, selected_modules = resolve_selection(ablation, layers, modules)
    if not spec.selectable and (ablation is not None or layers is not None or modules):
        raise UserError(
            f"method {method} adapts no per-layer modules, so {ablation or 'a layer/module selection'}"
            f" does not apply; ablations apply to: {', '.join(_selectable_methods())} "
            f"(and any other PEFT tuner by name)"
        )
    model, family, _config, untied = build_meta_model(model_name, revision)
    total = unique_param_count(model)
    with warnings.catch_warnings():
        # e.g. PEFT's "base layer has no bias term" for BitFit on T5: about merging, not counting.
        warnings.simplefilter("ignore")
        applied = apply_method(
            model, family, method, method_options, layers=selected_layers, modules=selected_modules, seed=seed
        )
    trainable = sum(p.numel() for p in {id(p): p for p in applied.trainable.values()}.values())
    return ParamCount(
        model_name,
        method,
        ablation,
        layers,
        modules,
        trainable,
        total,
        applied.selected_layers,
        applied.target_modules,
        untied,
    )


def _selectable_methods() -> list[str]:
    return [name for name in METHODS.names() if METHODS.get(name).selectable]


def paper_total_note(config: PretrainedConfig, total: int | None = None, untied: bool = True) -> str | None:
    """Why the total is what it is, for T5 checkpoints with their own lm_head; None for other models.

    The paper's 2,849,757,184 for FLAN-T5-XL is exact: shared embedding + untied lm_head (two 32,128 × 2,048
    matrices) + the blocks. A config-only build with transformers >= 5 ties lm_head to the embedding and
    finds 2,783,959,040; this module unties it as ``from_pretrained`` does, and says so.
    """
    if getattr(config, "scale_decoder_outputs", None) is not False or not untied:
        return None
    matrix = config.vocab_size * config.d_model
    note = (
        f"The total counts lm_head ({config.vocab_size:,} x {config.d_model:,} = {matrix:,}) apart from the "
        f"shared input embedding, as the checkpoint holds it (tie_word_embeddings: false) and from_pretrained "
        f"loads it; transformers >= 5 ties the two when it builds T5 from its config alone"
    )
    if total is None:
        return note + "."
    note += f", which would count {total - matrix:,}."
    if total == PAPER_FLAN_T5_XL_TOTAL:
        note += f" {total:,} is exactly the paper's Table 3 total for FLAN-T5-XL."
    return note


def plan_rows(
    model_type: str,
    methods: list[str] | None,
    ablations: list[str | None] | None,
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str]]]:
    """(method, ablation) rows in Table 3's order (ablation-major), and default rows skipped with why.

    Rows the user named are all kept (a bad pairing is then a UserError); rows the default ablations add
    are skipped when they do not apply: the method takes no selection, the paper pairs the ablation with
    another method (LoRA is not ablated by drop_attention), or the model has no module the ablation drops
    (no cross-attention in a decoder-only model).
    """
    default_ablations = ablations is None
    if ablations is None:  # registry order, which is Table 3's
        paper = {a for rows in PAPER_ABLATIONS.values() for a in rows}
        ablations = [None, *(a for a in ABLATIONS.names() if a in paper)]
    explicit_methods = methods is not None
    rows, skipped = [], []
    for ablation in ablations:
        if explicit_methods:
            candidates = methods
        elif ablation is None:
            candidates = list(PAPER_METHODS)
        else:  # the paper's pairings for its ablations; any method that takes a selection for others
            candidates = [m for m in PAPER_METHODS if ablation in PAPER_ABLATIONS.get(m, ())] or [
                m for m in PAPER_METHODS if get_method(m).selectable
            ]
        for method in candidates:
            if default_ablations and ablation is not None and not get_method(method).selectable:
                continue  # prompt tuning, full tuning: no ablation rows at all
            reason = _inapplicable_reason(model_type, method, ablation) if default_ablations else None
            if reason:
                skipped.append((row_label(method, ablation), reason))
            else:
                rows.append((method, ablation))
    return rows, skipped


def _inapplicable_reason(model_type: str, method: str, ablation: str | None) -> str | None:
    """Why a default ablation row cannot be formed for ``method`` on this architecture: the method takes
    no selection, or the model lacks the modules the ablation drops; None when it may."""
    if ablation is None:
        return None
    if method in PAPER_ABLATIONS and ablation not in PAPER_ABLATIONS[method]:
        return f"not among the paper's {method} ablations (pass --ablation {ablation} to count it)"
    if model_type not in ROLE_MAPS:
        return None
    present = {
        role for block in ROLE_MAPS[model_type].blocks.values() for roles in block.values() for role in roles
    }
    dropped = {m[1:] for m in ABLATIONS.get(ablation).modules if m.startswith("-")}
    missing = sorted(dropped - present)
    return f"{model_type} has no {', '.join(missing)} modules" if missing else None
