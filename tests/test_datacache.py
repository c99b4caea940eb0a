"""The on-disk cache of tokenised splits: hits equal fresh encodings, and every input is part of the key."""

from __future__ import annotations

import dataclasses

import pytest

from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe import datacache
from peftbench.recipe.batching import encode

pytestmark = pytest.mark.unit


@pytest.fixture
def setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    task = get_task("synthetic_classification")
    data = load_task_data(task, None, 16, seed=0, eval_examples=8)
    return task, data.train, load_model("t5-tiny-random").tokenizer


def test_a_hit_equals_a_fresh_encoding(setting, tmp_path):
    task, examples, tokenizer = setting
    fresh = encode(examples, tokenizer, "seq2seq", 64, 8)
    first = datacache.encode_cached(task, examples, tokenizer, "seq2seq", 64, 8)
    (stored,) = (tmp_path / "tokenized").glob("synthetic_classification-*.safetensors")
    stored_at = stored.stat().st_mtime_ns
    second = datacache.encode_cached(task, examples, tokenizer, "seq2seq", 64, 8)
    assert first == fresh and second == fresh and len(second) == 16
    assert stored.stat().st_mtime_ns == stored_at  # read back, not rewritten
    assert [p.name for p in stored.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_every_input_of_the_encoding_changes_the_key(setting):
    task, examples, tokenizer = setting
    key = datacache.cache_key(task, examples, tokenizer, "seq2seq", 64, 8)
    edited = [dataclasses.replace(examples[0], prompt=examples[0].prompt + "!"), *examples[1:]]
    variants = [
        datacache.cache_key(task, examples, tokenizer, "causal", 64, 8),
        datacache.cache_key(task, examples, tokenizer, "seq2seq", 32, 8),
        datacache.cache_key(task, examples, tokenizer, "seq2seq", 64, 4),
        datacache.cache_key(task, edited, tokenizer, "seq2seq", 64, 8),
        datacache.cache_key(task, examples[1:], tokenizer, "seq2seq", 64, 8),
        datacache.cache_key(dataclasses.replace(task, version=2), examples, tokenizer, "seq2seq", 64, 8),
        datacache.cache_key(dataclasses.replace(task, template="Q: {text}"), examples, tokenizer, "seq2seq", 64, 8),
    ]
    assert len({key, *variants}) == 8
    assert datacache.cache_key(task, list(examples), tokenizer, "seq2seq", 64, 8) == key  # and only those


def test_a_damaged_cache_file_is_a_miss_and_is_rewritten(setting, tmp_path):
    task, examples, tokenizer = setting
    fresh = datacache.encode_cached(task, examples, tokenizer, "causal", 64, 8)
    (stored,) = (tmp_path / "tokenized").glob("*.safetensors")
    stored.write_bytes(stored.read_bytes()[:100])
    assert datacache.encode_cached(task, examples, tokenizer, "causal", 64, 8) == fresh
    assert datacache.encode_cached(task, examples, tokenizer, "causal", 64, 8) == fresh
    assert stored.stat().st_size > 100
