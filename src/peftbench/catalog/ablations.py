"""Named ablations (paper §3.3, Tables 2 and 3): which layers and which module roles a method adapts.

An ablation is data: a layer selection and a module filter (see ``methods.roles``). A run names one with
``ablation=NAME``; ``layers=`` and ``modules=`` give the same control without a name.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftbench.errors import UserError
from peftbench.registry import Registry


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    label: str
    """The paper's row wording (Tables 2 and 3)."""
    layers: str | None = None
    """None (every block), early, later or random: half of each stack."""
    modules: tuple[str, ...] = ()
    """Module filter: roles to keep, or "-role" to drop."""


ABLATIONS: Registry[Ablation] = Registry("ablation")
for _ablation in (
    Ablation("early_layers", "the first half of the blocks of each stack", "select early layers", layers="early"),
    Ablation("later_layers", "the last half of the blocks of each stack", "select later layers", layers="later"),
    Ablation("random_layers", "a seeded random half of the blocks of each stack", "select random layers",
             layers="random"),
    Ablation("drop_self_attention", "no self-attention modules", "drop self-attention",
             modules=("-self_attention",)),
    Ablation("drop_cross_attention", "no encoder-decoder (cross) attention modules", "drop enc/dec-attention",
             modules=("-cross_attention",)),
    Ablation("drop_query_output", "attention keys and values only: no query or output projections",
             "drop query/output attention", modules=("-query", "-output")),
    Ablation("drop_attention", "no attention modules: feed-forward only", "drop attention",
             modules=("-attention",)),
    Ablation("drop_feed_forward", "no feed-forward (dense activation) modules: attention only",
             "drop dense activation", modules=("-feed_forward",)),
):
    ABLATIONS.register(_ablation.name, _ablation)

ALL_LAYERS_LABEL = "all layers"
"""Table 2's name for a method on every layer and module (no ablation)."""
FULL_LAYERS_LABEL = "full layers/modules"
"""Table 3's name for the same."""


def ablation_label(ablation: str | None, baseline: str = ALL_LAYERS_LABEL) -> str:
    """The paper's wording for a named ablation; ``baseline`` for None; any other variant as it is."""
    if ablation is None:
        return baseline
    return ABLATIONS.get(ablation).label if ablation in ABLATIONS else str(ablation)


def resolve_selection(ablation: str | None, layers, modules) -> tuple[object, list[str] | None]:
    """The (layers, modules) a run uses: from its named ablation, or from its own keys, never both."""
    if ablation is None:
        return layers, modules
    spec = ABLATIONS.get(ablation)
    if layers is not None or modules:
        raise UserError(f"ablation {ablation} already chooses layers and modules; drop layers=/modules=")
    return spec.layers, list(spec.modules) or None


# Table 3's rows: the methods it counts, and its ablation rows per method, in the table's order.
PAPER_METHODS = ("ia3", "lora", "prompt", "bitfit", "full")
PAPER_ABLATIONS: dict[str, tuple[str, ...]] = {
    "ia3": ("early_layers", "later_layers", "random_layers", "drop_attention", "drop_feed_forward"),
    "lora": (
        "early_layers",
        "later_layers",
        "random_layers",
        "drop_self_attention",
        "drop_cross_attention",
        "drop_query_output",
    ),
}
