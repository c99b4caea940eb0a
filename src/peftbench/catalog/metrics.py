"""Test metrics, registered by name: a task's YAML names the paper's metric (``metric: accuracy``) and its
headline (``headline_metric: mcc``), and a new metric is one ``METRICS.register`` call here.

A metric declares what a comparison needs to know about it: its direction (higher is better for all of
these), its range (an interval of a difference is kept inside what the metric allows), the smallest
difference that matters (``smallest_effect``: an "at least as good as" claim is an equivalence test
against it) and how it aggregates:

- a *mean* of per-example scores (``per_example(prediction, references)``), which example-level paired
  tests can use directly: ``accuracy`` (exact match with the label word, after trimming whitespace and a
  trailing period: the paper's classification metric), ``rouge_l`` (ROUGE-L F-measure, ``rouge-score`` with
  stemming, against the best-matching reference: the paper's generation metric);
- a *corpus* statistic over the whole test set (``corpus(predictions, labels, classes)``): ``mcc``
  (Matthews correlation, GLUE's CoLA metric: 0 for any constant answer) and ``macro_f1`` (the unweighted mean
  of the classes' F1). An answer outside the label set counts as a class of its own that no example has, so
  it is always wrong and never rewarded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rouge_score import rouge_scorer

from peftbench.registry import Registry


@dataclass(frozen=True)
class Metric:
    """One of ``per_example`` (scores one prediction; the metric is their mean) or ``corpus`` (scores the
    whole test set) is set."""

    name: str
    label: str
    """How tables and captions name it."""
    task_types: tuple[str, ...]
    per_example: Callable[[str, Sequence[str]], float] | None = None
    corpus: Callable[[Sequence[str], Sequence[str], Sequence[str]], float] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    higher_is_better: bool = True
    smallest_effect: float = 0.02
    """The smallest difference that matters, in the metric's units (equivalence and non-inferiority tests)."""

    @property
    def aggregate(self) -> str:
        """"mean" (of per-example scores) or "corpus" (computed over the whole test set)."""
        return "mean" if self.per_example is not None else "corpus"


METRICS: Registry[Metric] = Registry("metric")


def normalize_answer(text: str) -> str:
    return text.strip().rstrip(".").strip()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure against the best-matching reference."""
    return max(_ROUGE.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def confusion_matrix(predictions: Sequence[str], labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts [true class, predicted class] over ``classes`` plus one last column/row for any answer outside
    them (normalised as ``exact_match`` compares)."""
    index = {normalize_answer(c): i for i, c in enumerate(classes)}
    other = len(classes)
    matrix = np.zeros((other + 1, other + 1), dtype=np.int64)
    for prediction, label in zip(predictions, labels, strict=True):
        matrix[index.get(normalize_answer(label), other), index.get(normalize_answer(prediction), other)] += 1
    return matrix


def matthews_corrcoef(predictions: Sequence[str], labels: Sequence[str], classes: Sequence[str]) -> float:
    """Matthews correlation (Gorodkin's multi-class form, as scikit-learn computes it); 0 when either side is
    constant."""
    c = confusion_matrix(predictions, labels, classes).astype(np.float64)
    t, p, n, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
    denominator = np.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float((correct * n - t @ p) / denominator) if denominator > 0 else 0.0


def macro_f1(predictions: Sequence[str], labels: Sequence[str], classes: Sequence[str]) -> float:
    """The mean over ``classes`` of each class's F1 (0 for a class never predicted nor present)."""
    c = confusion_matrix(predictions, labels, classes).astype(np.float64)
    k = len(classes)
    tp, predicted, actual = np.diag(c)[:k], c.sum(axis=0)[:k], c.sum(axis=1)[:k]
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1.mean()) if k else float("nan")


METRICS.register("accuracy", Metric(
    "accuracy", "accuracy (exact match)", ("classification",),
    per_example=lambda prediction, references: exact_match(prediction, references[0])))
METRICS.register("rouge_l", Metric("rouge_l", "ROUGE-L F", ("generation",), per_example=rouge_l,
                                   smallest_effect=0.01))
METRICS.register("mcc", Metric("mcc", "MCC (Matthews correlation)", ("classification",), corpus=matthews_corrcoef,
                               bounds=(-1.0, 1.0), smallest_effect=0.05))
METRICS.register("macro_f1", Metric("macro_f1", "macro-F1", ("classification",), corpus=macro_f1))

CLASSIFICATION_METRICS = ("accuracy", "mcc", "macro_f1")
"""What every classification test records, from the generated answers and (``rank_`` prefixed) from the
ranked label words."""


def score(metric: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
          classes: Sequence[str] = ()) -> float:
    """``metric`` over a test set (NaN for none); ``references[i]`` belong to ``predictions[i]``; a corpus
    metric scores against each example's first reference over ``classes``."""
    if not predictions and not references:
        return float("nan")
    spec = METRICS.get(metric)
    if spec.per_example is None:
        return spec.corpus(predictions, [refs[0] for refs in references], classes)
    values = [spec.per_example(p, refs) for p, refs in zip(predictions, references, strict=True)]
    return sum(values) / len(values)
