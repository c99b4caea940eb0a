"""The memory breakdown's unit pieces: pass planning under a token budget, reading old and new results'
breakdowns, the report's Table 12 and breakdown figure, and the export's columns."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import torch
from report_fixtures import make_result
from torch import nn

from peftbench.analysis.export import COLUMNS
from peftbench.analysis.report.collect import collect
from peftbench.analysis.report.memory import BREAKDOWN_PARTS, breakdown_figures, breakdown_of, memory_table
from peftbench.recipe.batching import IGNORE, Encoded, padded_size, plan_passes
from peftbench.recipe.checkpoint import (
    BEST_FILE,
    WeightsOnDisk,
    load_checkpoint,
    remove_checkpoint,
    restore,
    save_checkpoint,
    snapshot,
)
from peftbench.recipe.memory import PhasePeaks
from peftbench.recipe.memory_estimate import LiveBytes
from peftbench.running.results import atomic_write_json, result_path

pytestmark = pytest.mark.unit


def _items(count: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        prompt, target = [5] * rng.randrange(4, 41), [6] * rng.randrange(1, 13) + [1]
        items.append(Encoded(prompt + target, [IGNORE] * len(prompt) + target, prompt))
    return items



def test_every_pass_fits_the_budget_and_the_shares_sum_to_one():
    items = _items(32, 1)
    group = [list(range(i, i + 8)) for i in range(0, 32, 8)]
    for fuse in (False, True):
        passes = plan_passes(items, group, "causal", 8, 1, fuse=fuse, max_tokens=100)
        assert all(padded_size(items, [[r for _, piece, _ in p for r in piece]], "causal") <= 100 for p in passes)
        shares: dict[int, float] = {}
        for segments in passes:
            for position, _, share in segments:
                shares[position] = shares.get(position, 0.0) + share
        assert shares == pytest.approx({position: 1.0 for position in range(4)})
        rows = sorted(r for p in passes for _, piece, _ in p for r in piece)
        assert rows == list(range(32))  # every row once



def test_no_budget_plans_the_passes_as_before():
    items = _items(32, 2)
    group = [list(range(i, i + 8)) for i in range(0, 32, 8)]
    assert plan_passes(items, group, "causal", 8, 1, fuse=False) == [[(k, batch, 1.0)] for k, batch in
                                                                      enumerate(group)]
    fused = plan_passes(items, group, "causal", 8, 1, fuse=True)
    assert [[position for position, _, _ in p] for p in fused] == [[0, 1, 2, 3]]  # 32 short rows: one pass


BREAKDOWN = {"runtime": 500 * 2**20, "weights": 540 * 2**20, "gradients": 540 * 2**20,
             "optimizer_state": 1080 * 2**20, "activations": 300 * 2**20, "overhead": 100 * 2**20}


def test_old_results_read_as_a_breakdown_of_gradients_and_optimiser_state():
    old = {"peak_bytes": 10, "trainable_param_bytes": 4, "optimizer_state_bytes": 8}
    assert breakdown_of(old) == {"runtime": None, "weights": None, "gradients": 4, "optimizer_state": 8,
                                 "activations": None, "overhead": None}
    assert breakdown_of({"breakdown": BREAKDOWN}) == BREAKDOWN and tuple(BREAKDOWN) == BREAKDOWN_PARTS


def _write(tmp_path, results):
    for result in results:
        atomic_write_json(result_path(tmp_path, result["run_id"]), result)
    return collect(tmp_path)


def test_table_12_shows_the_peak_and_its_parts_in_gib(tmp_path):
    new = make_result(method="full", task="cola", peak_bytes=sum(BREAKDOWN.values()))
    new["memory"].update(breakdown=BREAKDOWN, predicted={"peak_bytes": 2.5 * 2**30}, peak_phase="train")
    old = make_result(method="lora", task="cola", peak_bytes=2**30)
    old["memory"].update(trainable_param_bytes=2**20, optimizer_state_bytes=2**21)
    table = memory_table(_write(tmp_path, [new, old]))
    cells = {row.method: row.cells[0] for row in table.rows()}
    assert table.number == 12 and table.columns == [("cola", "CoLA")]
    assert cells["full"].text == "2.99 = 0.49 + 0.53 + 0.53 + 1.05 + 0.29 + 0.10 (predicted 2.50; in train)"
    assert cells["lora"].text == "1.00 = ? + ? + 0.00 + 0.00 + ? + ?"
    assert cells["full"].csv["activations"] == str(300 * 2**20) and cells["lora"].csv["runtime"] == ""
    assert cells["full"].csv["peak_phase"] == "train" and cells["lora"].csv["peak_phase"] == ""


def test_the_breakdown_figure_is_drawn_only_from_results_that_have_one(tmp_path):
    old = make_result(method="lora", task="cola")
    assert breakdown_figures(_write(tmp_path / "old", [old]), tmp_path / "figures") == []
    new = make_result(method="full", task="cola", peak_bytes=sum(BREAKDOWN.values()))
    new["memory"]["breakdown"] = BREAKDOWN
    [path] = breakdown_figures(_write(tmp_path / "new", [new, old]), tmp_path / "figures")
    assert path.name == "memory_breakdown.png" and path.stat().st_size > 10_000


def test_the_export_reads_both_schemas():
    columns = {column.name: column for column in COLUMNS}
    new = {"memory": {"breakdown": BREAKDOWN}}
    old = {"memory": {"trainable_param_bytes": 4, "optimizer_state_bytes": 8}}
    assert columns["memory_activations_bytes"].get(new) == 300 * 2**20
    assert columns["memory_trainable_param_bytes"].get(new) == 540 * 2**20
    assert columns["memory_trainable_param_bytes"].get(old) == 4
    assert columns["memory_optimizer_state_bytes"].get(old) == 8 and columns["memory_runtime_bytes"].get(old) is None


def test_large_best_weights_are_kept_on_disk_and_restored_from_there(tmp_path):
    trainable = {"a": nn.Parameter(torch.arange(6.0).reshape(2, 3)), "b": nn.Parameter(torch.ones(4))}
    assert isinstance(snapshot(trainable, tmp_path), dict)  # 40 bytes: in memory
    best = snapshot(trainable, tmp_path, spill_bytes=40)
    assert isinstance(best, WeightsOnDisk) and (tmp_path / BEST_FILE).is_file() and sorted(best) == ["a", "b"]
    with torch.no_grad():
        trainable["a"].add_(1.0)
    save_checkpoint(tmp_path, trainable, best, {"epoch": 1})
    _, saved_best, _ = load_checkpoint(tmp_path)
    assert torch.equal(saved_best["a"], torch.arange(6.0).reshape(2, 3))
    restore(trainable, best)
    assert torch.equal(trainable["a"], torch.arange(6.0).reshape(2, 3)) and torch.equal(trainable["b"], torch.ones(4))
    remove_checkpoint(tmp_path)
    assert not (tmp_path / BEST_FILE).exists()


def test_the_token_budget_and_checkpointing_enter_the_id_only_away_from_their_introduction_defaults():
    from speedup_helpers import introduction_speedups

    from peftbench.config import ID_DEFAULTS, RunConfig, TrainConfig

    def run(train: TrainConfig) -> RunConfig:  # the speed-up defaults the ids began with
        return RunConfig(model="llama-tiny-random", method="lora", task="synthetic_classification", scale="low",
                         speedups=introduction_speedups(), train=train)

    assert ID_DEFAULTS["train.max_tokens_per_pass"] is None and ID_DEFAULTS["train.gradient_checkpointing"] is False
    assert run(TrainConfig(max_tokens_per_pass=None)).identity()["settings"] == {}
    # Today's default budget (2048) is a change from the introduction default: part of every id.
    assert run(TrainConfig()).identity()["settings"] == {"train.max_tokens_per_pass": 2048}
    checkpointed = run(TrainConfig(max_tokens_per_pass=None, gradient_checkpointing=True))
    assert checkpointed.identity()["settings"] == {"train.gradient_checkpointing": True}


def test_a_token_budget_below_one_is_refused():
    from peftbench.config import TrainConfig
    from peftbench.errors import UserError

    with pytest.raises(UserError, match="max_tokens_per_pass"):
        TrainConfig(max_tokens_per_pass=0).validate()
    TrainConfig(max_tokens_per_pass=1).validate()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resetting the peak needs Linux's clear_refs")
def test_each_phase_records_its_own_peak_and_the_run_keeps_the_highest():
    phases = PhasePeaks()
    with phases.phase("wide"):
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, every page touched
        del block
    with phases.phase("narrow"):
        small = torch.ones(2**20, dtype=torch.uint8)
        del small
    recorded = phases.record()
    peaks = recorded["phase_peaks"]
    assert recorded["phase_peaks_kind"] == "per_phase"
    assert recorded["peak_phase"] == "wide"
    assert peaks["wide"] - peaks["narrow"] > 60 * 2**20  # the narrow phase starts from the freed resident set
    assert phases.peak_bytes() >= peaks["wide"]
    assert set(peaks) <= {"load", "wide", "narrow", "other"}


def test_live_bytes_counts_each_storage_once_and_uncounts_it_when_freed():
    with LiveBytes() as tracker:
        first = torch.ones(1000)  # 4,000 bytes
        view = first[:10]  # the same storage: not counted again
        second = torch.ones(500, dtype=torch.float64)  # 4,000 bytes
        assert tracker.live == 8000
        del first, view
        assert tracker.live == 4000
        third = second * 2
        del second, third
    assert tracker.live == 0
    assert tracker.peak == 8000  # first and second, or second and third, at once


def test_live_bytes_leaves_out_tensors_allocated_before_that_an_in_place_op_returns():
    weight, moment = torch.ones(1000), torch.zeros(1000)  # 4,000 bytes each, allocated before the mode
    with LiveBytes(existing=[weight, moment]) as tracker:
        moment.mul_(0.9).add_(weight)  # an optimiser step: its outputs are the existing storages
        weight.sub_(moment)
        update = moment * 2  # a new 4,000-byte tensor
        assert tracker.live == 4000
        del update
    assert tracker.peak == 4000


@pytest.mark.parametrize("fuse", [False, True])
def test_validation_passes_keep_to_the_token_budget_and_score_every_row_once(fuse):
    from peftbench.recipe.evaluate import validation_batches

    items = _items(60, seed=3)
    unbounded = validation_batches(items, "causal", 16, fuse=fuse)
    bounded = validation_batches(items, "causal", 16, fuse=fuse, max_tokens=200)
    assert sorted(row for rows in bounded for row in rows) == list(range(60))
    assert all(len(rows) == 1 or padded_size(items, [rows], "causal") <= 200 for rows in bounded)
    assert max(padded_size(items, [rows], "causal") for rows in unbounded) > 200  # the budget binds
    assert len(bounded) > len(unbounded)


def test_the_prediction_passes_over_opaque_weights_with_every_lever_on():
    # oneDNN's blocked copies of the frozen weights (applied at SmolLM2's sizes) are opaque: no storage to count.
    from peftbench.config import RunConfig, SpeedupsConfig
    from peftbench.recipe.memory_estimate import predict_run

    run = RunConfig(model="smollm2-135m-q4", method="lora", task="synthetic_classification", scale=32,
                    speedups=SpeedupsConfig.from_setting("all"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prediction = predict_run(run, runtime_bytes=0)
    assert prediction.breakdown["activations"] > 0 and prediction.breakdown["overhead"] >= 0


def _saved_bytes(method: str) -> int:
    """What ``ActivationProbe`` counts for one forward of the tiny Llama (2 layers, hidden 32, feed-forward 64)
    with ``method`` applied: 4 rows of 50 tokens, fp32."""
    from transformers import LlamaForCausalLM

    from peftbench.catalog.methods import apply_method
    from peftbench.catalog.models import tiny_llama_config
    from peftbench.recipe.memory import ActivationProbe

    torch.manual_seed(0)
    model = apply_method(LlamaForCausalLM(tiny_llama_config()), "causal", method).model
    ids = torch.randint(2, 384, (4, 50), generator=torch.Generator().manual_seed(0))
    probe = ActivationProbe()
    probe.reset(model)
    with probe.measure({"input_ids": ids, "labels": ids}):
        model(input_ids=ids, labels=ids)  # the forward saves what backward would need
    return probe.saved_bytes


def test_each_method_keeps_for_backward_what_its_own_gradients_need():
    """BitFit's bias gradients need no saved input; LoRA's rank-3 adapters keep their inputs' projections;
    each (IA)3 vector keeps its module's unscaled output beside the scaled one the next operation keeps
    (the 64-wide up projection's among them); full tuning keeps every linear layer's input."""
    saved = {method: _saved_bytes(method) for method in ("bitfit", "lora", "ia3", "full")}
    assert saved == {"bitfit": 884804, "lora": 955204, "ia3": 1193284, "full": 1271204}
