"""Beyond one device: device_map placement (exercised on the CPU here) and what a multi-process launch refuses."""

from __future__ import annotations

import re

import pytest
from sweep_helpers import comparable, tiny_overrides

from peftbench.catalog.models import load_model
from peftbench.config import load_sweep
from peftbench.errors import UserError
from peftbench.recipe.train import run_cell
from peftbench.running.sweep import run_sweep

pytestmark = pytest.mark.integration


def test_device_map_is_an_execution_setting_not_part_of_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    plain = load_sweep(None, tiny_overrides(tmp_path / "a", methods=("lora",)))
    mapped = load_sweep(None, tiny_overrides(tmp_path / "b", methods=("lora",), extra=("device_map=auto",)))
    (run,) = plain.expand()
    assert [r.run_id() for r in mapped.expand()] == [run.run_id()]
    # Without GPUs every block lands on the CPU: the same training, recorded as placed by device_map.
    placed = run_cell(run, tmp_path / "b" / run.run_id(), progress=False, device_map="auto")
    straight = run_cell(run, tmp_path / "a" / run.run_id(), progress=False)
    assert placed["hardware"]["device_map"] == "auto" and straight["hardware"]["device_map"] is None
    placed["hardware"]["device_map"] = None
    assert comparable(placed) == comparable(straight)
    assert load_model("t5-tiny-random", device_map="auto").model.hf_device_map == {"": "cpu"}


def test_unknown_device_map_is_refused():
    with pytest.raises(UserError, match="device_map must be auto, sequential or null"):
        load_sweep(None, ["device_map=balanced_low_0"])


@pytest.mark.parametrize(("setting", "message"), [
    ("device_map=auto", "device_map=auto splits one model over the GPUs of one process; with 4 processes"),
    ("executor=ray", "executor=ray starts its own processes; launch it as one process")])
def test_a_multi_process_launch_refuses_settings_of_one_process(tmp_path, monkeypatch, setting, message):
    # Data parallel runs (tests/test_distributed.py) hold the whole model in every process.
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match=re.escape(message)):
        run_sweep(load_sweep(None, tiny_overrides(tmp_path, extra=(setting,))), progress=False)
    assert not any(tmp_path.iterdir())
