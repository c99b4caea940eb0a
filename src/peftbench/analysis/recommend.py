"""Which fine-tuning method to use, given a task type, a data size and the constraint that matters most.

Without results this is the decision framework of Pu et al. (2023) §3.2: which methods the paper recommends
for each (constraint, data scale), ordered within that choice by the paper's own numbers (Tables 1 and 4,
parameter counts of §A.4) for the asked task type. With a results directory the same question is answered
from measured numbers at the closest data scale that was run for that task type.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.analysis.paper_numbers import (
    PAPER,
    PAPER_METHODS,
    PAPER_PARAMS,
    PAPER_RULES,
    PAPER_SPEEDUPS,
    PAPER_TABLE1,
    PAPER_TABLE4_SECONDS,
    PAPER_TASKS,
)
from peftbench.analysis.report import collect as c
from peftbench.analysis.report.comparisons import (
    HIGHER,
    LOWER,
    PEAK_MEMORY,
    SCORE,
    TIME_TO_BEST,
    order_between,
)
from peftbench.catalog.methods import method_label
from peftbench.constants import SCALES, TASK_TYPES
from peftbench.errors import UserError, unknown

CONSTRAINTS = ("time", "memory", "performance")
@dataclass
class Recommendation:
    method: str
    rank: int | None
    """1 is best; None for a method left out of the ranking (the reason says why)."""
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def data_scale(examples: int) -> str:
    """The paper's data scales (§3.1, ``constants.SCALES``): low ≤ 100 examples, medium ≤ 1,000, high beyond."""
    return next((name for name, (cap, _) in SCALES.items() if examples <= cap), "high")


def recommend(
    task_type: str, examples: int, constraint: str, results_dir: Path | None = None
) -> list[Recommendation]:
    """Ranked methods for the question; from the paper's framework, or from ``results_dir`` when given."""
    if task_type not in TASK_TYPES:
        raise unknown("task type", task_type, TASK_TYPES)
    if constraint not in CONSTRAINTS:
        raise unknown("constraint", constraint, CONSTRAINTS)
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise UserError(f"--examples must be a positive number of training examples, got {examples!r}")
    if results_dir is None:
        return paper_recommendations(task_type, examples, constraint)
    return measured_recommendations(task_type, examples, constraint, Path(results_dir))


# ---- the paper's framework ----------------------------------------------------------------------------


def _paper_columns(task_type: str, table: dict, method: str, scale: str) -> tuple[float, ...]:
    values = table[(method, scale)]
    return values[:2] if task_type == "classification" else values[2:]


def _paper_key(task_type: str, constraint: str, scale: str, method: str) -> float:
    """Lower is better: the paper's own number for the constraint, used to order methods."""
    if constraint == "performance":
        return -_mean(_paper_columns(task_type, PAPER_TABLE1, method, scale))
    if constraint == "memory":  # Table 5: score per trainable parameter
        return -_mean(_paper_columns(task_type, PAPER_TABLE1, method, scale)) / PAPER_PARAMS[method]
    # Table 4 has no high-resource timings; the medium ones are the closest the paper measured.
    return _time_ratio(task_type, method, "medium" if scale == "high" else scale)


def _time_ratio(task_type: str, method: str, scale: str) -> float:
    own = _paper_columns(task_type, PAPER_TABLE4_SECONDS, method, scale)
    full = _paper_columns(task_type, PAPER_TABLE4_SECONDS, "full", scale)
    return _mean([a / b for a, b in zip(own, full, strict=True)])


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _paper_evidence(task_type: str, constraint: str, scale: str, method: str) -> tuple[str, dict[str, Any]]:
    """The paper's numbers behind a method's place, as a sentence and as data."""
    names = PAPER_TASKS[task_type]
    if constraint == "time":
        return _paper_time_evidence(task_type, scale, method)
    values = _paper_columns(task_type, PAPER_TABLE1, method, scale)
    if constraint == "performance":
        text = ", ".join(f"{v:.4f} on {n}" for v, n in zip(values, names, strict=True))
        return f"Table 1 ({scale}): {text}.", {
            "table": "Table 1",
            "scores": dict(zip(names, values, strict=True)),
        }
    per_100k = [v / PAPER_PARAMS[method] * 1e5 for v in values]
    text = ", ".join(f"{v:.3g} on {n}" for v, n in zip(per_100k, names, strict=True))
    sentence = f"{PAPER_PARAMS[method]:,} trainable parameters (§A.4); score per 100k parameters: {text}."
    if method == "ia3":
        sentence += (" (IA)3 rescales activations element-wise with the fewest parameters; the paper finds it the "
                     "least memory (§3.2), but each learned vector keeps the tensor it scales for the backward pass, "
                     "which measured runs count as activations (claim ia3-bitfit-least-method-memory).")
    per_task = dict(zip(names, per_100k, strict=True))
    return sentence, {"table": "Table 5", "trainable": PAPER_PARAMS[method], "per_100k": per_task}


