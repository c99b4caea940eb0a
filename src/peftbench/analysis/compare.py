"""``peftbench compare A B``: two result folders that differ in a setting, run by run.

A setting that is not a method (early stopping's patience, a learning rate, a speed-up, another machine)
can still move the methods' scores, and with them the verdicts a report draws. Run the same grid twice, once
with each value of the setting, each into a folder of its own, and compare:

    peftbench compare results/patience-1 results/patience-2

Each cell (model, task, scale, method) that both folders ran is paired seed by seed, as ``claims`` pairs two
methods (the same seed draws the same training and test sample, ``data.sample_hash``): the headline score's
mean difference B − A with its paired-t interval over seeds and, where both sides kept per-example outcomes,
the within-seed test over the test examples; then the epochs trained and the best epoch on each side. The
p-values are Holm-corrected over every cell compared. Then, per (model, task, scale), the methods ranked by
mean score on each side, and each pair of methods whose order differs, with whether A's own paired comparison
of the two was decided: a setting that reorders undecided pairs moves noise, one that reorders decided pairs
moves the benchmark's answer.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from peftbench.analysis import paired
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.comparisons import (
    HIGHER,
    SCORE,
    Comparison,
    Measure,
    compare_cells,
)
from peftbench.analysis.report.examples import example_test

SettingChange = tuple[str, Any, Any]


def differing_settings(a: c.Collection, b: c.Collection) -> list[SettingChange]:
    """The config keys (dotted) whose values are one value in every run of ``a`` and another in every run of
    ``b``: what the two folders differ in. Keys that vary within either folder (method, task, seed) are left
    out, so one folder's extra cells do not read as a setting."""
    def constant(coll: c.Collection) -> dict[str, Any]:
        seen: dict[str, set[str]] = {}
        values: dict[str, Any] = {}
        for run in coll.runs:
            for key, value in _flatten(run.get("config") or {}):
                seen.setdefault(key, set()).add(repr(value))
                values[key] = value
        return {key: values[key] for key, reprs in seen.items() if len(reprs) == 1}

    left, right = constant(a), constant(b)
    return [(key, left[key], right[key]) for key in sorted(set(left) & set(right))
            if key != "output_dir" and repr(left[key]) != repr(right[key])]


