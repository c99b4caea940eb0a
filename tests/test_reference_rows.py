"""Reference rows (majority, zero_shot, in_context): run like methods, nothing trained."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from speedup_helpers import plain_plan

from peftbench.catalog.methods.reference import InContextOptions, reference_options
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import RunConfig, TrainConfig, load_sweep
from peftbench.errors import UserError
from peftbench.recipe.batching import encode
from peftbench.recipe.evaluate import generate
from peftbench.recipe.label_ranking import rank_classify
from peftbench.recipe.preflight import check_sweep
from peftbench.recipe.reference_rows import with_demonstrations
from peftbench.recipe.train import run_cell

pytestmark = pytest.mark.integration

CPU = torch.device("cpu")
FP32 = TrainConfig(eval_examples=16, eval_batch_size=4, precision="fp32", num_threads=1)


def _yes_no_task(tmp_path: Path, train: list[int], validation: list[int], test: list[int]) -> str:
    """A yes/no task over the given labels (0: no, 1: yes); returns its YAML path."""
    for split, labels in (("train", train), ("validation", validation), ("test", test)):
        rows = [json.dumps({"text": f"{split} sentence {i}", "label": label}) for i, label in enumerate(labels)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "task.yaml").write_text(
        "name: yes_no\nversion: 1\ntype: classification\nmetric: accuracy\nfields: [text, label]\n"
        'template: "Text: {text}\\nAnswer:"\nlabel_field: label\nlabel_words: {0: "no", 1: "yes"}\n'
        "data_files: {train: train.jsonl, validation: validation.jsonl, test: test.jsonl}\n", encoding="utf-8")
    return str(tmp_path / "task.yaml")


def _run(tmp_path: Path, method: str, task: str, **options) -> dict:
    run = RunConfig(model="llama-tiny-random", method=method, task=task, scale="low", seed=0,
                    method_options=options, train=FP32)
    return run_cell(run, tmp_path / run.run_id(), progress=False)


def test_majority_answers_the_most_frequent_training_label_and_scores_exactly(tmp_path):
    # Training labels: yes 3 times, no twice, so "yes" for every test example; the test's labels are
    # yes, no, no, yes, no: 2 of 5 answers right, 0.4.
    task = _yes_no_task(tmp_path, train=[1, 0, 1, 0, 1], validation=[0, 1], test=[1, 0, 0, 1, 0])
    result = _run(tmp_path, "majority", task)
    assert result["reference"]["answer"] == "yes"
    # MCC is 0 for a constant answer; macro-F1 averages yes's F1 (2·2 / (5 + 2) = 4/7) and no's (0).
    scores = {"accuracy": 0.4, "mcc": 0.0, "macro_f1": 2 / 7}
    assert result["metrics"]["test"] == pytest.approx({**scores, **{f"rank_{k}": v for k, v in scores.items()}})
    assert result["metrics"]["score"] == 0.4
    assert result["method"] == {"name": "majority", "kind": "reference"}
    assert result["params"]["trainable"] == 0 and result["optimizer"] is None and result["epochs"] == 0
    assert result["time"]["load_s"] == 0.0 and result["time"]["total_s"] > 0  # no model is loaded
    assert result["memory"]["peak_bytes"] > 0


def test_majority_breaks_a_tie_by_the_label_order_of_the_task(tmp_path):
    task = _yes_no_task(tmp_path, train=[1, 0, 1, 0], validation=[0], test=[0, 0, 1])
    result = _run(tmp_path, "majority", task)
    assert result["reference"]["answer"] == "no"  # label_words lists 0: no first
    assert result["metrics"]["score"] == pytest.approx(2 / 3)


def test_majority_refuses_a_generation_task_and_the_grid_skips_it_with_a_reason(tmp_path):
    with pytest.raises(UserError, match="majority does not apply to generation task synthetic_data_to_text"):
        _run(tmp_path, "majority", "synthetic_data_to_text")
    sweep = load_sweep(None, ["models=[llama-tiny-random]", "methods=[majority,zero_shot]", "scales=[8]",
                              "tasks=[synthetic_classification,synthetic_data_to_text]",
                              f"output_dir={tmp_path / 'grid'}", "train.eval_examples=8"])
    assert [(run.method, run.task) for run in sweep.expand()] == [
        ("majority", "synthetic_classification"), ("zero_shot", "synthetic_classification"),
        ("zero_shot", "synthetic_data_to_text")]
    reason = ("majority skipped for generation task synthetic_data_to_text: it applies to classification "
              "tasks only")
    assert reason in check_sweep(sweep)


def test_zero_shot_decodes_the_untuned_model_and_builds_no_optimiser(tmp_path, monkeypatch):
    def no_optimiser(*args, **kwargs):
        raise AssertionError("a reference row built an optimiser")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimiser)
    result = _run(tmp_path, "zero_shot", "synthetic_classification")
    assert result["params"]["trainable"] == 0 and result["optimizer"] is None and result["history"] == []
    assert result["method"] == {"name": "zero_shot", "kind": "reference"}
    assert result["time"]["load_s"] >= 0 and result["time"]["eval_s"] > 0

    # The same predictions as decoding and ranking the freshly loaded model directly.
    task = get_task("synthetic_classification")
    data = load_task_data(task, None, "low", 0, FP32.eval_examples)
    loaded = load_model("llama-tiny-random")
    items = encode(data.test, loaded.tokenizer, "causal", 512, 128)
    predictions = generate(loaded.model, items, loaded.tokenizer, "causal", task.generation_budget, 4, CPU,
                           nullcontext())
    assert [s["prediction"] for s in result["predictions_sample"]] == predictions[:5]
    ranked = rank_classify(loaded.model, task, data.test, loaded.tokenizer, "causal", 512, 128, 4,
                           plain_plan(loaded.model), nullcontext())
    right = sum(word == e.references[0] for word, e in zip(ranked, data.test, strict=True))
    assert result["metrics"]["test"]["rank_accuracy"] == right / len(data.test)


def test_in_context_puts_k_training_examples_drawn_with_the_seed_before_each_prompt():
    task = get_task("synthetic_classification")
    data = load_task_data(task, None, 32, 0, 8)
    tokenizer = load_model("llama-tiny-random").tokenizer
    options = InContextOptions(k=2)
    examples, shown = with_demonstrations(data.test, data.train, options, 0, tokenizer, 512)
    assert shown == [2] * len(data.test)
    demos = examples[0].prompt.removesuffix(data.test[0].prompt).split("\n\n")[:2]
    train_texts = {f"{e.prompt} {e.target}" for e in data.train}
    assert len(set(demos)) == 2 and set(demos) <= train_texts
    for example, original in zip(examples, data.test, strict=True):  # the same two for every test prompt
        assert example.prompt == f"{demos[0]}\n\n{demos[1]}\n\n{original.prompt}"
        assert example.references == original.references
    again, _ = with_demonstrations(data.test, data.train, options, 0, tokenizer, 512)
    other, _ = with_demonstrations(data.test, data.train, options, 1, tokenizer, 512)
    assert again == examples and other[0].prompt != examples[0].prompt


def test_in_context_shows_fewer_examples_where_the_prompt_would_pass_max_source_tokens():
    task = get_task("synthetic_classification")
    data = load_task_data(task, None, 32, 0, 8)
    tokenizer = load_model("llama-tiny-random").tokenizer
    full, _ = with_demonstrations(data.test, data.train, InContextOptions(k=2), 0, tokenizer, 512)
    one_demo = full[0].prompt.split("\n\n")[0] + "\n\n" + data.test[0].prompt
    limit = len(tokenizer(one_demo)["input_ids"])  # room for one example before the first prompt, not two
    examples, shown = with_demonstrations(data.test, data.train, InContextOptions(k=2), 0, tokenizer, limit)
    assert shown[0] == 1 and examples[0].prompt == one_demo
    assert all(len(tokenizer(e.prompt)["input_ids"]) <= limit or n == 0
               for e, n in zip(examples, shown, strict=True))


def test_in_context_run_records_k_and_options_are_checked(tmp_path):
    result = _run(tmp_path, "in_context", "synthetic_classification", k=3)
    assert result["reference"]["k"] == 3 and 0 < result["reference"]["shown_mean"] <= 3
    assert set(result["metrics"]["test"]) == {"accuracy", "mcc", "macro_f1", "rank_accuracy", "rank_mcc",
                                              "rank_macro_f1"}
    with pytest.raises(UserError, match="unknown key 'kk'"):
        reference_options("in_context", {"kk": 3})
    with pytest.raises(UserError, match="unknown key 'k'"):
        reference_options("zero_shot", {"k": 3})