def _paper_time_evidence(task_type: str, scale: str, method: str) -> tuple[str, dict[str, Any]]:
    if scale == "high":
        if method == "full":
            return (
                "No high-resource timings in the paper (one epoch only); it notes most PEFT methods converge "
                "faster with more data, so full tuning's low/medium-resource speed advantage is not "
                "expected to hold.",
                {"table": "Table 4"},
            )
        ratio = _time_ratio(task_type, method, "medium")
        return (
            f"No high-resource timings in the paper (one epoch only); it notes PEFT converges faster with "
            f"more data. Table 4 medium: {ratio:.2f}x full tuning's run time.",
            {"table": "Table 4", "time_ratio": ratio},
        )
    if method == "full":
        offset = 0 if task_type == "classification" else 2
        speedups = PAPER_SPEEDUPS[scale][offset : offset + 2]
        text = ", ".join(f"{s}% on {n}" for s, n in zip(speedups, PAPER_TASKS[task_type], strict=True))
        return f"§3.2/Table 4 ({scale}): full tuning converges faster, a speed-up of {text}.", {
            "table": "Table 4"
        }
    ratio = _time_ratio(task_type, method, scale)
    return f"Table 4 ({scale}): {ratio:.2f}x full tuning's run time on average.", {
        "table": "Table 4",
        "time_ratio": ratio,
    }


def paper_recommendations(task_type: str, examples: int, constraint: str) -> list[Recommendation]:
    scale = data_scale(examples)
    chosen, quote = PAPER_RULES[(constraint, scale)]
    others = [m for m in PAPER_METHODS if m not in chosen]
    ordered = [
        sorted(group, key=lambda m: _paper_key(task_type, constraint, scale, m)) for group in (chosen, others)
    ]
    context = {
        "source": "paper",
        "section": "3.2",
        "task_type": task_type,
        "examples": examples,
        "constraint": constraint,
        "scale": scale,
    }
    recommendations = []
    for rank, method in enumerate(ordered[0] + ordered[1], start=1):
        evidence_text, evidence = _paper_evidence(task_type, constraint, scale, method)
        if method in chosen:
            verdict = (
                f'{PAPER} §3.2 recommends it for {constraint}-constrained {scale}-resource data: "{quote}".'
            )
        else:
            verdict = f"Not among §3.2's recommendations for {constraint}-constrained {scale}-resource data."
        recommendations.append(
            Recommendation(
                method,
                rank,
                f"{verdict} {evidence_text}",
                {**context, **evidence, "recommended_by_paper": method in chosen},
            )
        )
    prompt = _paper_columns(task_type, PAPER_TABLE1, "prompt", scale)
    recommendations.append(
        Recommendation(
            "prompt",
            None,
            f"Excluded, as the paper does (§A.5): prompt tuning performs noticeably worse than the other PEFT "
            f"techniques (Table 1 {scale}: {', '.join(f'{v:.4f}' for v in prompt)}), so §3.2 leaves it out.",
            {**context, "table": "Table 1", "scores": dict(zip(PAPER_TASKS[task_type], prompt, strict=True))},
        )
    )
    return recommendations


# ---- from measured results ----------------------------------------------------------------------------


def _nominal_examples(scale: str | int) -> int | None:
    return scale if isinstance(scale, int) else c.SCALE_EXAMPLES.get(scale)


def closest_scale(examples: int, scales) -> str | int:
    """The scale whose (nominal) training-set size is closest to ``examples`` on a log scale."""
    sized = [(s, n) for s in scales if (n := _nominal_examples(s))]
    if not sized:
        raise UserError(
            f"no results at a known data scale (low, medium, high or a number); found {sorted(map(str, scales))}"
        )
    return min(sized, key=lambda sn: (abs(math.log(examples) - math.log(sn[1])), sn[1]))[0]


