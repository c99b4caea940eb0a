"""Reference rows: what a task scores with no training at all, run and recorded like methods.

- ``majority``: the most frequent label of the run's training sample, answered for every test example
  (classification only: a generation task has no label set).
- ``zero_shot``: the untuned model with the task's prompt and decoding.
- ``in_context``: the untuned model with ``k`` examples of the run's training sample (drawn with the run's
  seed) before each test prompt, the paper's §3.2 alternative for very small data.

A fine-tuned score means little until it is read against these: a score below ``majority`` says the
model learned the wrong answer. ``reference_rows.py`` runs them; options go in ``method_options`` like any
method's (``method_options: {in_context: {k: 8}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftbench.catalog.methods import METHODS, MethodContext, MethodSpec
from peftbench.config import from_dict
from peftbench.constants import TASK_TYPES
from peftbench.errors import UserError


@dataclass
class NoOptions:
    """``majority`` and ``zero_shot`` take no options."""


@dataclass
class InContextOptions:
    k: int = 4
    """Training examples shown before each test prompt. A prompt that would pass train.max_source_tokens
    shows fewer (the last ones dropped first); the mean shown is recorded as ``reference.shown_mean``."""
    separator: str = "\n\n"
    """Text between consecutive examples (each is its prompt, a space and its answer)."""

    def validate(self) -> None:
        if self.k < 0:
            raise UserError(f"method_options.in_context.k must be at least 0, got {self.k}")


OPTIONS: dict[str, type] = {"majority": NoOptions, "zero_shot": NoOptions, "in_context": InContextOptions}


def reference_options(method: str, options: dict[str, Any]) -> Any:
    """The typed options of reference row ``method`` (UserError naming the valid keys for an unknown one)."""
    parsed = from_dict(OPTIONS[method], dict(options or {}), where=f"method_options.{method}")
    getattr(parsed, "validate", lambda: None)()
    return parsed


def _nothing_to_apply(ctx: MethodContext) -> None:
    raise UserError("a reference row trains nothing: there is no PEFT config to build")


def _register(name: str, label: str, order: int, description: str,
              task_types: tuple[str, ...] = TASK_TYPES) -> None:
    METHODS.register(name, MethodSpec(name, description, None, _nothing_to_apply, selectable=False, label=label,
                                      order=order, family="reference", task_types=task_types))


# After the paper's five methods (orders 0-4) in every table.
_register("majority", "Majority class", 10, "reference: the most frequent training label, no model",
          ("classification",))
_register("zero_shot", "Zero-shot", 11, "reference: the untuned model, the task's prompt")
_register("in_context", "In-context (k shots)", 12, "reference: the untuned model, k training examples in the prompt")
