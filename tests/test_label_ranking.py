"""Label ranking (rank classification): each label word scored as the target, the most likely one predicted."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from speedup_helpers import plan_for
from sweep_helpers import tiny_overrides

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import load_sweep
from peftbench.outcomes import read_outcomes
from peftbench.recipe.batching import collate, encode
from peftbench.recipe.label_ranking import (
    label_words,
    rank_classify,
    shared_prompt_scores,
    target_log_likelihoods,
)
from peftbench.recipe.train import run_cell

pytestmark = pytest.mark.integration

MODELS = {"causal": "llama-tiny-random", "seq2seq": "t5-tiny-random"}


def _model_and_examples(family: str, n: int = 6, method: str = "lora"):
    loaded = load_model(MODELS[family])
    torch.manual_seed(0)
    model = apply_method(loaded.model, family, method).model.eval()
    task = get_task("synthetic_classification")
    return model, loaded.tokenizer, task, load_task_data(task, None, 32, 0, 32).test[:n]


def _one_at_a_time(model, item, family: str, pad_id: int) -> float:
    """The summed target log-likelihood from the model's own mean loss over one unpadded example."""
    batch = collate([item], family, pad_id)
    with torch.no_grad():
        mean = model(**batch).loss
    targets = sum(label != -100 for label in (item.labels[1:] if family == "causal" else item.labels))
    return -float(mean) * targets


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_target_log_likelihoods_are_the_models_summed_loss_per_example(family):
    model, tokenizer, _, examples = _model_and_examples(family)
    items = encode(examples, tokenizer, family, 512, 128)
    got = target_log_likelihoods(model, items, family, tokenizer.pad_token_id, 4, plan_for(model), nullcontext())
    want = [_one_at_a_time(model, item, family, tokenizer.pad_token_id) for item in items]
    assert got.dtype == torch.float64 and got.shape == (len(items),)
    assert got.tolist() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(("family", "method"), [("causal", "lora"), ("seq2seq", "lora"), ("causal", "prompt"),
                                                ("seq2seq", "prompt")])
def test_each_prompt_runs_once_and_scores_every_word_as_the_full_pass_does(family, method):
    # shared_prompt_scores (prompt once, a cache or the encoder's output reused per word) against a full
    # forward pass of prompt and target per word, on prompts of different lengths (padding differs). Prompt
    # tuning: its 100 virtual tokens before the prompt (the encoder's input), as PEFT's own forward puts them.
    model, tokenizer, task, examples = _model_and_examples(family, n=7, method=method)
    candidates = [encode([replace(e, target=w) for e in examples], tokenizer, family, 512, 128)
                  for w in label_words(task)]
    shared = shared_prompt_scores(model, candidates, family, tokenizer.pad_token_id, 3, nullcontext())
    full = [[_one_at_a_time(model, item, family, tokenizer.pad_token_id) for item in items] for items in candidates]
    assert shared.shape == (7, 3)
    assert shared.T.tolist() == [pytest.approx(row, rel=1e-4, abs=1e-4) for row in full]


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_rank_classify_predicts_the_label_word_of_highest_likelihood(family):
    model, tokenizer, task, examples = _model_and_examples(family)
    words = label_words(task)
    assert words == ["sports", "food", "tech"]
    predictions = rank_classify(model, task, examples, tokenizer, family, 512, 128, 4, plan_for(model), nullcontext())
    for example, prediction in zip(examples, predictions, strict=True):
        candidates = encode([replace(example, target=word) for word in words], tokenizer, family, 512, 128)
        scores = [_one_at_a_time(model, item, family, tokenizer.pad_token_id) for item in candidates]
        assert prediction == words[max(range(len(words)), key=scores.__getitem__)]
    assert rank_classify(model, task, [], tokenizer, family, 512, 128, 4, plan_for(model), nullcontext()) == []


def test_a_run_reports_rank_accuracy_by_default_as_its_own_metric_for_classification_only(tmp_path):
    overrides = [*tiny_overrides(tmp_path), "models=[llama-tiny-random]", "methods=[lora]",
                 "tasks=[synthetic_classification,synthetic_data_to_text]"]
    runs = load_sweep(None, overrides).expand()
    by_task = {run.task: run_cell(run, tmp_path / run.run_id(), progress=False) for run in runs}
    classification = by_task["synthetic_classification"]
    assert set(classification["metrics"]["test"]) == {"accuracy", "mcc", "macro_f1", "rank_accuracy", "rank_mcc",
                                                      "rank_macro_f1"}
    assert 0.0 <= classification["metrics"]["test"]["rank_accuracy"] <= 1.0
    rows = read_outcomes(tmp_path / runs[0].run_id(), classification["outcomes"])
    assert len(rows) == classification["data"]["test_examples"] == classification["outcomes"]["examples"]
    words = set(get_task("synthetic_classification").classes)
    assert all(set(r["label_scores"]) == words and r["rank_prediction"] in words for r in rows)
    ranked = sum(r["rank_prediction"] == r["references"][0] for r in rows) / len(rows)
    assert ranked == pytest.approx(classification["metrics"]["test"]["rank_accuracy"])
    assert classification["metrics"]["score"] == classification["metrics"]["test"]["accuracy"]
    assert classification["time"]["rank_eval_s"] > 0
    generation = by_task["synthetic_data_to_text"]
    assert set(generation["metrics"]["test"]) == {"rouge_l"}
    assert "rank_accuracy" not in generation["metrics"]["test"] and generation["time"]["rank_eval_s"] is None
