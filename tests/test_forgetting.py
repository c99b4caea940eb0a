"""Forgetting (recipe/forgetting.py): the tuned model's general-text loss against the method at initialisation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from speedup_helpers import introduction_speedups

from peftbench.config import ID_DEFAULTS, ForgettingConfig, RunConfig, TrainConfig, load_sweep
from peftbench.errors import UserError
from peftbench.recipe import forgetting
from peftbench.recipe.protocol import paper_lr_lambda, resolved_lr
from peftbench.recipe.train import run_cell

pytestmark = pytest.mark.integration

PARAGRAPHS = [f"Paragraph {i} tells of the river , the hills and the town of {i * 7} people @-@ all of them ."
              for i in range(40)]
NO_STEP = {"lr_initial": 0.0, "lr_peak": 0.0, "lr_final": 0.0}
"""A learning rate of 0 throughout: optimiser steps run, no weight moves."""
TINY = {"max_epochs": 1, "batch_size": 4, "grad_accum": 1, "eval_examples": 8, "eval_batch_size": 4,
        "val_metric_examples": 0, "precision": "fp32", "num_threads": 1, "checkpoint_interval_s": 0.0}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def text_file(tmp_path) -> str:
    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps({"article": "A", "text": t}) + "\n" for t in PARAGRAPHS), encoding="utf-8")
    return str(path)


def _run(tmp_path: Path, model: str, method: str, text_file: str | None, task: str = "synthetic_classification",
         **train) -> dict:
    run = RunConfig(model=model, method=method, task=task, scale=8, seed=0, train=TrainConfig(**{**TINY, **train}),
                    forgetting=ForgettingConfig(data_file=text_file, tokens=600, max_paragraph_tokens=64))
    return run_cell(run, tmp_path / run.run_id(), progress=False)


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt", "bitfit"])
@pytest.mark.parametrize("model", ["llama-tiny-random", "t5-tiny-random"])
def test_a_run_whose_weights_never_move_forgets_nothing(tmp_path, text_file, model, method):
    result = _run(tmp_path, model, method, text_file, **NO_STEP)
    assert result["optimizer"]["steps_done"] == 2 and result["optimizer"]["lr_peak"] == 0.0  # steps, all of rate 0
    record = result["forgetting"]
    assert result["metrics"]["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert record["loss"] == pytest.approx(record["reference_loss"], abs=1e-6)
    assert record["reason"] is None and record["sample"]["tokens"] >= 600 and len(record["sample"]["hash"]) == 16
    if method != "prompt":  # the method starts as the identity: its reference is the base model
        assert record["reference_loss"] == pytest.approx(record["base_loss"], abs=1e-5)
    assert result["time"]["forgetting_s"] > 0


def test_training_moves_the_general_text_loss_and_records_where_it_came_from(tmp_path, text_file):
    result = _run(tmp_path, "llama-tiny-random", "full", text_file, max_epochs=2)
    record = result["forgetting"]
    assert result["metrics"]["forgetting"] == pytest.approx(record["loss"] - record["reference_loss"])
    assert abs(result["metrics"]["forgetting"]) > 1e-4  # full tuning at 3e-4 moves every weight
    assert record["sample"]["source"] == text_file and record["sample"]["paragraphs"] > 1
    # The base model's loss is cached once per model, precision and sample: the next run reads it back.
    (cached,) = (Path(tmp_path) / "cache" / "forgetting").glob("*.json")
    assert json.loads(cached.read_text())["base_loss"] == record["base_loss"]
    again = _run(tmp_path / "again", "llama-tiny-random", "lora", text_file)
    assert again["forgetting"]["base_loss"] == record["base_loss"]
    assert again["forgetting"]["sample"]["hash"] == record["sample"]["hash"]


def test_an_encoder_classifier_records_null_with_the_reason(tmp_path, text_file):
    result = _run(tmp_path, "bert-tiny-random", "lora", text_file)
    assert result["metrics"]["forgetting"] is None
    assert "encoder classifier" in result["forgetting"]["reason"]


def test_unreadable_text_is_recorded_not_fatal(tmp_path):
    result = _run(tmp_path, "llama-tiny-random", "lora", str(tmp_path / "missing.jsonl"))
    assert result["status"] == "ok" and result["metrics"]["forgetting"] is None
    assert "forgetting.data_file not found" in result["forgetting"]["reason"]


def test_disabled_forgetting_records_null(tmp_path, text_file):
    run = RunConfig(model="llama-tiny-random", method="lora", task="synthetic_classification", scale=8,
                    train=TrainConfig(**TINY), forgetting=ForgettingConfig(enabled=False, data_file=text_file))
    result = run_cell(run, tmp_path / run.run_id(), progress=False)
    assert result["metrics"]["forgetting"] is None and result["forgetting"] == {"reason": "forgetting.enabled is false"}


def test_a_learning_rate_candidate_is_not_tested_and_forgets_nothing_measured(tmp_path, text_file):
    result = _run(tmp_path, "llama-tiny-random", "lora", text_file, run_test=False)
    assert result["metrics"]["forgetting"] is None and "train.run_test false" in result["forgetting"]["reason"]


@pytest.mark.parametrize(("method", "expected"), [("zero_shot", 0.0), ("majority", None)])
def test_reference_rows_forget_nothing_or_have_no_model(tmp_path, method, expected):
    run = RunConfig(model="llama-tiny-random", method=method, task="synthetic_classification", scale=8,
                    train=TrainConfig(**TINY))
    result = run_cell(run, tmp_path / run.run_id(), progress=False)
    assert result["metrics"]["forgetting"] == expected and result["forgetting"]["reason"]


@pytest.mark.unit
def test_the_sample_is_fixed_budgeted_and_hashed(tmp_path):
    class Words:  # a tokenizer: one id per word
        bos_token_id, eos_token_id = None, 2

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[len(w) for w in t.split()] for t in texts]}

    cfg = ForgettingConfig(data_file=None, tokens=50, max_paragraph_tokens=10)
    forgetting.read_paragraphs.cache_clear()
    one = forgetting.general_text(dataclasses.replace(cfg, data_file=_write(tmp_path / "a.jsonl", PARAGRAPHS)), None, Words(), "causal")
    two = forgetting.general_text(dataclasses.replace(cfg, data_file=_write(tmp_path / "b.jsonl", PARAGRAPHS[::-1])), None, Words(),
                                  "causal")
    assert one.hash == two.hash  # the order is the text's hash order, not the file's
    assert one.tokens == 50 and one.paragraphs == 5  # 10 tokens a paragraph (cut) until 50
    first = one.items[0]
    assert first.input_ids[0] == 2 and first.labels[0] == -100 and first.labels[1:] == first.input_ids[1:]


def _write(path: Path, paragraphs: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in paragraphs), encoding="utf-8")
    return str(path)


@pytest.mark.unit
def test_the_data_folder_provides_the_default_text(tmp_path):
    assert forgetting.source_of(ForgettingConfig(), str(tmp_path)) is None  # no file there: the Hub
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "test.jsonl").write_text("{}\n")
    assert forgetting.source_of(ForgettingConfig(), str(tmp_path)) == tmp_path / "wikitext2" / "test.jsonl"
    assert forgetting.source_of(ForgettingConfig(data_file="x.jsonl"), str(tmp_path)) == Path("x.jsonl")


@pytest.mark.unit
def test_wikitext_spacing_is_undone():
    text = 'He had a guest @-@ starring role ( in 2000 ) in " The Bill " , it \'s 1 @,@ 000 @.@ 5 .'
    assert forgetting.detokenize(text) == 'He had a guest-starring role (in 2000) in "The Bill", it\'s 1,000.5.'


@pytest.mark.unit
def test_adding_the_forgetting_section_leaves_run_ids_unchanged():
    # Ids computed by the code before the section existed (same configs).
    every_lever = introduction_speedups()  # the speed-up defaults of the time, and no token budget
    assert RunConfig(model="llama-tiny-random", method="lora", task="synthetic_classification", scale="low",
                     seed=0, speedups=every_lever, train=TrainConfig(max_tokens_per_pass=None)).run_id() == \
        "llama_tiny_random-lora-synthetic_classification-low-s0-246e5bfce6"
    assert RunConfig(model="t5-tiny-random", method="prompt", task="synthetic_data_to_text", scale=200, seed=2,
                     train=TrainConfig(max_epochs=3, max_tokens_per_pass=None), speedups=every_lever).run_id() == \
        "t5_tiny_random-prompt-synthetic_data_to_text-200-s2-b6d9995ab5"
    defaults = {f"forgetting.{k}": v for k, v in dataclasses.asdict(ForgettingConfig()).items()}
    assert {k: ID_DEFAULTS[k] for k in defaults} == defaults
    changed = RunConfig(model="llama-tiny-random", method="lora", task="synthetic_classification", scale="low",
                        forgetting=ForgettingConfig(tokens=100), speedups=every_lever,
                        train=TrainConfig(max_tokens_per_pass=None))
    assert changed.identity()["settings"] == {"forgetting.tokens": 100}


@pytest.mark.unit
def test_a_zero_learning_rate_is_valid_only_throughout():
    zero = resolved_lr(TrainConfig(**NO_STEP), "lora")
    assert paper_lr_lambda(zero, total_steps=10, warmup_steps=1)(5) == 0.0
    with pytest.raises(UserError, match="lr_initial=0 and train.lr_final=0"):
        resolved_lr(TrainConfig(lr_peak=0.0), "lora")
    with pytest.raises(UserError, match="lr_peak must be at least 0"):
        load_sweep(None, ["train.lr_peak=-1"])
    assert load_sweep(None, ["forgetting.tokens=64"]).expand()[0].forgetting.tokens == 64


@pytest.mark.unit
def test_offline_without_the_cached_hub_dataset_is_a_reason_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    forgetting.read_paragraphs.cache_clear()
    with pytest.raises(UserError, match="offline and Salesforce/wikitext is not cached: set forgetting.data_file"):
        forgetting.read_paragraphs(None, "Salesforce/wikitext", "wikitext-2-raw-v1")
