"""Speed-up plans for tests that call the loss, validation or ranking directly."""

from __future__ import annotations

import dataclasses

import torch

from peftbench.config import ID_DEFAULTS, SpeedupsConfig
from peftbench.speedups import SpeedupPlan, for_model

CPU = torch.device("cpu")


def plan_for(model, *off: str, precision: str = "no", compiled: bool = False) -> SpeedupPlan:
    """``model``'s CPU plan with every lever on except those named in ``off``, and ``compiled_layers`` only when
    ``compiled`` (it takes the place of the cache- and hook-based levers that most of these tests exercise)."""
    every = dataclasses.asdict(SpeedupsConfig.from_setting("all"))
    chosen = {**every, **dict.fromkeys(off, False), "compiled_layers": compiled and "compiled_layers" not in off}
    return for_model(model, CPU, SpeedupsConfig(**chosen), precision)


def plain_plan(model) -> SpeedupPlan:
    """Every lever off: the plain transformers forward."""
    return for_model(model, CPU, SpeedupsConfig.from_setting("none"))


def introduction_speedups() -> SpeedupsConfig:
    """The speed-up settings run ids began with (``ID_DEFAULTS``): every lever then known on, later ones off."""
    return SpeedupsConfig(**{lever: ID_DEFAULTS[f"speedups.{lever}"] for lever in SpeedupsConfig.levers()})
