"""Task data: the four real tasks from ../shared/data, scale sampling, carving, E2E grouping."""

from __future__ import annotations

import pytest

from peftbench.catalog.tasks import TASKS, get_task
from peftbench.catalog.tasks.data import load_task_data

pytestmark = pytest.mark.unit

REAL_TASKS = ["ag_news", "cola", "e2e_nlg", "samsum"]


def test_registered_tasks():
    assert set(TASKS.names()) >= {*REAL_TASKS, "synthetic_classification", "synthetic_data_to_text"}
    assert get_task("ag_news").label_words == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}


@pytest.mark.parametrize("name", REAL_TASKS)
def test_real_task_loads_and_formats(shared_data, name):
    task = get_task(name)
    data = load_task_data(task, str(shared_data), "low", seed=0, eval_examples=200)
    assert len(data.train) == 100
    assert 0 < len(data.validation) <= 100 and 0 < len(data.test) <= 100
    example = data.train[0]
    assert example.prompt.startswith(task.template.split("{")[0])
    assert example.target == example.references[0]
    if task.type == "classification":
        assert all(e.target in task.label_words.values() for e in data.train)
    ids = {split: {e.id for e in getattr(data, split)} for split in ("train", "validation", "test")}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]


def test_cola_prompt_and_label(shared_data):
    data = load_task_data(get_task("cola"), str(shared_data), "low", seed=0, eval_examples=20)
    first = data.train[0]
    assert "Sentence: " in first.prompt and first.prompt.endswith("Answer:")
    assert first.target in ("acceptable", "unacceptable")


def test_ag_news_validation_is_carved_from_train_disjoint(shared_data):
    data = load_task_data(get_task("ag_news"), str(shared_data), "medium", seed=3, eval_examples=400)
    assert "validation" in data.info["carved"]
    assert len(data.validation) == 200 and len(data.train) == 1000
    assert all(e.id.startswith("train:") for e in data.validation)
    assert not {e.id for e in data.train} & {e.id for e in data.validation}
    assert all(e.id.startswith("test:") for e in data.test)


def test_e2e_groups_references_by_meaning_representation(shared_data):
    data = load_task_data(get_task("e2e_nlg"), str(shared_data), "low", seed=0, eval_examples=100)
    assert len(data.test) == 50
    prompts = [e.prompt for e in data.test]
    assert len(set(prompts)) == len(prompts), "test examples are counted by distinct input"
    assert max(len(e.references) for e in data.test) > 1


def test_sampling_is_seeded_and_identical_across_calls():
    task = get_task("synthetic_classification")
    first = load_task_data(task, None, 40, seed=1, eval_examples=60)
    again = load_task_data(task, None, 40, seed=1, eval_examples=60)
    other = load_task_data(task, None, 40, seed=2, eval_examples=60)
    assert [e.id for e in first.train] == [e.id for e in again.train]
    assert first.info["sample_hash"] == again.info["sample_hash"] != other.info["sample_hash"]
    assert len(first.train) == 40 and len(first.validation) == 30 and len(first.test) == 30


def test_scale_larger_than_the_data_uses_what_there_is():
    data = load_task_data(get_task("synthetic_data_to_text"), None, 5000, seed=0, eval_examples=10)
    assert len(data.train) == 2000
    assert data.info["requested_train_examples"] == 5000
    assert "2000" in data.info["note"]


def test_hub_path_loads_splits_and_carves_the_hidden_test_set(monkeypatch):
    """The Hub path (offline here): CoLA's Hub test labels are hidden, so test is carved from validation."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        size = {"train": 300, "validation": 80}[split]
        return datasets.Dataset.from_list(
            [{"sentence": f"{split} sentence {i}.", "label": i % 2} for i in range(size)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task_data(get_task("cola"), None, "low", seed=0, eval_examples=60)
    assert ("nyu-mll/glue", "cola", "train", None) in calls
    assert not any(split == "test" for _, _, split, _ in calls), "the hidden-label test split is never read"
    assert data.info["carved"]["test"].startswith("30 rows carved from validation")
    assert len(data.test) == 30 and len(data.validation) == 30 and len(data.train) == 100
    assert all(e.id.startswith("validation:") for e in data.test + data.validation)
    assert not {e.id for e in data.test} & {e.id for e in data.validation}
