"""The default speed-up levers are the measured table's: a lever is on by default only where bench/RESULTS.md's
tilt table (bench/lever_tilt.py) shows it moving no method's time ratio to full tuning by more than 5 % on
every task measured, with its prerequisite on too; every other lever, measured or not, is off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peftbench.config import SpeedupsConfig, load_sweep

pytestmark = pytest.mark.unit

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "RESULTS.md"


def measured_tilts() -> dict[str, list[bool]]:
    """Lever → whether it tilts, one entry per task table, from the rows ``| a+lever (vs a) | … | yes (7.1%) |``."""
    section = RESULTS.read_text().split("## Which levers tilt the comparison")[1].split("\n## ")[0]
    tilts: dict[str, list[bool]] = {}
    for row in re.finditer(r"^\| ([a-z0-9_+]+) \(vs [a-z0-9_+]+\) \|.*\| (yes|no) \([\d.]+%\) \|$", section, re.M):
        tilts.setdefault(row[1].split("+")[-1], []).append(row[2] == "yes")
    return tilts


def test_the_default_levers_are_those_the_tilt_table_measured_as_fair():
    tilts = measured_tilts()
    assert tilts, "bench/RESULTS.md has no tilt table"
    fair = {lever for lever, tilted in tilts.items() if not any(tilted)}
    fair = {lever for lever in fair if SpeedupsConfig.PREREQUISITES.get(lever, lever) in fair}
    assert set(SpeedupsConfig.default_levers()) == fair


def test_a_run_with_no_speedup_setting_records_the_default_set_and_names_it():
    run = load_sweep(None, ["model=t5-tiny-random", "method=lora", "task=cola", "scale=low"]).expand()[0]
    assert run.speedups == SpeedupsConfig.from_setting("default")
    assert run.speedups.setting in ("default", "none")  # none: the measured default set is empty
    on = [name for name, value in vars(run.speedups).items() if value]
    assert on == SpeedupsConfig.default_levers()
    assert load_sweep(None, ["speedups=all"]).speedups.setting == "all"
    assert load_sweep(None, ["speedups=none"]).speedups.setting == "none"
