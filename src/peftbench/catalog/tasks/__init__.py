"""Tasks are data: one YAML file each (dataset, fields, template, label words, metric, version).

A user task is a YAML file of the same form whose ``data_files`` point at local JSONL files; pass its
path wherever a task name goes (``tasks=[my_task.yaml]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.catalog.metrics import CLASSIFICATION_METRICS, METRICS
from peftbench.config import from_dict
from peftbench.constants import TASK_TYPES
from peftbench.errors import UserError, unknown
from peftbench.registry import Registry

SPLITS = ("train", "validation", "test")


@dataclass
class HubSource:
    """A Hugging Face dataset: ``load_dataset(path, name)``; ``splits`` maps our split to the Hub's."""

    path: str
    name: str | None = None
    revision: str | None = None
    """A branch or commit, e.g. refs/convert/parquet for repositories that only have a loading script."""
    splits: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskSpec:
    """A task in text-to-text form. See the YAML files beside this module for examples."""

    name: str
    version: int
    type: str
    """classification (exact match of the label word) or generation (ROUGE-L F)."""
    metric: str
    """The paper's metric, registered in ``peftbench.catalog.metrics`` for this task type (accuracy, rouge_l)."""
    fields: list[str]
    """Fields every row must have."""
    template: str
    """Prompt, formatted with the row's fields (Python str.format)."""
    label_field: str | None = None
    label_words: dict[str, str] = field(default_factory=dict)
    """Classification: label value (as a string) → the word the model must generate."""
    target_field: str | None = None
    """Generation: the field holding the reference text."""
    group_by: str | None = None
    """Rows with the same value here are one example with several references (E2E NLG)."""
    max_new_tokens: int | None = None
    """Generation budget; classification derives it from the longest label word."""
    hf: HubSource | None = None
    local_splits: dict[str, str] = field(default_factory=dict)
    """Our split → file stem under ``<data_dir>/<name>/``; a split absent here is carved."""
    data_files: dict[str, str] = field(default_factory=dict)
    """User tasks: our split → a JSONL path (relative to the YAML file)."""
    carve: dict[str, str] = field(default_factory=dict)
    """Missing split → the labelled split it is carved from (deterministically, disjoint)."""
    synthetic: str | None = None
    """Name of a generator in peftbench.catalog.tasks.synthetic; the task then needs no data."""
    description: str = ""
    headline_metric: str | None = None
    """The metric tables, figures, flags and claims compare (None: ``metric``). CoLA's is MCC: 73 % of its
    test sentences are acceptable, so accuracy rewards a constant answer that MCC scores 0."""

    def validate(self, where: str) -> None:
        if self.type not in TASK_TYPES:
            raise UserError(f"{where}: type must be one of {', '.join(TASK_TYPES)}, got {self.type!r}")
        for metric in (self.metric, self.headline):
            if metric not in METRICS:
                raise UserError(f"{where}: {unknown('metric', metric, METRICS.names())}")
            if self.type not in METRICS.get(metric).task_types:
                valid = [name for name in METRICS if self.type in METRICS.get(name).task_types]
                raise UserError(f"{where}: a {self.type} task is scored with {', '.join(valid)}, not {metric!r}")
        if self.type == "classification" and (not self.label_field or not self.label_words):
            raise UserError(f"{where}: a classification task needs label_field and label_words")
        if self.type == "generation" and not self.target_field:
            raise UserError(f"{where}: a generation task needs target_field")
        for split, source in self.carve.items():
            if split not in SPLITS or source not in SPLITS:
                raise UserError(f"{where}: carve maps splits among {', '.join(SPLITS)}, got {split}: {source}")
        unknown_splits = (set(self.local_splits) | set(self.data_files)) - set(SPLITS)
        if unknown_splits:
            raise UserError(f"{where}: unknown split(s) {sorted(unknown_splits)}; valid: {', '.join(SPLITS)}")

    def label_word(self, value: Any) -> str:
        key = str(value)
        if key not in self.label_words:
            raise UserError(f"task {self.name}: label {value!r} is outside the label set "
                            f"{sorted(self.label_words)}")
        return self.label_words[key]

    @property
    def headline(self) -> str:
        """The metric that comparisons use: ``headline_metric``, else the paper's ``metric``."""
        return self.headline_metric or self.metric

    @property
    def test_metrics(self) -> tuple[str, ...]:
        """Every metric a test records: the paper's first, then (classification) MCC and macro-F1."""
        extra = CLASSIFICATION_METRICS if self.type == "classification" else ()
        return tuple(dict.fromkeys((self.metric, self.headline, *extra)))

    @property
    def classes(self) -> tuple[str, ...]:
        """The distinct label words in the YAML's order (an encoder classifier's class i is classes[i]);
        empty for a generation task."""
        return tuple(dict.fromkeys(self.label_words.values()))

    @property
    def generation_budget(self) -> int:
        """max_new_tokens for decoding, in tokens (label words are short; 8 covers any tokenizer)."""
        if self.max_new_tokens:
            return self.max_new_tokens
        longest = max(len(word) for word in self.label_words.values())
        return max(4, min(longest + 2, 16))  # a byte-level tokenizer needs one token per character


def load_task_yaml(path: Path) -> TaskSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"task file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"task file {path}: not valid YAML ({exc})".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise UserError(f"task file {path}: expected a mapping")
    if "label_words" in raw and isinstance(raw["label_words"], dict):
        raw["label_words"] = {str(k): str(v) for k, v in raw["label_words"].items()}
    spec = from_dict(TaskSpec, raw, where=f"task file {path}")
    spec.data_files = {split: str((Path(path).parent / file).resolve()) for split, file in spec.data_files.items()}
    spec.validate(f"task file {path}")
    return spec


TASKS: Registry[TaskSpec] = Registry("task")
for _path in sorted(Path(__file__).parent.glob("*.yaml")):
    TASKS.register(_path.stem, load_task_yaml(_path))


def get_task(name_or_path: str) -> TaskSpec:
    """A registered task by name, or a user task YAML by path."""
    if name_or_path.endswith((".yaml", ".yml")):
        return load_task_yaml(Path(name_or_path))
    return TASKS.get(name_or_path)