def _measured_units(coll: c.Collection, task_type: str) -> dict[str | int, dict[str, list[c.Cell]]]:
    """scale -> method -> cells with ok runs (baseline variant, every model and task of the task type; reference
    rows, which train nothing, are not ranked)."""
    from peftbench.analysis.report.references import is_reference

    units: dict[str | int, dict[str, list[c.Cell]]] = {}
    for key, cell in coll.cells.items():
        if is_reference(cell.runs[0]):
            continue
        if key.ablation is None and cell.ok_runs and coll.task_info(key.task).get("type") == task_type:
            units.setdefault(key.scale, {}).setdefault(key.method, []).append(cell)
    return units


def _describe(cell: c.Cell, metric: str, many_models: bool, constraint: str) -> str:
    key, n = cell.key, len(cell.ok_runs)
    score, seconds = cell.stat(c.score), cell.stat(c.train_to_best_seconds)
    model = f"{key.model}, " if many_models else ""
    text = f"{score.mean:.2f} {metric}" if score else "no score"
    text += f" on {key.task} ({model}{key.scale}, {n} seed{'s' if n > 1 else ''})"
    text += f", {seconds.mean / 60:.1f} min" if seconds else ", time not recorded"
    if constraint != "memory":
        return text
    memory, trainable = cell.stat(c.peak_bytes), cell.stat(c.trainable_params)
    if memory:
        text += f", peak {memory.mean / 2**30:.2f} GiB"
    if trainable:
        text += f", {trainable.mean:,.0f} trainable params"
    return text


def _measured_key(cells: list[c.Cell], constraint: str) -> tuple[float, float]:
    """Lower is better; a quantity no run recorded sorts last."""

    def mean_of(quantity) -> float:
        stats = [s.mean for cell in cells if (s := cell.stat(quantity)) is not None]
        return _mean(stats) if stats else math.inf

    if constraint == "time":
        return mean_of(c.train_to_best_seconds), 0.0
    if constraint == "memory":
        return mean_of(c.peak_bytes), mean_of(c.trainable_params)
    score = mean_of(c.score)
    return (-score if score != math.inf else math.inf), 0.0


def _criterion(cells: list[c.Cell], constraint: str, metric: str) -> str:
    primary, secondary = _measured_key(cells, constraint)
    if primary == math.inf:
        return f"no {constraint} measurement recorded"
    if constraint == "time":
        return f"mean training time to the best epoch {primary / 60:.1f} min"
    if constraint == "memory":
        return f"mean peak memory {primary / 2**30:.2f} GiB, {secondary:,.0f} trainable params"
    return f"mean {metric} {-primary:.4f}"


def measured_recommendations(
    task_type: str, examples: int, constraint: str, results_dir: Path
) -> list[Recommendation]:
    coll = c.collect(results_dir)
    units = _measured_units(coll, task_type)
    if not units:
        raise UserError(
            f"no ok results for {task_type} tasks under {results_dir}; "
            "run without --results for the paper's framework"
        )
    scale = closest_scale(examples, units)
    by_method = units[scale]
    tasks = {cell.key.task for cells in by_method.values() for cell in cells}
    metrics = {task: c.headline_metric(coll.task_info(task)) for task in tasks}  # CoLA's is MCC, not accuracy
    many_models = len({cell.key.model for cells in by_method.values() for cell in cells}) > 1
    # A method measured on fewer of the tasks ranks after those measured on more: a mean over other tasks
    # (CoLA's MCC beside AG News's accuracy) is not a comparison.
    ranked = sorted(by_method, key=lambda m: (-len({cell.key.task for cell in by_method[m]}),
                                              _measured_key(by_method[m], constraint), m))
    threshold = measured_threshold(coll, task_type, examples)
    if constraint == "performance" and threshold["ahead"] in by_method:  # the crossover decides at this size
        ranked.remove(threshold["ahead"])
        ranked.insert(0, threshold["ahead"])
    paper_first = paper_recommendations(task_type, examples, constraint)[0].method
    recommendations = []
    for rank, method in enumerate(ranked, start=1):
        cells = by_method[method]
        covered = {cell.key.task for cell in cells}
        criterion = _criterion(cells, constraint, "/".join(sorted({metrics[task] for task in covered})))
        reason = f"{criterion[0].upper()}{criterion[1:]}. {method}: "
        reason += "; ".join(_describe(cell, metrics[cell.key.task], many_models, constraint) for cell in cells) + "."
        if len(covered) < len(tasks):
            reason += f" Measured on {len(covered)} of the {len(tasks)} {task_type} tasks only."
        if rank == 1 and constraint == "performance" and method == threshold["ahead"]:
            reason += f" First by the measured crossover: {threshold['text']}"
        elif rank == 1 and method != paper_first:
            reason += (f" The paper's §3.2 framework would put {method_label(paper_first)} first for "
                       f"{data_scale(examples)}-resource data; ")
            reason += (_lead(coll, cells, by_method[paper_first], constraint) if paper_first in by_method
                       else "it was not measured here.")
        elif rank == 1 and len(ranked) > 1:
            reason += f" Against {method_label(ranked[1])}: " + _lead(coll, cells, by_method[ranked[1]], constraint)
        evidence = {
            "source": "results",
            "results_dir": str(results_dir),
            "task_type": task_type,
            "examples": examples,
            "constraint": constraint,
            "scale": scale,
            "requested_scale": data_scale(examples),
            "runs": [r["run_id"] for cl in cells for r in cl.ok_runs],
            "threshold": threshold,
        }
        recommendations.append(Recommendation(method, rank, reason, evidence))
    return recommendations


