"""Test metrics, registered by name: a task's YAML names one (``metric: accuracy``), and a new metric is one
``METRICS.register`` call here.

A metric scores one prediction against an example's references (one label word, or every human reference)
and the split's score is the mean over examples (one example per distinct input).

- ``accuracy``: exact match of the answer with the label word, after trimming whitespace and a trailing
  period (the paper's classification metric).
- ``rouge_l``: ROUGE-L F-measure (``rouge-score``, stemming on) against the best-matching reference (the
  paper's generation metric).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rouge_score import rouge_scorer

from peftbench.registry import Registry


@dataclass(frozen=True)
class Metric:
    """``per_example(prediction, references)`` scores one prediction; ``task_types`` it may score."""

    name: str
    label: str
    """How tables and captions name it."""
    per_example: Callable[[str, Sequence[str]], float]
    task_types: tuple[str, ...]


METRICS: Registry[Metric] = Registry("metric")


def normalize_answer(text: str) -> str:
    return text.strip().rstrip(".").strip()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure against the best-matching reference."""
    return max(_ROUGE.score(ref, prediction)["rougeL"].fmeasure for ref in references)


METRICS.register("accuracy", Metric("accuracy", "accuracy (exact match)",
                                    lambda prediction, references: exact_match(prediction, references[0]),
                                    ("classification",)))
METRICS.register("rouge_l", Metric("rouge_l", "ROUGE-L F", rouge_l, ("generation",)))


def score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The mean of ``metric`` over examples (NaN for none); ``references[i]`` belong to ``predictions[i]``."""
    if not predictions and not references:
        return float("nan")
    scorer = METRICS.get(metric).per_example
    values = [scorer(p, refs) for p, refs in zip(predictions, references, strict=True)]
    return sum(values) / len(values)
