"""Which speed-up levers tilt the method comparison? Each lever alone against none, every method, two cells.

A time ratio (PEFT ÷ full tuning, Figure 1) measures the methods only while every speed-up helps every method
alike. For each lever this times, per method, a training epoch (the optimiser steps, the paper's clock) and a
validation-loss pass with the lever alone and with none, and prints how the lever moves each method's ratio to
full tuning:

    tilt(method) = (t_method,lever / t_full,lever) / (t_method,none / t_full,none)

A lever whose tilt is off 1 by more than ``--threshold`` (5 %) for any method, on the training epoch or the
validation pass, tilts the comparison: it belongs off by default (config/sections.py ``SpeedupsConfig``).

    .venv/bin/python bench/lever_tilt.py --data-dir ../shared/data [--tasks cola,ag_news] [--repeats 3]

A lever that needs another (``onednn_blocked_weights`` needs ``frozen_weights_bf16``, ``concatenated_rows``
needs ``eager_attention``) is measured with its prerequisite on, against the prerequisite alone. Levers that
apply to no method of the model (``bits_dropout`` on a model without dropout) are not measured. A setting
may also name several levers joined by ``+`` (``--settings none,fused_adamw+lm_head_on_targets``) to check
that a default set's tilts do not add up, and ``#k`` repeats a setting in a fresh process: ``--settings none#2``
measures the noise floor, the "tilt" of changing nothing.

Each (task, setting) runs in a process of its own (``keep_freed_memory`` holds for a process's life), which
loads the model once and copies it per method. Times are medians over ``--repeats`` epochs after one warm-up
epoch; run it on an otherwise idle machine.
Prints one Markdown table per task and writes the raw medians as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("full", "lora", "ia3", "bitfit", "prompt")


def lever_settings(applicable: set[str]) -> dict[str, str]:
    """Each measured setting (levers joined by ``+``) → the setting it is compared with: a lever alone against
    none, or with its prerequisite (``SpeedupsConfig.PREREQUISITES``) against the prerequisite alone."""
    from peftbench.config import SpeedupsConfig

    settings = {"none": "none"}
    for lever in (name for name in SpeedupsConfig.levers() if name in applicable):
        prerequisite = SpeedupsConfig.PREREQUISITES.get(lever)
        if prerequisite:
            settings.setdefault(prerequisite, "none")
            settings[f"{prerequisite}+{lever}"] = prerequisite
        else:
            settings[lever] = "none"
    return settings


def applicable_levers(task: str, args) -> set[str]:
    """The levers that apply to at least one method of ``args.model`` (every lever on)."""
    from peftbench.config import SpeedupsConfig, load_sweep
    from peftbench.recipe.train import make_accelerator, prepare_cell
    from peftbench.speedups import APPLIED, resolve

    found = set()
    for method in METHODS:
        run = load_sweep(None, [f"model={args.model}", f"method={method}", f"task={task}", "scale=low",
                                f"data_dir={args.data_dir}", "train.eval_examples=200"]).expand()[0]
        cell = prepare_cell(run)
        accelerator = make_accelerator(run.train.precision, cell.loaded.architecture)
        plan = resolve(run.speedups).apply_to_model(cell.model, accelerator.device, accelerator.mixed_precision)
        found |= {name for name in SpeedupsConfig.levers()  # levers the plan does not decide per model apply
                  if name not in plan.statuses or plan.statuses[name].status == APPLIED}
    return found


def measure(task: str, setting: str, args) -> dict[str, dict[str, float]]:
    """In this process: median seconds of a training epoch and a validation pass for every method."""
    import torch

    from peftbench.config import SpeedupsConfig, load_sweep
    from peftbench.recipe import steps
    from peftbench.recipe.evaluate import validation_loss
    from peftbench.recipe.protocol import build_optimizer
    from peftbench.recipe.run_state import RunState
    from peftbench.recipe.train import Loop, make_accelerator, prepare_cell
    from peftbench.running import distributed
    from peftbench.speedups import resolve as resolve_speedups

    torch.set_num_threads(args.threads)
    named = set(setting.split("#")[0].split("+"))  # "none#2": a repeat of "none", the noise floor's setting
    unknown = named - set(SpeedupsConfig.levers()) - {"none"}
    if unknown:
        raise SystemExit(f"unknown levers {sorted(unknown)}; valid: {', '.join(SpeedupsConfig.levers())}")
    levers = {name: name in named for name in SpeedupsConfig.levers()}
    times = {}
    for method in METHODS:
        run = load_sweep(None, [f"model={args.model}", f"method={method}", f"task={task}", "scale=low",
                                f"data_dir={args.data_dir}", "train.eval_examples=200"]).expand()[0]
        run.speedups = SpeedupsConfig(**levers)
        speedups = resolve_speedups(run.speedups)
        cell = prepare_cell(run)
        optimizer, scheduler, _ = build_optimizer(run.train, method, cell.trainable, len(cell.encoded["train"]),
                                                  cell.max_epochs, fused=speedups.fused_adamw)
        accelerator = make_accelerator(run.train.precision, cell.loaded.architecture)
        model, optimizer = distributed.prepare(accelerator, cell.model, optimizer)
        speedups.apply_to_model(model, accelerator.device, accelerator.mixed_precision)
        loop = Loop(run, Path(args.out).parent, cell, model, optimizer, scheduler, accelerator, None, speedups)
        family, pad_id = cell.loaded.family, cell.loaded.tokenizer.pad_token_id
        train, validate = [], []
        for epoch in range(args.repeats + 1):
            order = steps_order(cell, run, epoch)
            started = time.perf_counter()
            steps.train_epoch(model, optimizer, scheduler, accelerator, cell.encoded["train"], order, run.train,
                              family, pad_id, RunState(), lambda: False, speedups)
            middle = time.perf_counter()
            validation_loss(model, cell.encoded["validation"], family, pad_id, run.train.eval_batch_size,
                            speedups, loop.autocast())
            if epoch:  # the first epoch warms caches and kernel choices
                train.append(middle - started)
                validate.append(time.perf_counter() - middle)
        times[method] = {"train_epoch_s": statistics.median(train), "validation_s": statistics.median(validate)}
    return times


def steps_order(cell, run, epoch: int) -> list[list[int]]:
    from peftbench.recipe.batching import length_grouped_batches

    return length_grouped_batches(cell.encoded["train"], run.train.batch_size, seed=run.seed * 1000 + epoch + 1,
                                  group_by_length=run.train.group_by_length)


def tilts(times: dict[str, dict], setting: str, baseline: str, quantity: str) -> dict[str, float]:
    """Each method's ratio to full tuning with the setting, over the same ratio with its baseline."""
    lever, none = times[setting], times[baseline]
    return {m: (lever[m][quantity] / lever["full"][quantity]) / (none[m][quantity] / none["full"][quantity])
            for m in METHODS if m != "full"}


