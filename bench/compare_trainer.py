"""peftbench against the plain Hugging Face Trainer + PEFT script, cell by cell, in one process tree.

    python bench/compare_trainer.py --cells all --data-dir ../shared/data [--device cpu|cuda] [--quick]
                                    [--seeds 0,1,2] [--repeats N]

For each cell the two sides run as subprocesses, one after the other, alternating which goes first so that
drift in the machine's load hits both alike; the GEMM peak (fp32, bf16) is measured in this process before
and after the cells, with the same torch threads. Printed and written to ``bench/results/``: time to
result (data + model + training + validation + test decoding + scoring), training seconds and tokens/s,
test-decoding seconds, model FLOPs utilisation (bench/flops.py, over the best bf16 GEMM rate measured) and
the test score, with the ratios trainer / peftbench.

Protocol: the paper's (batch 16 × 4, the scale's max epochs, early stopping with patience 1, the best
epoch tested), except the evaluation size: ``train.eval_examples=200`` (100 validation, 100 test) and
no per-epoch validation decoding (``train.val_metric_examples=0``; the Trainer script computes the loss
only), and neither label ranking nor the forgetting measurement, which the Trainer script does not do.
``--quick`` also caps training at 2 epochs and evaluation at 64 examples, and measures the GEMM peak on one
small size (a rough peak, so its MFU is rough too): a smoke test of the bench.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from report import markdown_table, summarise

from peftbench import limit_openmp_spinning

HERE = Path(__file__).resolve().parent
CELLS = {
    "smollm2-lora-cola": ["model=smollm2-135m-q4", "methods=[lora]", "tasks=[cola]", "scales=[low]"],
    "smollm2-full-cola": ["model=smollm2-135m-q4", "methods=[full]", "tasks=[cola]", "scales=[low]"],
    "smollm2-lora-agnews": ["model=smollm2-135m-q4", "methods=[lora]", "tasks=[ag_news]", "scales=[low]"],
    "smollm2-full-agnews": ["model=smollm2-135m-q4", "methods=[full]", "tasks=[ag_news]", "scales=[low]"],
    "smollm2-lora-samsum": ["model=smollm2-135m-q4", "methods=[lora]", "tasks=[samsum]", "scales=[low]"],
    "smollm2-full-samsum": ["model=smollm2-135m-q4", "methods=[full]", "tasks=[samsum]", "scales=[low]"],
    "t5tiny-lora-cola": ["model=t5-tiny-random", "methods=[lora]", "tasks=[cola]", "scales=[low]"],
}
# GPU only: FLAN-T5-base's architecture with random weights and a byte tokenizer (the Hub is unreachable
# offline), for throughput and MFU of the seq2seq path at a realistic size; its score means nothing.
GPU_CELLS = {
    "flant5base-lora-samsum": ["model={models}/flan-t5-base-random", "methods=[lora]", "tasks=[samsum]",
                               "scales=[low]"],
}
# What the Trainer script does not do is off on both sides: label ranking and the forgetting measurement.
SAME_WORK = ["train.rank_classification=false", "forgetting.enabled=false"]
PROTOCOL = ["train.eval_examples=200", "train.val_metric_examples=0", *SAME_WORK]
QUICK = ["train.eval_examples=64", "train.val_metric_examples=0", "train.max_epochs=2", *SAME_WORK]
SIDES = {"peftbench": (HERE / "peftbench_side.py", []),  # the default (fair) speed-up levers
         "peftbench-all": (HERE / "peftbench_side.py", ["speedups=all"]),  # every lever on
         # every lever but compiled layers, which takes the place of three of them
         "peftbench-all-eager": (HERE / "peftbench_side.py", ["speedups=all", "speedups.compiled_layers=false"]),
         "trainer": (HERE / "trainer_baseline.py", [])}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="all",
                        help=f"comma-separated, or all: {', '.join(CELLS)} (+ {', '.join(GPU_CELLS)} on cuda)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 64 evaluation examples")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each cell and seed (timing noise)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated run seeds: each cell runs once per seed (score noise)")
    parser.add_argument("--sides", default="peftbench,trainer",
                        help=f"comma-separated, of {', '.join(SIDES)} (peftbench-all: speedups=all)")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--trainer-omp", choices=["same", "default"], default="same",
                        help="same: the trainer script gets the OpenMP spin limit peftbench sets for itself "
                             "(GOMP_SPINCOUNT, see src/peftbench/__init__.py), so the ratios measure the other "
                             "levers; default: libgomp's own spinning, as a plain script runs")
    parser.add_argument("--summarise", metavar="DIR", help="only write the table of a bench directory "
                        "(e.g. one that was stopped): its finished cells, peaks before and now")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra peftbench overrides for both sides, e.g. train.max_epochs=3")
    return parser.parse_args(argv)


def child_env(args: argparse.Namespace, side: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    # main() set GOMP_SPINCOUNT here (unless the user set an OpenMP policy): the children inherit it, whatever
    # they import first.
    if side == "trainer" and args.trainer_omp == "default" and "OMP_WAIT_POLICY" not in os.environ:
        env.pop("GOMP_SPINCOUNT", None)
    return env


def run_side(side: str, cell: str, overrides: list[str], out_dir: Path, env: dict[str, str], repeat: str) -> dict:
    out = out_dir / f"{cell}.{side}.{repeat}.json"
    log = out_dir / f"{cell}.{side}.{repeat}.log"
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    with log.open("w") as handle:
        script, extra = SIDES[side]
        code = subprocess.call([sys.executable, str(script), str(out), *overrides, *extra], env=env,
                               stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if code != 0 or not out.is_file():
        print(f"  {side:9s} FAILED (exit {code}); see {log}", flush=True)
        return {"side": side, "cell": cell, "failed": True, "exit_code": code, "log": str(log)}
    record = json.loads(out.read_text())
    record.update(side=side, cell=cell, process_wall_s=wall, load_before=load_before, repeat=repeat)
    print(f"  {side:9s} {record['time_to_result_s']:8.1f} s to result, {record['epochs']} epochs, "
          f"score {record['score']:.4f}, load {load_before[0]}", flush=True)
    return record


def random_flan_t5(directory: Path) -> None:
    """A local model directory (config, safetensors, tokenizer) that peftbench and the script both load."""
    if (directory / "model.safetensors").is_file():
        return
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, ByT5Tokenizer

    data = json.loads((HERE.parent / "src/peftbench/catalog/model_configs/flan-t5-base.json").read_text())
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    ByT5Tokenizer().save_pretrained(directory)


def cell_overrides(name: str, models_dir: Path) -> list[str]:
    if name in GPU_CELLS:
        random_flan_t5(models_dir / "flan-t5-base-random")
        return [o.format(models=models_dir) for o in GPU_CELLS[name]]
    return CELLS[name]


def measure_peaks(args: argparse.Namespace) -> dict:
    """The GEMM peak, in a child process with the peftbench side's environment (threads, OpenMP)."""
    command = [sys.executable, str(HERE / "flops.py"), args.device, *(["--quick"] if args.quick else [])]
    output = subprocess.run(command, env=child_env(args, "peftbench"), check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output)


