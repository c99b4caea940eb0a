"""Each performance lever of peftbench measured before and after, in one process, interleaved.

    python bench/levers/levers.py --data-dir ../shared/data [--levers all|name,name] [--repeats 5]

Every lever is timed as "before" and "after" on the same inputs, alternating the two repeatedly in this
process, so a change in the machine's load hits both; the medians and their ratio are printed and written
to ``bench/results/levers-<time>.{json,md}``. SmolLM2-135M LoRA (full tuning where it says so) on CoLA
and SAMSum rows of ``load_task_data``; bf16 autocast as the runs use it. ``omp_spin`` runs child processes
(libgomp reads its settings when it loads) beside a competing 2-thread process, as a shared machine has;
``keep_freed_memory`` runs child processes too (glibc's malloc settings hold for a process's life).

The cases live here, not in ``peftbench.speedups``: each drives the recipe's data, model, method and loss
around one lever, so inside the package they would import the recipe from the layer beside it, and they
ship to no user.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import kernel_cases
import lever_cases
import torch
from lever_cases import Setup

CASES = {**lever_cases.CASES, **kernel_cases.CASES}

HERE = Path(__file__).resolve().parent


def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each zero-argument callable, run in alternating order ``repeats`` times (+1 warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(repeats + 1):
        names = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for name in names:
            started = time.perf_counter()
            variants[name]()
            if round_index:  # the first round warms caches and kernel choices
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def omp_spin(repeats: int) -> dict:
    """Training step + decoding in child processes: libgomp's default spinning vs peftbench's limit, alone and
    beside a competing process (another 2-thread torch job, as on a shared machine)."""
    child = HERE / "lever_cases.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("GOMP_SPINCOUNT", None)
    env.pop("OMP_WAIT_POLICY", None)
    results = {}
    for company in ("alone", "beside a busy process"):
        hog = None
        if company != "alone":
            hog = subprocess.Popen([sys.executable, str(child), "--hog"], env=env)
        try:
            times: dict[str, list[float]] = {"libgomp default": [], "GOMP_SPINCOUNT=10000": []}
            for _ in range(repeats):
                for name in times:
                    child_env = dict(env, **({"GOMP_SPINCOUNT": "10000"} if "10000" in name else {}))
                    out = subprocess.run([sys.executable, str(child), "--omp-child"], env=child_env, check=True,
                                         capture_output=True, text=True).stdout
                    times[name].append(json.loads(out.strip().splitlines()[-1])["seconds"])
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        results[company] = {name: statistics.median(values) for name, values in times.items()}
    return results


def keep_freed_memory(repeats: int, data_dir: str) -> list[dict]:
    """Training steps in child processes, glibc's default allocator settings against peftbench's
    (``speedups/freed_memory.py``; mallopt holds for a process's life), alternating; rows with page faults."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    rows = []
    for what in kernel_cases.ALLOCATOR_STEPS:
        runs: dict[str, list[dict]] = {"default": [], "keep": []}
        for _ in range(repeats):
            for mode in runs:
                out = subprocess.run(
                    [sys.executable, str(HERE / "kernel_cases.py"), "--allocator-child", data_dir, what, mode],
                    env=env, check=True, capture_output=True, text=True)
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        before, after = ({key: statistics.median(run[key] for run in runs[mode]) for key in ("seconds", "faults_per_step")}
                         for mode in ("default", "keep"))
        rows.append({"lever": "keep_freed_memory", "what": f"{what}, child process; page faults a step "
                     f"{before['faults_per_step']:.0f} → {after['faults_per_step']:.0f}",
                     "before_s": before["seconds"], "after_s": after["seconds"],
                     "speedup": before["seconds"] / after["seconds"]})
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--levers", default="all", help=f"comma-separated, or all: {', '.join(CASES)}, omp_spin, keep_freed_memory")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", default=str(HERE.parent / "results"))
    args = parser.parse_args(argv)
    names = [*CASES, "omp_spin", "keep_freed_memory"] if args.levers == "all" else args.levers.split(",")
    setup = Setup(str(Path(args.data_dir).resolve()))
    rows = []
    for name in names:
        load = round(os.getloadavg()[0], 2)
        if name == "omp_spin":
            for company, result in omp_spin(max(1, args.repeats // 2)).items():
                before, after = result["libgomp default"], result["GOMP_SPINCOUNT=10000"]
                rows.append({"lever": f"omp_spin ({company})", "what": "train step + decode 16×8, child process",
                             "before_s": before, "after_s": after, "speedup": before / after, "load": load})
                print(_row(rows[-1]), flush=True)
        elif name == "keep_freed_memory":
            for row in keep_freed_memory(max(1, args.repeats // 2), str(Path(args.data_dir).resolve())):
                rows.append({**row, "load": load})
                print(_row(rows[-1]), flush=True)
        else:
            case = CASES[name]
            for what, variants in case(setup).items():
                repeats = variants.pop("repeats", args.repeats)  # a whole epoch is timed once per variant
                result = interleaved(variants, repeats)
                before, after = result["before"], result["after"]
                rows.append({"lever": name, "what": what, "before_s": before, "after_s": after,
                             "speedup": before / after, "load": load})
                print(_row(rows[-1]), flush=True)
    _write(rows, args, argv)


def _row(row: dict) -> str:
    return (f"| {row['lever']} | {row['what']} | {row['before_s']:.3f} | {row['after_s']:.3f} "
            f"| {row['speedup']:.2f} | {row['load']} |")


def _write(rows: list[dict], args, argv: list[str]) -> None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = [f"`levers.py {' '.join(argv)}` — {torch.get_num_threads()} torch threads, median of "
              f"{args.repeats} interleaved repeats", "",
              "| lever | measured on | before s | after s | × | load |", "| --- | --- | ---: | ---: | ---: | --- |"]
    table = "\n".join(header + [_row(r) for r in rows])
    (out / f"levers-{stamp}.md").write_text(table + "\n")
    (out / f"levers-{stamp}.json").write_text(json.dumps(rows, indent=1))
    print("\n" + table + f"\n\nwritten: {out}/levers-{stamp}.md")


if __name__ == "__main__":
    main(sys.argv[1:])
