"""Tokenised splits cached on disk, so that a sweep tokenises each (task, sample, tokenizer) once.

Every method and ablation of a cell trains on the same sample with the same tokenizer; a 10,000-example
SAMSum split takes seconds to tokenise, and a sweep repeats it for every run, in every process.

The cache key is a hash of everything the encoding depends on: the task (name, version, template, label
words), the examples themselves (ids, prompts, targets: this covers the sample and the data files'
content), the tokenizer (class, name, and its full serialisation or vocabulary), the model family, the
length limits, and the source of ``peftbench.recipe.batching`` (a change to the encoding code is a new key).
Files are safetensors of flat int32 arrays (no pickle), under ``embedded.cache_root()/tokenized/``,
written atomically; an unreadable file counts as a miss and is rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import weakref
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from peftbench.atomic import atomic_write_bytes
from peftbench.catalog.embedded import cache_root
from peftbench.catalog.tasks import TaskSpec
from peftbench.catalog.tasks.data import Example
from peftbench.recipe import batching
from peftbench.recipe.batching import Encoded, encode

FORMAT_VERSION = 1
_FIELDS = ("input_ids", "labels", "prompt_ids")
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    return cache_root() / "tokenized"


def encode_cached(task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
                  max_target: int) -> list[Encoded]:
    """``batching.encode(examples, ...)``, read from the cache when this exact encoding was done before."""
    key = cache_key(task, examples, tokenizer, family, max_source, max_target)
    path = cache_dir() / f"{key}.safetensors"
    cached = _read(path, len(examples))
    if cached is not None:
        return cached
    classes = list(task.classes) if family == "encoder" else None
    encoded = encode(examples, tokenizer, family, max_source, max_target, classes)
    with contextlib.suppress(OSError):  # a read-only or full cache only costs the next run the tokenising
        _write(path, encoded, task.name)
    return encoded


def cache_key(task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
              max_target: int) -> str:
    digest = hashlib.sha256()
    header = {"format": FORMAT_VERSION, "task": task.name, "version": task.version, "template": task.template,
              "label_words": task.label_words, "family": family, "max_source": max_source,
              "max_target": max_target, "tokenizer": tokenizer_fingerprint(tokenizer),
              "encoding": _encoding_source_hash()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example.id, example.prompt, example.target]).encode())
    return f"{_safe(task.name)}-{digest.hexdigest()[:24]}"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the full serialisation for fast tokenizers, else the vocabulary."""
    try:
        return _fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: vocabulary, merges, normaliser...
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""),
                        str(tokenizer.special_tokens_map), tokenizer.eos_token_id], sort_keys=True)
    fingerprint = hashlib.sha256((body + extra).encode()).hexdigest()[:24]
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed each time
        _fingerprints[tokenizer] = fingerprint
    return fingerprint


def _encoding_source_hash() -> str:
    try:
        source = inspect.getsource(batching)
    except (OSError, TypeError):  # no source (a frozen install): the format version alone
        return "unknown"
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in name.split("/")[-1])[:40] or "task"


def _write(path: Path, encoded: list[Encoded], task_name: str) -> None:
    arrays = {}
    for name in _FIELDS:
        rows = [getattr(e, name) for e in encoded]
        arrays[name] = np.asarray([i for row in rows for i in row], dtype=np.int32)
        arrays[f"{name}_lengths"] = np.asarray([len(row) for row in rows], dtype=np.int64)
    payload = save(arrays, metadata={"task": task_name, "format": str(FORMAT_VERSION)})
    atomic_write_bytes(path, payload)


def _read(path: Path, expected: int) -> list[Encoded] | None:
    if not path.is_file():
        return None
    try:
        arrays = load_file(path)
        columns = {name: _split_rows(arrays[name], arrays[f"{name}_lengths"]) for name in _FIELDS}
    except Exception:  # noqa: BLE001 - a damaged cache file is a miss, never an error
        return None
    if any(len(rows) != expected for rows in columns.values()):
        return None
    return [Encoded(*row) for row in zip(*(columns[name] for name in _FIELDS), strict=True)]


def _split_rows(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    if int(lengths.sum()) != len(flat):
        raise ValueError("lengths do not add up to the data")
    ends = np.cumsum(lengths)
    values = flat.tolist()
    return [values[end - length: end] for end, length in zip(ends.tolist(), lengths.tolist(), strict=True)]
