"""Issue 31's memory goal table: SmolLM2-135M, seed 0, CoLA low and SAMSum low, full tuning and LoRA.

    python bench/memory_goals.py --data-dir ../shared/data [--variants default,budget_2048,...] [--out DIR]
    python bench/memory_goals.py --out DIR --report-only   # the table again from the results already there

Run it on the idle machine (SAMSum low full tuning peaks at ~15 GB with the settings of the committed
findings). Each variant is one ``peftbench run`` sweep of the four cells, each run in a worker process of its
own (``isolate_runs``), so every peak is the run's own; variants write under ``DIR/<variant>/``
(default ``bench/results/memory-goals``), and a variant already run is read back, not run again.
Before each sweep the four runs' predicted peaks are taken from ``peftbench.recipe.memory_estimate`` (what
``peftbench run ... --dry-run`` prints).

It prints, and writes to ``DIR/memory_goals.md``, one Markdown row per (variant, cell): the measured peak
(GB, 10⁹ bytes as in the issue's table), its breakdown (runtime, weights, gradients, optimiser state,
activations, overhead), the predicted peak (with this process's runtime), the predicted increment over
runtime against the measured one (``peak - runtime``, in %), the test score, ``time.train_s`` and ``time.total_s``; then the goals the
variant meets (issue 31: CoLA LoRA peak ≤ 1.8 GB, CoLA full ≤ 3.8, SAMSum LoRA ≤ 5, SAMSum full ≤ 8,
overhead ≤ 0.5 GB, runtime ≤ 0.7 GB, prediction within 25 %).

The variants (``VARIANTS``): ``default`` (the settings as they are), ``budget_2048`` and ``budget_1024``
(``train.max_tokens_per_pass``), ``sdpa`` (``speedups.eager_attention=false``: PyTorch's scaled-dot-product
attention in every pass, the eager-attention decision), ``no_onednn`` (``speedups.onednn_blocked_weights=false``:
no blocked copies of the frozen weights), ``no_kept_memory`` (``speedups.keep_freed_memory=false``: glibc's
own thresholds) and ``checkpointing`` (``train.gradient_checkpointing=true``). Compare scores and times
with ``default``'s: a change of default must keep the scores within noise and the training time within 5 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from peftbench.config import load_sweep
from peftbench.recipe.memory_estimate import predict_run
from peftbench.running.results import iter_results

HERE = Path(__file__).resolve().parent
CELLS = ("model=smollm2-135m-q4", "methods=[full,lora]", "tasks=[cola,samsum]", "scales=[low]", "seeds=[0]")
VARIANTS = {
    "default": [],
    "budget_2048": ["train.max_tokens_per_pass=2048"],
    "budget_1024": ["train.max_tokens_per_pass=1024"],
    "sdpa": ["speedups.eager_attention=false"],
    "no_onednn": ["speedups.onednn_blocked_weights=false"],
    "no_kept_memory": ["speedups.keep_freed_memory=false"],
    "checkpointing": ["train.gradient_checkpointing=true"],
}
GOALS_GB = {("cola", "lora"): 1.8, ("cola", "full"): 3.8, ("samsum", "lora"): 5.0, ("samsum", "full"): 8.0}
"""The issue's "must" peaks; overhead ≤ 0.5 GB and runtime ≤ 0.7 GB for every cell."""
PARTS = ("runtime", "weights", "gradients", "optimizer_state", "activations", "overhead")
GB = 1e9


def overrides(data_dir: str, out: Path, variant: str) -> list[str]:
    return [*_cells, f"data_dir={data_dir}", f"output_dir={out / variant}", *VARIANTS[variant]]


_cells = list(CELLS)
"""The cells measured: ``CELLS``, or ``--cells`` (a smoke test on a tiny model)."""


def predictions(data_dir: str, out: Path, variant: str) -> dict[str, dict[str, int]]:
    """The predicted peak and increment over runtime of each run of the variant, by run id (written beside its
    results)."""
    path = out / variant / "predicted.json"
    if path.is_file():
        return json.loads(path.read_text())
    predicted = {}
    for run in load_sweep(None, overrides(data_dir, out, variant)).expand():
        prediction = predict_run(run)
        predicted[run.run_id()] = {"peak": prediction.peak_bytes, "increment": prediction.increment_bytes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(predicted, indent=1))
    return predicted


def run_variant(data_dir: str, out: Path, variant: str) -> None:
    """The variant's sweep in a process of its own (runs already done are skipped by the sweep itself)."""
    subprocess.run([sys.executable, "-m", "peftbench.cli", "run", "-q", *overrides(data_dir, out, variant)],
                   check=False)


def rows(out: Path, variant: str, predicted: dict[str, dict[str, int]]) -> list[str]:
    lines = []
    for result in sorted(iter_results(out / variant), key=lambda r: (r["config"]["task"], r["config"]["method"])):
        task, method = result["config"]["task"], result["config"]["method"]
        if result.get("status") != "ok":
            lines.append(f"| {variant} | {task} | {method} | {result.get('status')} |" + " |" * 12)
            continue
        memory, times = result["memory"], result["time"]
        parts = memory["breakdown"]
        guess = predicted.get(result["run_id"])
        measured_increment = memory["peak_bytes"] - parts["runtime"]
        error = (f"{100 * (guess['increment'] - measured_increment) / measured_increment:+.0f} %"
                 if guess is not None else "-")
        guessed = f"{guess['peak'] / GB:.2f}" if guess is not None else "-"
        breakdown = " | ".join(f"{parts[p] / GB:.2f}" for p in PARTS)
        lines.append(f"| {variant} | {task} | {method} | {memory['peak_bytes'] / GB:.2f} | {breakdown} | {guessed} "
                     f"| {error} | {result['metrics']['score']:.4f} | {times['train_s']:.0f} | {times['total_s']:.0f} "
                     f"| {_goals_met(task, method, memory['peak_bytes'], parts, guess)} |")
    return lines


def _goals_met(task: str, method: str, peak: int, parts: dict, guess: dict[str, int] | None) -> str:
    checks = {"peak": peak / GB <= GOALS_GB.get((task, method), float("inf")), "overhead": parts["overhead"] / GB <= 0.5,
              "runtime": parts["runtime"] / GB <= 0.7}
    if guess is not None:
        increment = peak - parts["runtime"]
        checks["prediction"] = abs(guess["increment"] - increment) <= 0.25 * increment
    return ", ".join(name for name, ok in checks.items() if ok) or "none"


HEADER = ("| variant | task | method | peak GB | runtime | weights | gradients | optimiser | activations | overhead "
          "| predicted peak GB | predicted − measured increment | score | train_s | total_s | goals met |\n"
          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--variants", default="default", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory-goals")
    parser.add_argument("--report-only", action="store_true", help="print the table from the results in --out")
    parser.add_argument("--cells", help="other cells as peftbench overrides, e.g. 'model=llama-tiny-random "
                                        "tasks=[synthetic_classification] scales=[32]' (a smoke test)")
    args = parser.parse_args()
    if args.cells:
        _cells[:] = args.cells.split()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    table = [HEADER]
    for variant in variants:
        predicted = predictions(args.data_dir, args.out, variant)
        if not args.report_only:
            run_variant(args.data_dir, args.out, variant)
        table += rows(args.out, variant, predicted)
    text = "\n".join(table)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_goals.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
