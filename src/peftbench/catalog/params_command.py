"""The ``peftbench params`` command: its arguments, and the table or JSON it prints of ``params.py``'s counts."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import yaml

from peftbench.catalog.ablations import ABLATIONS, PAPER_METHODS
from peftbench.errors import UserError

if TYPE_CHECKING:
    from peftbench.catalog.params import ParamCount


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


def run_params_command(args: argparse.Namespace) -> int:
    """Count every planned row and print a table (or JSON). Returns the exit status."""
    # Imported here: torch, transformers and PEFT take seconds, which no other command should wait for.
    from peftbench.catalog.methods import get_method
    from peftbench.catalog.models import load_config
    from peftbench.catalog.params import (
        build_meta_model,
        count_params,
        paper_total_note,
        plan_rows,
        row_label,
        unique_param_count,
    )

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
    from peftbench.catalog.params import TOTAL_LABEL

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
