"""memory.breakdown on the tiny models: its parts add up to the peak and have the sizes the models imply, the
activations fall under gradient checkpointing, and the dry run's prediction (``memory_estimate.py``) holds
the measured parts within 25 %.

On the tiny models the increment of the peak over ``runtime`` is mostly libraries loaded after the runtime
mark and the evaluation's buffers (``overhead``, ~90-110 MB against under 30 MB of weights, gradients,
optimiser state and activations), which the prediction does not model; so the prediction is held to the
measured parts, the increment the method and the data cause."""

from __future__ import annotations

import json

import pytest

from peftbench.cli import main
from peftbench.config import RunConfig, TrainConfig
from peftbench.recipe.memory_estimate import predict_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

MODELS = ("llama-tiny-random", "t5-tiny-random", "bert-tiny-random")
METHODS = ("full", "lora")
SETTINGS = ("tasks=[synthetic_classification]", "scales=[32]", "train.max_epochs=2", "train.eval_examples=16")
METHOD_PARTS = ("weights", "gradients", "optimizer_state", "activations")


def _results(directory) -> dict[tuple[str, str], dict]:
    found = [json.loads(path.read_text()) for path in directory.glob("*/result.json")]
    return {(r["config"]["model"], r["config"]["method"]): r for r in found}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Full tuning and LoRA of each tiny model, each run in a worker process of its own."""
    out = tmp_path_factory.mktemp("memory")
    for model in MODELS:
        assert main(["run", f"model={model}", f"methods=[{','.join(METHODS)}]", *SETTINGS, f"output_dir={out}",
                     "-q"]) == 0
    return _results(out)


def test_the_parts_add_up_to_the_peak_with_the_sizes_the_model_implies(swept):
    full, lora = swept["llama-tiny-random", "full"], swept["llama-tiny-random", "lora"]
    for result in (full, lora):
        memory = result["memory"]
        parts = memory["breakdown"]
        assert sum(parts.values()) == memory["peak_bytes"]
        assert parts["runtime"] > 100 * 2**20  # the interpreter, torch and transformers
        assert parts["activations"] > 0 and memory["widest_pass"]["rows"] == 16
        assert memory["gradient_checkpointing"] is False
        assert memory["allocator"]["name"] in ("glibc", "jemalloc", "tcmalloc", "mimalloc", "tbbmalloc")
        assert result["batch"]["max_tokens_per_pass"] == 2048  # the default budget
    # llama-tiny-random: 30,880 fp32 parameters and the rotary frequencies (8 fp32 values, a buffer)
    assert full["memory"]["breakdown"]["weights"] == 4 * 30_880 + 4 * 8
    assert full["memory"]["breakdown"]["gradients"] == 4 * 30_880
    assert full["memory"]["breakdown"]["optimizer_state"] == 8 * 30_880 + 4 * 20  # moments, a step per tensor
    # LoRA (16 tensors) on the default path (speedups.frozen_weights_bf16 off): the frozen linears (18,432
    # values), the tied embedding (12,288), the norms (160) and LoRA's 1,344 values, all fp32, and the buffer
    assert lora["memory"]["breakdown"]["weights"] == 4 * 18_432 + 4 * 12_288 + 4 * 160 + 4 * 1_344 + 32
    assert lora["memory"]["breakdown"]["gradients"] == 4 * 1_344
    assert lora["memory"]["breakdown"]["optimizer_state"] == 8 * 1_344 + 4 * 16


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_the_predicted_parts_are_within_25_percent_of_the_measured(swept, model, method):
    result = swept[model, method]
    measured = result["memory"]["breakdown"]
    config = result["config"]
    run = RunConfig(model=model, method=method, task=config["task"], scale=config["scale"],
                    train=TrainConfig(max_epochs=2, eval_examples=16))
    assert run.run_id() == result["run_id"]  # the prediction is of the very run measured
    predicted = predict_run(run, runtime_bytes=measured["runtime"])
    for part in ("weights", "gradients", "optimizer_state"):
        assert predicted.breakdown[part] == measured[part], part
    increment = sum(measured[part] for part in METHOD_PARTS)
    assert abs(sum(predicted.breakdown[part] for part in METHOD_PARTS) - increment) <= 0.25 * increment
    assert predicted.breakdown["activations"] == pytest.approx(measured["activations"], rel=0.25)
    assert predicted.tokens == result["memory"]["widest_pass"]["tokens"]


def test_gradient_checkpointing_keeps_fewer_activations(swept, tmp_path):
    assert main(["run", "model=llama-tiny-random", "methods=[full]", *SETTINGS, "train.gradient_checkpointing=true",
                 f"output_dir={tmp_path}", "-q"]) == 0
    checkpointed = _results(tmp_path)["llama-tiny-random", "full"]
    plain = swept["llama-tiny-random", "full"]
    assert checkpointed["memory"]["gradient_checkpointing"] is True
    assert checkpointed["memory"]["breakdown"]["activations"] < 0.8 * plain["memory"]["breakdown"]["activations"]
    assert checkpointed["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-3)