def _flatten(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def measure_of(metric: str | None) -> Measure:
    """The headline score (None), or the test metric ``metric`` (``metrics.test.<metric>``, e.g. accuracy
    where the headline is MCC)."""
    if metric is None:
        return SCORE
    return Measure(metric, lambda run: c.test_metric(run, metric), metric=metric)


Pairs = list[tuple[dict[str, Any], dict[str, Any]]]
"""A cell's (B run, A run) of each seed both sides ran on the same samples, in seed order."""


def cell_rows(a: c.Collection, b: c.Collection, both: c.Collection,
              measure: Measure = SCORE) -> list[tuple[c.CellKey, Comparison, Pairs]]:
    """Every cell both folders ran, B against A on ``measure`` (Holm over the cells), with its paired
    runs; ``both`` reads the two folders' outcomes."""
    rows = []
    for key in sorted(set(a.cells) & set(b.cells), key=_order):
        where = f"{key.model}, {key.task}, {key.scale}"
        comparison = compare_cells(both, where, b.cells[key], a.cells[key], measure, HIGHER)
        rows.append((key, comparison, comparison.pairs))
    adjusted = paired.holm([x.test.p if x.test else math.nan for _, x, _ in rows])
    for (_, comparison, _), p in zip(rows, adjusted, strict=True):
        comparison.p_adjusted = p
    return rows


def _order(key: c.CellKey) -> tuple:
    task = c.TASK_ORDER.index(key.task) if key.task in c.TASK_ORDER else len(c.TASK_ORDER)
    return key.model, task, key.task, str(key.scale), c.method_order(key.method), str(key.ablation)


def _epochs(runs: list[dict[str, Any]]) -> str:
    """"3, 5, 4 (best 2, 4, 3)": each run's epochs trained and best epoch."""
    trained = ", ".join(str(r.get("epochs")) for r in runs)
    return f"{trained} (best {', '.join(str(r.get('best_epoch')) for r in runs)})"


def ranking_changes(a: c.Collection, b: c.Collection, measure: Measure = SCORE) -> list[str]:
    """Per (model, task, scale) both ran: each side's methods by mean score (best first, ties by name), and
    every pair of methods that one side orders strictly one way and the other strictly the other way, with
    A's paired comparison of the pair (decided at α = 0.05 or not)."""
    lines = []
    groups = sorted({(k.model, k.task, k.scale) for k in set(a.cells) & set(b.cells) if k.ablation is None})
    for model, task, scale in groups:
        shared = [k for k in set(a.cells) & set(b.cells) if (k.model, k.task, k.scale) == (model, task, scale)
                  and k.ablation is None and a.cells[k].stat(measure.value) and b.cells[k].stat(measure.value)]
        mean_a, mean_b = ({k: side.cells[k].stat(measure.value).mean for k in shared} for side in (a, b))
        rank_a, rank_b = (sorted(shared, key=lambda k, m=means: (-m[k], k.method)) for means in (mean_a, mean_b))
        lines.append(f"- {model}, {task}, {scale}: A {_ranking(rank_a, mean_a)}; B {_ranking(rank_b, mean_b)}")
        for first, second in itertools.combinations(rank_a, 2):  # a tie on either side is no change of order
            if mean_a[first] > mean_a[second] and mean_b[first] < mean_b[second]:
                x = compare_cells(a, f"{model}, {task}, {scale}", a.cells[first], a.cells[second], measure,
                                  HIGHER)
                decided = x.test is not None and x.test.p < paired.ALPHA
                lines.append(f"  - {first.method} above {second.method} in A, below in B; in A "
                             f"{'decided' if decided else 'undecided'}: {_difference(x)}")
    return lines


def _ranking(keys: list[c.CellKey], means: dict[c.CellKey, float]) -> str:
    """Methods best first, "=" between equal means (in the order of their names)."""
    text = f"{keys[0].method} {means[keys[0]]:.4f}" if keys else ""
    for previous, key in itertools.pairwise(keys):
        text += f" {'=' if means[key] == means[previous] else '>'} {key.method} {means[key]:.4f}"
    return text


def _difference(x: Comparison) -> str:
    if x.test is None:
        return "no seed shared"
    t = x.test
    return f"{t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}], {t.name} p {t.p:.3f}, {t.n} seed{'s' * (t.n != 1)}"


def report(dir_a: Path, dir_b: Path, metric: str | None = None) -> str:
    """The comparison as Markdown (see the module docstring)."""
    a, b, both = c.collect(dir_a), c.collect(dir_b), c.collect([dir_a, dir_b])
    changes = differing_settings(a, b) or [("(none found)", None, None)]
    lines = [f"# {dir_b} (B) against {dir_a} (A)", "",
             "Settings that differ: " + "; ".join(f"`{k}` {va!r} → {vb!r}" for k, va, vb in changes), "",
             "Each cell over the seeds both sides ran on the same samples: the mean score of each side (the headline, or --metric), "
             "B − A with its paired-t interval over those seeds (the exact sign-flip test's where the differences do not "
             "vary) and its p-value (Holm over the cells), the same "
             "difference tested over the pooled test examples, and each seed's epochs trained (best epoch).", "",
             "| cell | seeds | A score | B score | B − A [95 %] over seeds | p (Holm) | over test examples: p |"
             " epochs A (best) | epochs B (best) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    measure = measure_of(metric)
    lines += [_cell_line(key, x, pairs, both, measure) for key, x, pairs in cell_rows(a, b, both, measure)]
    lines += ["", "## Method rankings", "", *ranking_changes(a, b, measure)]
    return "\n".join(lines) + "\n"


def _cell_line(key: c.CellKey, x: Comparison, pairs: Pairs, both: c.Collection, measure: Measure) -> str:
    cell = f"| {key.label} ({x.where}) |"
    if x.test is None or not pairs:
        return f"{cell} – | – | – | {x.text} | – | – | – | – |"
    t = x.test
    seeds = ", ".join(str(run_b.get("seed")) for run_b, _ in pairs)
    mean_a, mean_b = (float(np.mean([measure.value(pair[side]) for pair in pairs])) for side in (1, 0))
    examples = example_test(both, pairs, measure.metric)  # the same, over examples
    by_example = f"{examples.name} p {examples.p:.3f}" if examples else "–"
    p = "–" if math.isnan(t.p) else f"{t.p:.3f} ({x.p_adjusted:.3f})"
    # Differences that do not vary have no t: the exact sign-flip test, whose interval on few seeds is the range.
    test = "" if t.name == "paired t" else f" ({t.name})"
    return (f"{cell} {seeds} | {mean_a:.4f} | {mean_b:.4f} | {t.estimate:+.4f} [{t.low:+.4f}, {t.high:+.4f}]{test} | {p} "
            f"| {by_example} | {_epochs([ra for _, ra in pairs])} | {_epochs([rb for rb, _ in pairs])} |")


def cmd_compare(args: argparse.Namespace) -> int:
    text = report(Path(args.a), Path(args.b), args.metric)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="two result folders that differ in a setting: scores paired seed by seed, rankings")
    parser.add_argument("a", help="the first results folder (A)")
    parser.add_argument("b", help="the second results folder (B), the same grid with one setting changed")
    parser.add_argument("--metric", help="a test metric to compare instead of each task's headline score "
                                         "(metrics.test.<name>, e.g. accuracy)")
    parser.add_argument("--out", help="also write the Markdown here")
    parser.set_defaults(func=cmd_compare)