LEAD_MEASURES = {"time": (TIME_TO_BEST, LOWER), "memory": (PEAK_MEMORY, LOWER), "performance": (SCORE, HIGHER)}
"""What each constraint compares, and which way is better."""


def _lead(coll: c.Collection, first: list[c.Cell], other: list[c.Cell], constraint: str) -> str:
    """"these measurements say otherwise (...)." when the first method is decided ahead on every task both
    ran, paired by seed; else that the order is not decided, with each task's difference."""
    order, decided = order_between(coll, first, other, *LEAD_MEASURES[constraint])
    verdict = "these measurements say otherwise" if decided else "these measurements do not decide the order"
    return f"{verdict} (paired by seed: {order})."


PAPER_THRESHOLDS = "the paper's fixed data-size thresholds (low ≤ 100, medium ≤ 1,000 examples)"


def measured_threshold(coll: c.Collection, task_type: str, examples: int) -> dict[str, Any]:
    """The data-size threshold the answer uses: the measured crossovers of ``task_type``'s tasks
    (``report/datasize.py``: full tuning against each PEFT method over numeric scales) where the results hold
    any, else the paper's fixed thresholds. ``ahead``: the method the crossovers put ahead at ``examples``
    when they agree (None: undecided, or no crossover); ``text`` says which threshold was used."""
    from peftbench.analysis.report.datasize import crossovers

    found = [x for x in crossovers(coll) if x.task_type == task_type and x.comparisons]
    if not found:
        return {"source": "paper", "ahead": None, "crossovers": [],
                "text": f"no measured crossover for {task_type} tasks in these results: {PAPER_THRESHOLDS}."}
    verdicts = {x.ahead_at(examples) for x in found} - {None}
    ahead = verdicts.pop() if len(verdicts) == 1 else None
    named = "; ".join(f"{x.model} on {x.task}, full tuning vs {x.method} ({x.epochs} epochs max): {x.bracket()}"
                      for x in found)
    verdict = (f"at {examples} examples {method_label(ahead)} is ahead" if ahead
               else f"at {examples} examples no method is decidedly ahead")
    records = [{"model": x.model, "task": x.task, "method": x.method, "epochs": x.epochs,
                "full_leads_at": x.leads_at("full"), "peft_leads_at": x.leads_at("peft")} for x in found]
    return {"source": "measured crossover", "ahead": ahead, "crossovers": records,
            "text": f"the measured crossover ({named}); {verdict}. Used instead of {PAPER_THRESHOLDS}."}


def format_recommendations(recommendations: list[Recommendation]) -> str:
    """A numbered list, one method per entry with its reason; excluded methods last."""
    if not recommendations:
        return "No method to recommend."
    context = recommendations[0].evidence
    source = (
        f"{PAPER} §3.2"
        if context.get("source") == "paper"
        else f"results in {context.get('results_dir')} at the closest data scale, {context.get('scale')}"
    )
    lines = [
        f"{context.get('constraint', '?')}-constrained {context.get('task_type', '?')} with "
        f"{context.get('examples', '?')} examples ({context.get('requested_scale', context.get('scale'))}"
        f"-resource), based on {source}:"
    ]
    if "threshold" in context:
        lines.append(textwrap.fill(f"Data-size threshold: {context['threshold']['text']}", width=100,
                                   subsequent_indent="    "))
    for rec in sorted(recommendations, key=lambda r: (r.rank is None, r.rank or 0)):
        head = f"{rec.rank}." if rec.rank is not None else "excluded:"
        body = textwrap.fill(rec.reason, width=100, initial_indent="    ", subsequent_indent="    ")
        lines.append(f"{head} {method_label(rec.method)} ({rec.method})\n{body}")
    return "\n".join(lines)
