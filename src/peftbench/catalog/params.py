"""Parameter accounting on the meta device: what each method and ablation trains (paper §A.4, Table 3).

The model is built from its config alone on the meta device (no weights, no download), the method is
applied exactly as a run applies it, and the parameters the method *declares* trainable are summed.
``peftbench params flan-t5-xl`` prints the paper's Table 3 with those numbers.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import yaml
from torch import nn
from transformers import PretrainedConfig

from peftbench.catalog.ablations import ABLATIONS, FULL_LAYERS_LABEL, ablation_label, resolve_selection
from peftbench.catalog.methods import METHODS, apply_method, get_method, method_label
from peftbench.catalog.methods.roles import ROLE_MAPS
from peftbench.catalog.models import auto_class, family_of, load_config, resolve_source
from peftbench.errors import UserError

# The five methods of the paper; (IA)3 before LoRA as in Table 3, which has only those two.
PAPER_METHODS = ("ia3", "lora", "prompt", "bitfit", "full")
# Table 3's ablation rows, per method, in the table's order.
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


# --- the `peftbench params` command -------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``peftbench params MODEL [--method M ...] [--ablation A ...] [--json] [--seed N]``."""
    parser = subparsers.add_parser(
        "params",
        help="count trainable parameters per method and ablation (the paper's Table 3)",
        description="Build MODEL from its config on the meta device (no weights) and count the parameters "
        f"each method trains. With no --method/--ablation: {', '.join(PAPER_METHODS)} and every Table 3 "
        "ablation of LoRA and (IA)3. --layers/--modules select layers and module roles instead of a named "
        "ablation (see docs/ablations.md); --option passes a method option to every method counted.",
    )
    ablation_help = f"a named ablation or 'none' (repeatable): {', '.join(ABLATIONS.names())}"
    parser.add_argument("model", help="a model alias (flan-t5-xl, t5-tiny-random, ...), directory or hub id")
    parser.add_argument(
        "--method", action="append", dest="methods", metavar="M", help="a method (repeatable)"
    )
    parser.add_argument("--ablation", action="append", dest="ablations", metavar="A", help=ablation_help)
    parser.add_argument(
        "--layers", type=_yaml_value, metavar="SEL", help="early, later, random, early:0.25, [0,1]"
    )
    parser.add_argument(
        "--modules", type=_yaml_list, metavar="ROLES", help="e.g. --modules=-self_attention,-query"
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="e.g. r=2 (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random layer selection (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run_params_command)


def _yaml_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _yaml_list(text: str) -> list[str]:
    value = _yaml_value(text)
    return (
        [str(v) for v in value]
        if isinstance(value, list)
        else [p.strip() for p in text.split(",") if p.strip()]
    )


def _method_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r} is not of the form KEY=VALUE")
        options[key.strip()] = _yaml_value(value)
    return options


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


def run_params_command(args: argparse.Namespace) -> int:
    """Count every planned row and print a table (or JSON). Returns the exit status."""
    config = load_config(args.model)
    custom = args.layers is not None or bool(args.modules)
    ablations = [None if a.lower() in ("none", "null") else a for a in args.ablations or []] or None
    rows, skipped = plan_rows(
        config.model_type, args.methods, [None] if custom and not ablations else ablations
    )
    if custom and args.methods is None:  # a custom selection counts the defaults that select layers
        rows = [(m, a) for m, a in rows if get_method(m).selectable]
    options = _method_options(args.option)
    default_ablations = args.ablations is None and not custom
    counts = []
    for method, ablation in rows:
        try:
            counts.append(
                count_params(args.model, method, ablation, args.layers, args.modules, options, args.seed)
            )
        except UserError as exc:
            if not default_ablations or ablation is None:
                raise
            # A default ablation row the method cannot form (LoRA without attention adapts nothing, LoRA
            # without self-attention on a decoder-only model neither): reported under the table, not fatal.
            skipped.append((row_label(method, ablation), str(exc)))
    model, _family, _config, untied = build_meta_model(args.model)
    total = unique_param_count(model)
    note = paper_total_note(config, total, untied)
    report = params_report(args.model, args.seed, total, note, counts, skipped)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def params_report(
    model: str,
    seed: int,
    total: int,
    note: str | None,
    counts: list[ParamCount],
    skipped: list[tuple[str, str]],
) -> dict[str, Any]:
    """The data both outputs print: the total row, one row per count, and the default rows skipped."""
    return {
        "model": model,
        "seed": seed,
        "total": {"label": TOTAL_LABEL, "count": total, "note": note},
        "rows": [count.to_dict() for count in counts],
        "skipped": [{"label": label, "reason": reason} for label, reason in skipped],
    }


def format_table(report: dict[str, Any]) -> str:
    """An aligned text table like the paper's Table 3, with % of total and notes underneath."""
    total = report["total"]
    lines = [(total["label"], f"{total['count']:,}", "100%")]
    lines += [(row["label"], f"{row['trainable']:,}", f"{row['percent']:.4f}%") for row in report["rows"]]
    header = ("Ablation technique", "Parameter count", "% of total")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
    text = [
        f"{report['model']} (seed {report['seed']})",
        f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}",
        "  ".join("-" * w for w in widths),
    ]
    text += [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in lines]
    notes = [f"Note: {total['note']}"] if total["note"] else []
    notes += _random_layer_notes(report)
    notes += [f"Skipped {item['label']}: {item['reason']}." for item in report["skipped"]]
    return "\n".join(text + ([""] + notes if notes else []))


def _random_layer_notes(report: dict[str, Any]) -> list[str]:
    """The blocks a random selection chose, so a reader can reproduce the row."""
    notes = []
    for row in report["rows"]:
        if row["ablation"] == "random_layers" or str(row["layers"]).startswith("random"):
            chosen = "; ".join(f"{stack} {indices}" for stack, indices in row["selected_layers"].items())
            notes.append(f"{row['label']}, seed {report['seed']}: {chosen}")
    return notes