def table(task: str, times: dict[str, dict], baselines: dict[str, str], threshold: float) -> str:
    lines = [f"### {task} (low, seed 0): method ÷ full time ratio with the setting, over the ratio with its "
             "baseline", "", "| setting (vs baseline) | full train / val speed-up | "
             + " | ".join(f"{m} train / val" for m in METHODS if m != "full") + " | tilts? |",
             "| --- | ---: |" + " ---: |" * (len(METHODS) - 1) + " --- |"]
    for setting, baseline in baselines.items():
        if setting == baseline or setting not in times or baseline not in times:
            continue
        train = tilts(times, setting, baseline, "train_epoch_s")
        val = tilts(times, setting, baseline, "validation_s")
        worst = max(abs(v - 1) for v in [*train.values(), *val.values()])
        full = [times[baseline]["full"][q] / times[setting]["full"][q] for q in ("train_epoch_s", "validation_s")]
        cells = [f"{train[m]:.3f} / {val[m]:.3f}" for m in train]
        lines.append(f"| {setting} (vs {baseline}) | {full[0]:.2f}× / {full[1]:.2f}× | " + " | ".join(cells)
                     + f" | {'yes' if worst > threshold else 'no'} ({worst:.1%}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="smollm2-135m-q4")
    parser.add_argument("--tasks", default="cola,ag_news")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--settings", help="comma-separated settings (levers joined by +), each compared with "
                        "none; default: every applicable lever, with its prerequisites")
    parser.add_argument("--out", default="bench/results/lever_tilt.json")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args)))
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results: dict[str, dict] = {}
    for task in args.tasks.split(","):
        results[task] = {}
        if args.settings:
            baselines = {"none": "none", **{s: "none" for s in args.settings.split(",")}}
        else:
            baselines = lever_settings(applicable_levers(task, args))
        print(f"{task}: {len(baselines)} settings: {', '.join(baselines)}", file=sys.stderr)
        for setting in baselines:
            command = [sys.executable, __file__, "--data-dir", args.data_dir, "--model", args.model,
                       "--repeats", str(args.repeats), "--threads", str(args.threads), "--out", args.out,
                       "--child", task, setting]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            results[task][setting] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{task} {setting}: done at {time.strftime('%H:%M:%S')}", file=sys.stderr)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
        print(table(task, results[task], baselines, args.threshold) + "\n", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
