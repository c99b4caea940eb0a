"""The example-level view of a comparison: both methods answered the same test examples of each seed
(``outcomes.jsonl.gz``), so they are paired example by example. This covers the test-sample variance only
(not the training variance the seeds carry): McNemar's exact test when the headline metric scores each
example 0 or 1, else a paired bootstrap over examples within seeds that recomputes the metric (MCC and
macro-F1 are computed over the whole test set, so each resample scores its own confusion matrix).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from peftbench.analysis import paired
from peftbench.analysis.report.collect import Collection
from peftbench.catalog.metrics import METRICS, normalize_answer
from peftbench.outcomes import OutcomesError, read_outcomes
from peftbench.running.results import result_path


def headline(run: dict[str, Any]) -> str:
    """The metric ``metrics.score`` holds: ``metrics.headline``, else the task's headline or metric."""
    task = run.get("task") or {}
    return str((run.get("metrics") or {}).get("headline") or task.get("headline_metric") or task.get("metric"))


@functools.lru_cache(maxsize=256)
def _read(run_dir: Path, file: str, examples: int | None, sha256: str | None,
          references: tuple[str, str | None] | None) -> tuple[dict, ...]:
    """``read_outcomes``, cached on what identifies the files (``references``: the shared file and its hash)."""
    entry = {"file": file, "examples": examples, "sha256": sha256}
    if references:
        entry["references"] = {"file": references[0], "sha256": references[1]}
    return tuple(read_outcomes(run_dir, entry))


def outcome_rows(coll: Collection, run: dict[str, Any]) -> dict[str, dict] | None:
    """A run's outcome rows by example id; None when it recorded none or its file cannot be read. Where two
    folders hold the same run id (one grid run on two machines), the file whose hash the result records is
    the run's."""
    entry = run.get("outcomes")
    if not isinstance(entry, dict):
        return None
    for directory in coll.directories:
        if result_path(directory, run["run_id"]).is_file():
            try:
                shared = entry.get("references")
                rows = _read(directory / run["run_id"], entry.get("file", "outcomes.jsonl.gz"),
                             entry.get("examples"), entry.get("sha256"),
                             (shared["file"], shared.get("sha256")) if isinstance(shared, dict) else None)
            except OutcomesError:
                continue
            return {row["id"]: row for row in rows}
    return None


def _classes(run: dict[str, Any], rows: list[dict]) -> tuple[str, ...]:
    from peftbench.catalog.tasks import get_task
    from peftbench.errors import UserError

    try:
        return get_task(str((run.get("task") or {}).get("name"))).classes
    except (UserError, KeyError, ValueError):
        return tuple(sorted({normalize_answer(row["references"][0]) for row in rows}))


def _codes(answers: list[str], classes: tuple[str, ...]) -> np.ndarray:
    """Class indices; an answer outside the label set is class len(classes), as metrics.confusion_matrix."""
    index = {normalize_answer(name): i for i, name in enumerate(classes)}
    return np.array([index.get(normalize_answer(a), len(classes)) for a in answers], dtype=np.int64)


def corpus_metric(name: str, labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """MCC or macro-F1 from class codes (k classes plus code k for any other answer), as catalog.metrics."""
    c = np.bincount(labels * (k + 1) + predicted, minlength=(k + 1) ** 2).reshape(k + 1, k + 1).astype(float)
    if name == "mcc":
        t, p, n, correct = c.sum(axis=1), c.sum(axis=0), c.sum(), np.trace(c)
        denominator = math.sqrt(max((n * n - p @ p) * (n * n - t @ t), 0.0))
        return float((correct * n - t @ p) / denominator) if denominator > 0 else 0.0
    tp, guessed, actual = np.diag(c)[:k], c.sum(axis=0)[:k], c.sum(axis=1)[:k]
    f1 = np.divide(2 * tp, guessed + actual, out=np.zeros(k), where=guessed + actual > 0)
    return float(f1.mean())


def example_test(coll: Collection, pairs: list[tuple[dict, dict]], metric: str | None = None) -> paired.Test | None:
    """The within-seed paired test of ``metric`` (default: the headline) over the examples both runs of each
    seed answered; None when a run has no outcomes or the metric is unknown."""
    metric = metric or headline(pairs[0][0])
    if metric not in METRICS:
        return None
    strata = []
    for run_a, run_b in pairs:
        rows_a, rows_b = outcome_rows(coll, run_a), outcome_rows(coll, run_b)
        if rows_a is None or rows_b is None:
            return None
        shared = [i for i in rows_a if i in rows_b]
        strata.append(([rows_a[i] for i in shared], [rows_b[i] for i in shared]))
    if not all(a for a, _ in strata):
        return None
    spec = METRICS.get(metric)
    if spec.aggregate == "mean":
        if any(metric not in row.get("scores", {}) for a, b in strata for row in a + b):
            return None  # an example metric the rows do not score (rouge_l of a classification task)
        a = [np.array([row["scores"][metric] for row in rows]) for rows, _ in strata]
        b = [np.array([row["scores"][metric] for row in rows]) for _, rows in strata]
        if all(set(np.unique(x)) <= {0.0, 1.0} for x in a + b):
            return paired.mcnemar(np.concatenate(a), np.concatenate(b))
        return paired.bootstrap_difference([x.size for x in a], lambda s, idx: float(a[s][idx].mean()
                                                                                    - b[s][idx].mean()),
                                           paired.difference_bounds(spec.bounds))
    classes = _classes(pairs[0][0], strata[0][0])
    k = len(classes)
    coded = [(_codes([r["references"][0] for r in ra], classes), _codes([r["prediction"] for r in ra], classes),
              _codes([r["prediction"] for r in rb], classes)) for ra, rb in strata]
    return paired.bootstrap_difference(
        [labels.size for labels, _, _ in coded],
        lambda s, idx: corpus_metric(metric, coded[s][0][idx], coded[s][1][idx], k)
        - corpus_metric(metric, coded[s][0][idx], coded[s][2][idx], k),
        paired.difference_bounds(spec.bounds))


def example_view(coll: Collection, pairs: list[tuple[dict, dict]]) -> str | None:
    """"test sample only: difference +0.0500 [+0.0100, +0.0900], McNemar p 0.012, 300 test examples"."""
    test = example_test(coll, pairs)
    if test is None:
        return None
    text = (f"test sample only: difference {test.estimate:+.4f} [{test.low:+.4f}, {test.high:+.4f}], "
            f"{test.name} p {test.p:.3f}, {test.n} test examples")
    if test.p >= paired.ALPHA and test.estimate and math.isfinite(test.needed):
        text += f" (80% power at this difference: {int(test.needed)} test examples)"
    return text
