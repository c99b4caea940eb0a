"""``peftbench serve-bench RESULTS_DIR``: the serve stage (``serving.py``) for results already made.

For every ok result whose run saved its tested weights (``<run_dir>/adapter``, ``train.save_adapter``), the
serving figures go to ``<run_dir>/serving.json`` beside its ``result.json``, which stays as it is; the report
reads either. Runs measured already (a ``serving`` field or file) are skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig, ServeConfig, from_dict, parse_override
from peftbench.errors import UserError
from peftbench.running.results import atomic_write_json, iter_results

SERVING_FILE = "serving.json"
ADAPTER_DIR = "adapter"


@dataclass
class BenchOutcome:
    measured: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(run id, why) of each result not measured."""


def serving_of(result: dict[str, Any], results_dir: Path) -> dict[str, Any] | None:
    """A result's serving figures: its own ``serving`` field, else its ``serving.json``, else None."""
    if result.get("serving"):
        return result["serving"]
    path = Path(results_dir) / str(result.get("run_id")) / SERVING_FILE
    return read_serving_file(path).get("serving") if path.is_file() else None


def read_serving_file(path: Path) -> dict[str, Any]:
    """A ``serving.json``: {"run_id", "measured_at", "settings", "hardware", "serving"}."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot be read as JSON ({exc})") from None
    return payload if isinstance(payload, dict) else {}


def serve_bench(results_dir: Path, settings: ServeConfig, *, force: bool = False,
                say: Callable[[str], None] = print) -> BenchOutcome:
    """Measure serving for every ok run of ``results_dir`` with saved weights; write each one's serving file."""
    from peftbench.recipe import serving
    from peftbench.running import environment

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results directory not found: {results_dir}")
    outcome = BenchOutcome()
    for result in iter_results(results_dir):
        run_id = result["run_id"]
        why = _reason_to_skip(result, results_dir, force)
        if why:
            outcome.skipped.append((run_id, why))
            continue
        run = from_dict(RunConfig, result["config"], where=f"{run_id}/result.json: config")
        figures = serving.measure(run, results_dir / run_id / ADAPTER_DIR, settings)
        atomic_write_json(results_dir / run_id / SERVING_FILE, {
            "run_id": run_id, "measured_at": time.time(), "settings": dataclasses.asdict(settings),
            "hardware": environment.hardware(_device()), "serving": figures})
        outcome.measured.append(run_id)
        say(summary_line(run_id, figures))
    return outcome


def _reason_to_skip(result: dict[str, Any], results_dir: Path, force: bool) -> str | None:
    if result["status"] != "ok":
        return f"status {result['status']}"
    if not (results_dir / result["run_id"] / ADAPTER_DIR).is_dir():
        return "no saved weights (train.save_adapter was off)"
    if not force and serving_of(result, results_dir):
        return "measured already (--force measures again)"
    return None


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def summary_line(run_id: str, figures: dict[str, Any]) -> str:
    """One line: adapter size, load time, batch-1 latency per variant, the merge check."""
    first = min(record["batch_size"] for record in figures["decoding"])
    latency = ", ".join(f"{r['variant']} {r['latency_s'] * 1e3:.1f} ms" for r in figures["decoding"]
                        if r["batch_size"] == first)
    check = figures["check"]
    checked = f"merged = unmerged on {check['agreement']:.0%}" if check else f"merge {figures['merge']['status']}"
    return (f"{run_id}: {figures['adapter_bytes']:,} bytes, load {figures['load_s'] * 1e3:.1f} ms, "
            f"batch {first}: {latency}; {checked}")


def settings_from(overrides: list[str]) -> ServeConfig:
    """``key=value`` serve settings (``batch_sizes=[1,4]``; a ``serve.`` prefix is allowed), validated."""
    raw = {}
    for text in overrides:
        key, value = parse_override(text)
        raw[key.removeprefix("serve.")] = value
    settings = from_dict(ServeConfig, raw, where="serve-bench")
    settings.validate()
    return settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``peftbench serve-bench RESULTS_DIR [key=value ...] [--force]``."""
    parser = subparsers.add_parser(
        "serve-bench", help="serving cost of the saved weights of every ok run in a results directory",
        description="Adapter bytes, load and swap time, decoding latency and tokens/s unmerged and merged, and "
        f"the merge check, written to <run_dir>/{SERVING_FILE} for each ok run with saved weights.")
    parser.add_argument("results_dir", type=Path, metavar="RESULTS_DIR")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="serve settings, e.g. batch_sizes=[1,8] requests=16 precision=bf16")
    parser.add_argument("--force", action="store_true", help="measure runs that were measured already")
    parser.set_defaults(func=run_serve_bench)


def run_serve_bench(args: argparse.Namespace) -> int:
    outcome = serve_bench(args.results_dir, settings_from(list(args.overrides)), force=args.force)
    for run_id, why in outcome.skipped:
        print(f"skipped {run_id}: {why}")
    print(f"{len(outcome.measured)} measured, {len(outcome.skipped)} skipped; serving figures in "
          f"<run_dir>/{SERVING_FILE} under {args.results_dir}")
    return 0

