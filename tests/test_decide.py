"""`peftbench decide` (analysis/decide.py): seeds go only to the cells of undecided comparisons, and the loop
stops when all are decided, when the rest are futile, or at its budget; it resumes like any sweep.

The grid is LoRA and BitFit on both synthetic tasks at 8 training examples, where one claim compares them:
BitFit's peak memory against LoRA's, once per task (Holm over two comparisons). Its results are written by
hand (``_Fake``), so that the differences are known: on the classification task BitFit takes 1 GiB less in
every seed (decided at six seeds), on the generation task the differences of ``GENERATION`` (decided at
eight). A fake clock counts 60 s per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import tiny_overrides

from peftbench.analysis import decide as d
from peftbench.config import RunConfig, load_sweep
from peftbench.running.results import atomic_write_json, result_path

pytestmark = pytest.mark.integration

GiB = 2**30
GENERATION = [-0.30, -0.05, -0.20, -0.10, -0.25, 0.0, -0.15, -0.20, -0.10, -0.20, -0.05, -0.3]
"""BitFit − LoRA peak memory on the generation task by seed, GiB: the anytime p falls below 0.05 at 8 seeds."""
NOISE = [0.10, -0.12, 0.05, -0.02, 0.08, -0.09, 0.01, -0.04]
"""Differences of mean zero: futile within 12 seeds."""


class _Fake:
    """Writes a result for each run it is asked for (none when one is there), advancing ``now`` 60 s."""

    def __init__(self, generation: list[float]):
        self.generation, self.now, self.ran = generation, 0.0, []

    def clock(self) -> float:
        return self.now

    def __call__(self, run: RunConfig, results_dir: Path, retry_failed: bool, progress: bool = True) -> str:
        path = result_path(results_dir, run.run_id())
        if path.exists():
            return "skipped"
        atomic_write_json(path, _result(run, self._peak(run)))
        self.now += 60.0
        self.ran.append((run.task, run.method, run.seed))
        return "ok"

    def _peak(self, run: RunConfig) -> float:
        wobble = 0.01 * ((run.seed * 7) % 5 - 2) * GiB  # a seed effect both methods share
        if run.method == "lora":
            return 2 * GiB + wobble
        if run.task == "synthetic_classification":
            return 1 * GiB + wobble + 0.001 * run.seed * GiB
        return 2 * GiB + wobble + self.generation[run.seed] * GiB


def _result(run: RunConfig, peak: float) -> dict:
    task_type = "classification" if run.task == "synthetic_classification" else "generation"
    metric = "accuracy" if task_type == "classification" else "rouge_l"
    return {"schema_version": 1, "run_id": run.run_id(), "status": "ok", "config": run.to_dict(), "seed": run.seed,
            "task": {"name": run.task, "type": task_type, "metric": metric, "headline_metric": metric},
            "data": {"sample_hash": f"{run.task}-{run.seed}"}, "best_epoch": 2, "max_epochs": 3,
            "metrics": {"test": {metric: 0.5}, "score": 0.5, "headline": metric},
            "time": {"total_s": 60.0}, "memory": {"peak_bytes": peak}}


def _sweep(results_dir: Path, seeds=(0, 1, 2, 3, 4, 5)):
    return load_sweep(None, tiny_overrides(results_dir, seeds=seeds, extra=(
        "tasks=[synthetic_classification,synthetic_data_to_text]", "train.max_epochs=1")))


def _added(outcome: d.DecideOutcome) -> list[tuple[str, str, int]]:
    return [(key.task, key.method, seed) for key, seed in outcome.added]


@pytest.mark.unit
def test_seeds_go_to_the_undecided_comparison_only_and_the_loop_stops_at_its_budget_then_resumes(tmp_path):
    fake, sweep = _Fake(GENERATION), _sweep(tmp_path / "results")
    first = d.decide(sweep, budget_s=24 * 60 + 120, max_seeds=12, run=fake, clock=fake.clock)
    assert len(fake.ran) == 26 and first.stopped == d.BUDGET  # the grid's 24 runs, then one step of two
    assert _added(first) == [("synthetic_data_to_text", "bitfit", 6), ("synthetic_data_to_text", "lora", 6)]
    standing = {s.comparison.where.split(", ")[1]: s for s in first.standings}
    assert standing["synthetic_classification"].decided and not standing["synthetic_data_to_text"].decided
    assert len(standing["synthetic_data_to_text"].comparison.diffs) == 7

    fake.ran.clear()
    second = d.decide(sweep, budget_s=3600, max_seeds=12, run=fake, clock=fake.clock)  # resumes: nothing re-run
    assert second.stopped == d.ALL_DECIDED and _added(second) == [
        ("synthetic_data_to_text", "bitfit", 7), ("synthetic_data_to_text", "lora", 7)]
    assert fake.ran == [("synthetic_data_to_text", "bitfit", 7), ("synthetic_data_to_text", "lora", 7)]
    assert "stopped: all decided; 2 run(s) added" in d.format_outcome(second)


@pytest.mark.unit
def test_a_comparison_that_cannot_be_decided_within_max_seeds_is_futile_and_gets_no_seed(tmp_path):
    fake = _Fake(NOISE)
    outcome = d.decide(_sweep(tmp_path / "results"), budget_s=10 * 3600, max_seeds=12, run=fake, clock=fake.clock)
    assert outcome.stopped == d.FUTILE and outcome.added == [] and len(fake.ran) == 24
    assert "futile: ia3-bitfit-least-memory: " in d.format_outcome(outcome)


@pytest.mark.unit
def test_budgets_read_as_durations():
    assert [d.parse_duration(t) for t in ("2h", "90m", "1h30m", "45s", "3600")] == [7200, 5400, 5400, 45, 3600]
    with pytest.raises(Exception, match="not a duration"):
        d.parse_duration("two hours")


@pytest.mark.unit
def test_peftbench_decide_is_a_command_with_run_s_arguments_and_a_budget():
    from peftbench.cli import build_parser

    args = build_parser().parse_args(["decide", "quickstart", "seeds=[0,1,2]", "--budget", "2h", "--max-seeds", "8"])
    assert (args.config, args.overrides, args.budget, args.max_seeds) == ("quickstart", ["seeds=[0,1,2]"], "2h", 8)
    assert args.func is d.cmd_decide


@pytest.mark.integration
@pytest.mark.slow  # child processes: over 10 s
def test_decide_trains_a_tiny_model_for_the_undecided_cells_only_and_stops_at_its_budget(tmp_path):
    """Seeds 0-5 are written by hand; the seed the loop adds is trained (t5-tiny-random, one epoch)."""
    results = tmp_path / "results"
    fake, sweep = _Fake(GENERATION), _sweep(results)
    for run in sweep.expand():
        fake(run, results, False)
    written = {run.run_id() for run in sweep.expand()}

    def clock() -> float:  # 60 s for each result the loop itself wrote
        return 60.0 * len({p.parent.name for p in results.glob("*/result.json")} - written)

    outcome = d.decide(sweep, budget_s=120, max_seeds=12, clock=clock)  # peftbench run's local executor
    trained = sorted({p.parent.name for p in results.glob("*/result.json")} - written)
    assert [name.split("-")[1:5] for name in trained] == [
        ["bitfit", "synthetic_data_to_text", "8", "s6"], ["lora", "synthetic_data_to_text", "8", "s6"]]
    assert all(json.loads((results / name / "result.json").read_text())["status"] == "ok" for name in trained)
    assert outcome.stopped == d.BUDGET
    assert _added(outcome) == [("synthetic_data_to_text", "bitfit", 6), ("synthetic_data_to_text", "lora", 6)]
