"""Experiment tracking (``trackers=[...]``): a tiny run's optimiser steps and epochs in TensorBoard event files
and in an MLflow local file store, offline; a missing tracker package is a one-line error naming the extra."""

from __future__ import annotations

import accelerate.tracking
import pytest
from sweep_helpers import read_results, tiny_overrides

from peftbench.cli import main
from peftbench.config import RunConfig, load_sweep
from peftbench.errors import UserError
from peftbench.running.sweep import run_sweep
from peftbench.running.tracking import check_trackers, hyperparameters

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny LoRA run (3 epochs of 2 optimiser steps) logged to TensorBoard and MLflow."""
    pytest.importorskip("tensorboard", reason="pip install 'peftbench[tensorboard]'")
    pytest.importorskip("mlflow", reason="pip install 'peftbench[mlflow]'")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to use a local file store
        run_sweep(load_sweep(None, tiny_overrides(root / "results", methods=("lora",),
                                                  extra=("trackers=[tensorboard,mlflow]",))), progress=False)
    (result,) = read_results(root / "results").values()
    return root, result


def step_losses_by_epoch(losses: dict[int, float], result) -> list[float]:
    """The mean of each epoch's step losses (the result's per-epoch train_loss, with one batch per step)."""
    means, first = [], 1
    for epoch in result["history"]:
        steps = range(first, epoch["steps"] + 1)
        means.append(sum(losses[s] for s in steps) / len(steps))
        first = epoch["steps"] + 1
    return means


def test_tensorboard_event_files_hold_every_step_and_epoch(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, result = tracked
    events = EventAccumulator(str(root / "results" / "tensorboard" / result["run_id"])).Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    steps = result["optimizer"]["steps_done"]
    assert steps == 6 and sorted(scalars["train/loss"]) == list(range(1, steps + 1))
    assert step_losses_by_epoch(scalars["train/loss"], result) == pytest.approx(
        [e["train_loss"] for e in result["history"]], rel=1e-6)
    # The schedule: warm-up from the initial rate (step 1) to the peak (step 2), then linear annealing.
    optimizer = result["optimizer"]
    assert scalars["train/lr"][1] == pytest.approx(optimizer["lr_initial"])
    assert scalars["train/lr"][2] == pytest.approx(optimizer["lr_peak"])
    assert all(value > 0 for value in scalars["train/tokens_per_s"].values())
    assert scalars["val/loss"] == pytest.approx({e["steps"]: e["val_loss"] for e in result["history"]})
    assert scalars["val/accuracy"] == pytest.approx({e["steps"]: e["val_metric"] for e in result["history"]})
    assert scalars["test/accuracy"] == pytest.approx({steps: result["metrics"]["test"]["accuracy"]})


def test_an_mlflow_file_store_run_holds_the_step_losses_and_the_config(tracked, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the run was logged in a worker process
    root, result = tracked
    client = mlflow.MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("results").experiment_id])
    assert run.info.run_name == result["run_id"] and run.info.status == "FINISHED"
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert sorted(losses) == list(range(1, 7))
    assert step_losses_by_epoch(losses, result) == pytest.approx([e["train_loss"] for e in result["history"]],
                                                                 rel=1e-6)
    assert run.data.params["run_id"] == result["run_id"]
    assert run.data.params["method"] == "lora" and run.data.params["train.batch_size"] == "4"


def test_trackers_leave_the_run_id_alone():
    run = RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale=8)
    tracked = RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale=8,
                        trackers=["tensorboard"])
    assert tracked.run_id() == run.run_id()


def test_hyperparameters_are_the_config_flattened():
    run = RunConfig(model="m", method="lora", task="t", scale=8, method_options={"r": 2}, layers=[0, 1])
    flat = hyperparameters(run.to_dict())
    assert flat["train.batch_size"] == 16 and flat["method_options"] == '{"r": 2}' and flat["layers"] == "[0, 1]"
    assert all(not isinstance(value, (dict, list)) for value in flat.values())


def test_a_missing_tracker_package_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(UserError, match=r"^tracker mlflow needs its package: pip install 'peftbench\[mlflow\]'$"):
        check_trackers(["mlflow"])
    code = main(["run", *tiny_overrides(tmp_path, methods=("lora",), extra=("trackers=[tensorboard]",))])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "peftbench: error: tracker tensorboard needs its package: pip install 'peftbench[tensorboard]'"]
    assert not list(tmp_path.glob("*/result.json"))


def test_an_unknown_tracker_names_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown tracker 'tensorbord' \(did you mean 'tensorboard'\?\); valid: "):
        check_trackers(["tensorbord"])
