"""Speed-up plans for tests that call the loss, validation or ranking directly."""

from __future__ import annotations

import dataclasses

import torch

from peftbench.config import SpeedupsConfig
from peftbench.speedups import SpeedupPlan, for_model

CPU = torch.device("cpu")


def plan_for(model, *off: str, precision: str = "no") -> SpeedupPlan:
    """``model``'s CPU plan with every lever on except those named in ``off``."""
    every = dataclasses.asdict(SpeedupsConfig.from_setting("all"))
    return for_model(model, CPU, SpeedupsConfig(**{**every, **dict.fromkeys(off, False)}), precision)


def plain_plan(model) -> SpeedupPlan:
    """Every lever off: the plain transformers forward."""
    return for_model(model, CPU, SpeedupsConfig.from_setting("none"))
