"""bench/compare_trainer.py's quick mode end to end: both sides train the tiny T5 cell on the same rows under the
same protocol, and the summary tables them side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_compare_trainer_quick_mode_runs_both_sides_of_the_tiny_t5_cell(tmp_path, shared_data):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent / "src"),
                                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(BENCH / "compare_trainer.py"), "--quick", "--cells", "t5tiny-lora-cola",
                           "--data-dir", str(shared_data), "--out-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (stamp,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((stamp / "summary.json").read_text())
    sides = summary["cells"]["t5tiny-lora-cola"]["sides"]
    assert set(sides) == {"peftbench", "trainer"}
    for side in sides.values():
        assert side["runs"] == 1 and side["epochs"] == [2]  # --quick caps training at 2 epochs
        assert side["metric"] == "mcc" and -1.0 <= side["score"] <= 1.0  # CoLA's headline metric
        assert side["train_tokens_per_s"] > 0
    assert sides["peftbench"]["trainable_params"] == sides["trainer"]["trainable_params"]  # the same LoRA
    assert summary["cells"]["t5tiny-lora-cola"]["ratios"]["peftbench"]["time_to_result"] > 0
    table = (stamp / "summary.md").read_text()
    assert "| t5tiny-lora-cola | peftbench |" in table and "| t5tiny-lora-cola | trainer |" in table
