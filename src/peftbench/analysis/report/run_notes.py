"""What ran, said in a line: the notes a report's tables, figures and pages carry about their runs (method
options, speed-up setting, hardware, data, versions) and one run's details."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from peftbench.analysis.report.collect import TASK_ORDER, Collection, _dig, _order, cell_key
from peftbench.catalog.methods import method_label, method_order


def method_options_note(coll: Collection) -> str | None:
    """Which method options the main rows ran with, when any method ran with other than its defaults."""
    parts = []
    for (model, method), key in sorted(coll.primary.items(), key=lambda item: method_order(item[0][1])):
        options = json.loads(key)
        if options:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
            parts.append(f"{method_label(method)} ({model}): {shown}")
    return "Method options of the main rows: " + "; ".join(parts) + "." if parts else None


def _levers_text(setting: dict[str, bool]) -> str:
    """A run's levers in a few words: "all on", "all off", "all on but a, b" or "on: a, b" (the shorter list)."""
    on = sorted(lever for lever, is_on in setting.items() if is_on)
    off = sorted(lever for lever, is_on in setting.items() if not is_on)
    if not off:
        return "all on"
    if not on:
        return "all off"
    return "all on but " + ", ".join(off) if len(off) < len(on) else "on: " + ", ".join(on)


def speedups_note(runs: Iterable[dict[str, Any]]) -> str | None:
    """The speed-up setting of the ok runs (``config.speedups``; absent means unknown), which every time table
    and figure names; a warning when they differ, since their times are then not measured alike."""
    counts = _ok_runs_by(runs, _speedups_text)
    if not counts:
        return None
    if len(counts) == 1:
        return f"Speed-up setting of these runs: {next(iter(counts))}."
    return (f"Speed-up settings differ between these runs ({_listed(counts)}): their run times and memory were "
            "not measured alike and are compared here only with that caveat.")


def _speedups_text(run: dict[str, Any]) -> str:
    setting = (run.get("config") or {}).get("speedups")
    if setting is None:
        return "unknown"
    return _levers_text(setting) if isinstance(setting, dict) else str(setting)


def allocator_note(runs: Iterable[dict[str, Any]]) -> str | None:
    """The allocator that served the ok runs' memory (``memory.allocator``), which every memory table names: a
    resident peak depends on it (bench/RESULTS.md); a warning when it differs between runs. None when no run
    records one (results written before the field existed)."""
    counts = _ok_runs_by(runs, lambda run: _allocator_text(_dig(run, "memory", "allocator")))
    if set(counts) <= {"not recorded"}:
        return None
    if len(counts) == 1:
        return f"Allocator of these runs: {next(iter(counts))}."
    return f"Allocators differ between these runs ({_listed(counts)}): their peaks were not measured alike."


def process_start_note(runs: Iterable[dict[str, Any]]) -> str | None:
    """A warning when the ok runs' processes started differently (``memory.process_start``): a worker forked
    from the fork server counts the libraries' pages in its resident set only once it touches them, so its
    runtime and peak read lower than a spawned worker's. None when they agree."""
    counts = _ok_runs_by(runs, lambda run: str(_dig(run, "memory", "process_start") or "not recorded"))
    if len(counts) <= 1:
        return None
    return (f"Run processes started differently ({_listed(counts)}): a forked worker's runtime reads lower "
            f"than a spawned one's (memory.process_start).")


def _ok_runs_by(runs: Iterable[dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> Counter[str]:
    """How many ok runs each description covers, in the order the descriptions first appear."""
    return Counter(describe(run) for run in runs if run.get("status") == "ok")


def _listed(counts: Counter[str]) -> str:
    """"all off (1 runs); all on (2 runs)": each description and its runs, sorted."""
    return "; ".join(f"{text} ({n} runs)" for text, n in sorted(counts.items()))


def _allocator_text(allocator: dict[str, Any] | None) -> str:
    if not isinstance(allocator, dict):
        return "not recorded"
    settings = ", ".join(f"{key}={value}" for key, value in sorted((allocator.get("settings") or {}).items()))
    return str(allocator.get("name")) + (f" ({settings})" if settings else "")


# ---- provenance: what model, data and hardware produced a number ---------------------------------------


def describe_hardware(hardware: dict[str, Any] | None) -> str:
    """The device, and on a CPU its processor and matrix instruction set (``hardware.instruction_set``: bf16
    results round differently with and without AMX), e.g. "cpu: Intel(R) Xeon(R) Processor, amx-bf16 (2 CPUs,
    Linux-...)"."""
    hardware = hardware or {}
    name = hardware.get("accelerator") or hardware.get("device") or "unknown device"
    if not hardware.get("accelerator"):
        chip = [str(hardware[key]) for key in ("processor", "instruction_set") if hardware.get(key)]
        name += f": {', '.join(chip)}" if chip else ""
    extras = []
    if hardware.get("cpu_count"):
        extras.append(f"{hardware['cpu_count']} CPUs")
    if hardware.get("platform"):
        extras.append(str(hardware["platform"]))
    return f"{name} ({', '.join(extras)})" if extras else str(name)


def data_source(run: dict[str, Any]) -> str:
    """Where a run's data came from: "synthetic", "hub", or a local directory (``data.source``; results
    without it: the config's ``data_dir``, else the hub)."""
    source = _dig(run, "data", "source")
    if source is None:
        source = (run.get("config") or {}).get("data_dir") or "hub"
    return "hub" if source == "huggingface-hub" else str(source)


def provenance(runs: Iterable[dict[str, Any]]) -> str:
    """One line naming the model(s), data (each task and where it came from) and hardware behind ``runs``."""
    runs = list(runs)
    models = sorted({cell_key(r).model for r in runs})
    sources: dict[str, set[str]] = {}
    for run in runs:  # a user task given by its YAML path is named by the name inside it
        name = _dig(run, "task", "name") or cell_key(run).task
        sources.setdefault(str(name), set()).add(data_source(run))
    data = [f"{task} ({', '.join(sorted(sources[task]))})" for task in _order(sources, TASK_ORDER)]
    hardware = sorted({describe_hardware(r.get("hardware")) for r in runs})
    return (
        f"Model: {', '.join(models) or 'none'} | Data: {', '.join(data) or 'none'} "
        f"| Hardware: {'; '.join(hardware) or 'unknown'}"
    )


def run_details(run: dict[str, Any]) -> str:
    """The run's config, versions and hardware as indented JSON, for the HTML page."""
    details = {key: run.get(key) for key in ("config", "versions", "hardware")}
    return json.dumps(details, indent=2, sort_keys=True, default=str)