def main(argv: list[str]) -> None:
    limit_openmp_spinning()  # as the peftbench command does: the children inherit it
    args = parse_args(argv)
    if args.summarise:
        return write_summary(Path(args.summarise), args, argv)
    every = {**CELLS, **GPU_CELLS}
    default = list(CELLS) + (list(GPU_CELLS) if args.device == "cuda" else [])
    names = default if args.cells == "all" else args.cells.split(",")
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; choose from {', '.join(every)}")
    sides = args.sides.split(",")
    if set(sides) - set(SIDES):
        raise SystemExit(f"unknown side(s) {sorted(set(sides) - set(SIDES))}; choose from {', '.join(SIDES)}")
    out_dir = Path(args.out_dir) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True)
    protocol = (QUICK if args.quick else PROTOCOL) + [f"data_dir={Path(args.data_dir).resolve()}", *args.set]
    print(f"GEMM peak on {args.device} ...", flush=True)
    (out_dir / "peaks_before.json").write_text(json.dumps(measure_peaks(args)))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for repeat in range(args.repeats):
        for index, (cell, seed) in enumerate((c, s) for c in names for s in seeds):
            order = sides if (index + repeat) % 2 == 0 else sides[::-1]
            print(f"{cell} seed {seed} (repeat {repeat + 1}/{args.repeats})", flush=True)
            for side in order:
                overrides = cell_overrides(cell, Path(args.out_dir) / "models") + protocol + [f"seeds=[{seed}]"]
                record = run_side(side, cell, overrides, out_dir, child_env(args, side), f"{seed}.{repeat}")
                with (out_dir / "records.jsonl").open("a") as handle:  # a stopped bench keeps what it measured
                    handle.write(json.dumps({**record, "seed": seed}, default=str) + "\n")
    write_summary(out_dir, args, argv, protocol)


def write_summary(out_dir: Path, args: argparse.Namespace, argv: list[str], protocol=None) -> None:
    """The table from ``out_dir``'s records and GEMM peaks (before: from the start of the bench; after: now).

    ``--summarise DIR`` runs this alone, for a bench that was stopped: the cells it finished are tabled.
    """
    records = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()]
    names = list(dict.fromkeys(r["cell"] for r in records))
    peaks_before = json.loads((out_dir / "peaks_before.json").read_text())
    peaks = {"before": peaks_before, "after": measure_peaks(args)}
    summary = summarise(records, peaks, names)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *argv]), "device": args.device, "stamp": out_dir.name,
            "torch_threads": peaks_before["threads"], "cpu_count": os.cpu_count(), "protocol": protocol,
            "omp": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                    "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"), "trainer": args.trainer_omp},
            "peaks": peaks}
    table = markdown_table(summary, meta)
    print("\n" + table)
    (out_dir / "summary.json").write_text(json.dumps({"meta": meta, "cells": summary, "runs": records},
                                                     indent=1, default=str))
    (out_dir / "summary.md").write_text(table + "\n")
    print(f"\nwritten: {out_dir}/summary.md, summary.json")


if __name__ == "__main__":
    main(sys.argv[1:])
