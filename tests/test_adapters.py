"""A run's saved weights load with the libraries alone and reproduce its test predictions exactly:
LoRA and (IA)3 adapters with ``PeftModel.from_pretrained`` on the base model, full tuning with
``AutoModelForSeq2SeqLM.from_pretrained``; the tokenizer is saved beside them. The validation loss of the
reloaded model is the tested epoch's, which the base model's is not: the predictions of a tiny model can
agree by chance, its loss cannot."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from speedup_helpers import plain_plan
from sweep_helpers import read_results, tiny_overrides
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import load_sweep
from peftbench.recipe.batching import encode
from peftbench.recipe.evaluate import validation_loss
from peftbench.running.sweep import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

TASK = "synthetic_data_to_text"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """LoRA, (IA)3 and full tuning of the tiny T5 on a generation task."""
    results_dir = tmp_path_factory.mktemp("adapters")
    overrides = tiny_overrides(results_dir, methods=("lora", "ia3", "full"), extra=(f"tasks=[{TASK}]",))
    run_sweep(load_sweep(None, overrides), progress=False)
    return {result["config"]["method"]: result for result in read_results(results_dir).values()}


def split(result, name: str):
    config = result["config"]
    data = load_task_data(get_task(TASK), None, config["scale"], config["seed"], config["train"]["eval_examples"])
    return getattr(data, name)


def predict(model, tokenizer, result) -> list[str]:
    """Greedy decoding of the run's test prompts, one at a time, with transformers alone."""
    predictions = []
    for example in split(result, "test"):
        inputs = tokenizer(example.prompt, return_tensors="pt")
        with torch.inference_mode():
            ids = model.eval().generate(**inputs, max_new_tokens=get_task(TASK).generation_budget, do_sample=False)
        predictions.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return predictions


def loss(model, tokenizer, result) -> float:
    """The validation loss as the run measured it each epoch (peftbench's own evaluation, on the default path:
    no speed-up lever, as the runs had)."""
    train = result["config"]["train"]
    items = encode(split(result, "validation"), tokenizer, "seq2seq", train["max_source_tokens"],
                   train["max_target_tokens"])
    return validation_loss(model, items, "seq2seq", tokenizer.pad_token_id, train["eval_batch_size"],
                           plain_plan(model), torch.autocast("cpu", enabled=False))


def best_epoch_loss(result) -> float:
    return result["history"][result["best_epoch"] - 1]["val_loss"]


def run_predictions(result) -> list[str]:
    assert result["data"]["test_examples"] == len(result["predictions_sample"]) == 4  # the sample holds them all
    return [row["prediction"] for row in result["predictions_sample"]]


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_peft_adapter_loads_on_the_base_model_and_reproduces_the_predictions(results, method):
    result = results[method]
    adapter = result["adapter"]["path"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # saved beside the adapter
    base = load_model("t5-tiny-random").model  # the base weights the run started from
    base_loss = loss(base, tokenizer, result)
    model = PeftModel.from_pretrained(base, adapter)
    assert predict(model, tokenizer, result) == run_predictions(result)
    assert loss(model, tokenizer, result) == pytest.approx(best_epoch_loss(result), rel=1e-6)
    assert abs(base_loss - best_epoch_loss(result)) > 1e-3  # the adapter is what the loss measures


def test_a_full_tuning_checkpoint_loads_with_from_pretrained(results):
    result = results["full"]
    model = AutoModelForSeq2SeqLM.from_pretrained(result["adapter"]["path"])
    tokenizer = AutoTokenizer.from_pretrained(result["adapter"]["path"])
    assert predict(model, tokenizer, result) == run_predictions(result)
    assert loss(model, tokenizer, result) == pytest.approx(best_epoch_loss(result), rel=1e-6)
