"""Do the speed-ups tilt the method comparison? Five methods on one cell, with ``speedups=all`` and ``none``.

The levers apply to some methods and not others (frozen linears in bf16 and prepacked: not full tuning; a
shared prompt prefix, concatenated rows and unpadded feed-forward networks: not prompt tuning; fused AdamW
helps most where most tensors train), so they could change the method-vs-method time ratios the paper
reports (Figure 1: PEFT time / full-tuning time). This runs every method under both settings, each run in
a process of its own (``peftbench run``, one subprocess per run: its peak memory is its own), alternating
the settings method by method, and prints one Markdown table.

    .venv/bin/python bench/speedup_tilt.py --data-dir ../shared/data

Evaluation as ``compare_trainer.py`` sizes it (``PROTOCOL``: 100 validation and 100 test examples, no
per-epoch decoding); the training protocol is the paper's. Extra ``key=value`` arguments go to every run.

Time is ``time.train_s + eval_s (+ rank_eval_s)`` of each result: training with its validation, and the
test; not the model's one-time read (each run reads it once, in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("full", "lora", "ia3", "bitfit", "prompt")
PROTOCOL = ("train.eval_examples=200", "train.val_metric_examples=0")
SETTINGS = ("all", "none")


def run_one(args, method: str, setting: str) -> dict:
    """One ``peftbench run`` in a fresh process; its result."""
    output = Path(args.output_dir) / setting
    command = [sys.executable, "-m", "peftbench.cli", "run", "-q", f"model={args.model}", f"method={method}",
               f"task={args.task}", f"scale={args.scale}", f"seed={args.seed}", f"speedups={setting}",
               f"data_dir={args.data_dir}", f"output_dir={output}", *PROTOCOL, *args.overrides]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"{method:>7} speedups={setting:<4} {time.perf_counter() - started:6.1f} s", file=sys.stderr, flush=True)
    found = [json.loads(p.read_text()) for p in output.glob("*/result.json")]
    [result] = [r for r in found if r["config"]["method"] == method]
    if result["status"] != "ok":
        raise SystemExit(f"{method} speedups={setting}: {result['status']}: {result['error']}")
    return result


def compared_seconds(result: dict) -> float:
    """Training (with each epoch's validation) and the test: the run's work, without the model's read."""
    times = result["time"]
    return times["train_s"] + times["eval_s"] + (times["rank_eval_s"] or 0.0)


def table(results: dict[tuple[str, str], dict], methods: list[str]) -> str:
    seconds = {key: compared_seconds(r) for key, r in results.items()}
    rows = ["| method | train + test s, all / none | all ÷ none | ÷ full time, all | ÷ full time, none "
            "| peak memory GB, all / none | score, all / none |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in methods:
        fast, plain = results[method, "all"], results[method, "none"]
        ratio = {s: seconds[method, s] / seconds["full", s] for s in SETTINGS}
        memory = [r["memory"]["peak_bytes"] / 1e9 for r in (fast, plain)]
        score = [r["metrics"]["score"] for r in (fast, plain)]
        rows.append(f"| {method} | {seconds[method, 'all']:.1f} / {seconds[method, 'none']:.1f} "
                    f"| {seconds[method, 'all'] / seconds[method, 'none']:.2f} | {ratio['all']:.2f} "
                    f"| {ratio['none']:.2f} | {memory[0]:.2f} / {memory[1]:.2f} | {score[0]:.3f} / {score[1]:.3f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with <task>/<split>.jsonl (../shared/data)")
    parser.add_argument("--model", default="smollm2-135m-q4")
    parser.add_argument("--task", default="cola")
    parser.add_argument("--scale", default="low")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; full must be one")
    parser.add_argument("--output-dir", default="results/speedup-tilt", help="result files (reused when present)")
    parser.add_argument("overrides", nargs="*", help="more peftbench key=value overrides for every run")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if "full" not in methods:
        raise SystemExit("--methods must include full: the ratios are to full tuning's time")
    results = {(method, setting): run_one(args, method, setting)
               for method in methods for setting in SETTINGS}  # alternating: drift hits both settings alike
    first = results["full", "all"]
    print(f"{args.model}, {args.task} {args.scale}, seed {args.seed}; {first['hardware']['device']}, "
          f"{os.cpu_count()} CPUs, {first['optimizer']['precision']} precision; each run its own process\n")
    print(table(results, methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
