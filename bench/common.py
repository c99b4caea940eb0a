"""What both sides of the comparison share: the cell's resolved config, its FLOPs, and the result record.

A cell is given as peftbench ``key=value`` overrides (``model=smollm2-135m-q4 methods=[lora] tasks=[cola]
scales=[low] data_dir=...``); both sides resolve them with ``peftbench.config.load_sweep``, so they train
with the same hyperparameters, on the same rows, by construction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flops import example_flops, linear_costs

from peftbench.config import RunConfig, load_sweep


def resolve_cell(overrides: list[str]) -> RunConfig:
    runs = load_sweep(None, overrides).expand()
    if len(runs) != 1:
        raise SystemExit(f"a cell is one run; these overrides make {len(runs)}: {' '.join(overrides)}")
    return runs[0]


def epoch_flops(model, items: list[tuple[int, int, int]]) -> float:
    """Training FLOPs of one epoch; ``items`` are (source, target, decoder) token counts per example."""
    costs = linear_costs(model)
    return sum(example_flops(costs, source, target, decoder) for source, target, decoder in items)


def write_record(path: str, record: dict) -> None:
    Path(path).write_text(json.dumps(record, indent=1, default=str))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]

