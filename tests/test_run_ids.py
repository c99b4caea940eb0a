"""Run ids: what a run computes, not how its config was spelt (config.RunConfig.identity)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from speedup_helpers import introduction_speedups

import peftbench.config as config
from peftbench.config import ID_DEFAULTS, RunConfig, SpeedupsConfig, TrainConfig, load_sweep

pytestmark = pytest.mark.unit

# Every speed-up lever of the time on and no token budget, as the defaults were when this id was computed
# (ID_DEFAULTS keeps them so).
PINNED = RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale=32, seed=0,
                   speedups=introduction_speedups(), train=TrainConfig(max_tokens_per_pass=None))


def test_a_known_run_keeps_its_id():
    # Changing this id makes every existing result look unfinished: only a change of what runs compute may.
    assert PINNED.run_id() == "t5_tiny_random-lora-synthetic_classification-32-s0-bd9318766a"


def test_a_changed_default_changes_the_id_of_the_runs_it_changes():
    # The default speed-up set and token budget are not the ones the ids were introduced with: a run at
    # today's defaults computes on another path, so it is another run.
    default = RunConfig(**{**vars(PINNED), "speedups": SpeedupsConfig(), "train": TrainConfig()})
    assert default.run_id() != PINNED.run_id()
    assert set(default.identity()["settings"]) == {
        f"speedups.{lever}" for lever in SpeedupsConfig.levers()
        if (lever in SpeedupsConfig.default_levers()) != ID_DEFAULTS[f"speedups.{lever}"]} | {"train.max_tokens_per_pass"}


def test_a_setting_that_differs_from_its_introduction_default_changes_the_id():
    assert RunConfig(**{**vars(PINNED), "train": TrainConfig(patience=2)}).run_id() != PINNED.run_id()
    assert RunConfig(**{**vars(PINNED), "seed": 1}).run_id() != PINNED.run_id()


def test_adding_a_setting_with_a_default_leaves_the_id_unchanged(monkeypatch):
    @dataclasses.dataclass
    class TrainWithNewSetting(TrainConfig):
        new_setting: int = 7

    monkeypatch.setitem(ID_DEFAULTS, "train.new_setting", 7)
    grown = RunConfig(**{**vars(PINNED), "train": TrainWithNewSetting(max_tokens_per_pass=None)})
    assert grown.run_id() == PINNED.run_id()
    grown.train.new_setting = 8  # set away from its default, it names another computation
    assert grown.run_id() != PINNED.run_id()


def test_a_setting_missing_from_the_frozen_table_is_refused(monkeypatch):
    monkeypatch.delitem(ID_DEFAULTS, "train.patience")
    with pytest.raises(RuntimeError, match="train.patience are not in config.ID_DEFAULTS"):
        PINNED.run_id()


def test_every_setting_of_a_run_is_in_the_frozen_table():
    settings = config._flatten({k: v for k, v in PINNED.to_dict().items() if k not in config._ID_COORDINATES})
    assert set(settings) <= set(ID_DEFAULTS)


def _data_dir(root: Path) -> Path:
    for split, labels in {"train": [1, 0, 1], "validation": [0, 1], "test": [1, 0]}.items():
        (root / "cola").mkdir(parents=True, exist_ok=True)
        rows = [{"sentence": f"{split} sentence {i}.", "label": label} for i, label in enumerate(labels)]
        (root / "cola" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _cola_id(data_dir: str) -> str:
    return load_sweep(None, ["models=[t5-tiny-random]", "methods=[lora]", "tasks=[cola]", "scales=[low]",
                             f"data_dir={data_dir}"]).expand()[0].run_id()


def test_the_same_data_by_a_relative_or_an_absolute_path_is_the_same_run(tmp_path, monkeypatch):
    data = _data_dir(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert _cola_id("data") == _cola_id(str(data)) == _cola_id(os.path.join("..", tmp_path.name, "data"))


def test_other_data_is_another_run(tmp_path):
    data = _data_dir(tmp_path / "data")
    before = _cola_id(str(data))
    with (data / "cola" / "train.jsonl").open("a") as handle:
        handle.write(json.dumps({"sentence": "one more.", "label": 0}) + "\n")
    assert _cola_id(str(data)) != before
