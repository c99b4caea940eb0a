"""Task data: read rows, carve missing splits, draw the training sample at a scale, format examples.

Every choice here is seeded and recorded, so that all methods of a cell see identical splits and a
result file says exactly which rows it used (``info["sample_hash"]``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.catalog.tasks import SPLITS, TaskSpec, get_task
from peftbench.catalog.tasks.synthetic import GENERATORS
from peftbench.constants import SCALES
from peftbench.errors import UserError


def scale_cap_and_epochs(scale: str | int) -> tuple[int, int]:
    """(max training examples, max epochs) for a named scale or an explicit number of examples."""
    if isinstance(scale, str):
        if scale not in SCALES:
            from peftbench.errors import unknown

            raise unknown("scale", scale, list(SCALES))
        return SCALES[scale]
    # An explicit cap takes the epochs of the smallest named scale that holds it.
    epochs = next((e for cap, e in SCALES.values() if scale <= cap), SCALES["high"][1])
    return scale, epochs


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    target: str
    """What the model is trained to produce (the first reference)."""
    references: tuple[str, ...]
    """Everything the prediction is scored against (one label word, or every human reference)."""


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    info: dict[str, Any]


def load_task_data(task: TaskSpec, data_dir: str | None, scale: str | int, seed: int,
                   eval_examples: int = 2500, test_examples: int | None = None) -> TaskData:
    """The run's train/validation/test examples; see the module docstring for the guarantees. Validation
    takes half of ``eval_examples``, the test split ``test_examples`` (None: the other half)."""
    per_split = max(1, eval_examples // 2)
    test_size = test_examples or per_split
    rows = {split: _read_split(task, split, data_dir) for split in SPLITS}
    rows = {split: r for split, r in rows.items() if r is not None}
    carved = _carve_missing(task, rows, seed, max(per_split, test_size))
    for split in SPLITS:
        if not rows.get(split):
            raise UserError(f"task {task.name}: split {split!r} is empty or missing and no carve rule fills it")
    cap, _ = scale_cap_and_epochs(scale)
    train_rows = _sample(rows["train"], cap, random.Random(f"{task.name}/train/{seed}"))
    validation = _sample(_group(task, rows["validation"]), per_split, random.Random(f"{task.name}/val/{seed}"))
    test = _sample(_group(task, rows["test"]), test_size, random.Random(f"{task.name}/test/{seed}"))
    data = TaskData(
        train=[_format(task, [row]) for row in train_rows],
        validation=[_format(task, group) for group in validation],
        test=[_format(task, group) for group in test],
        info={},
    )
    data.info = {
        "train_examples": len(data.train), "validation_examples": len(data.validation),
        "test_examples": len(data.test), "requested_train_examples": cap,
        "available_train_examples": len(rows["train"]),
        "source": data_source(task, data_dir),
        "carved": carved, "sample_hash": _sample_hash(data),
    }
    if len(data.train) < cap:  # the scale is an upper bound (paper §3.1): say so, and use what there is
        data.info["note"] = (f"scale {scale} asks for {cap} training examples; the data has {len(data.train)}, "
                             f"all used")
    return data


def data_source(task: TaskSpec, data_dir: str | None) -> str:
    """Where the rows come from, as ``_read_split`` reads them: "synthetic", the folder of a user task's
    ``data_files``, the ``data_dir``, or "huggingface-hub"."""
    if task.synthetic:
        return "synthetic"
    if task.data_files:
        return os.path.commonpath([str(Path(path).parent) for path in task.data_files.values()])
    return data_dir or "huggingface-hub"


def data_identity(task_name_or_path: str, data_dir: str | None) -> tuple[str, str]:
    """(the task, its data) as a run id names them: the task by name and version (a user task also by its
    YAML's content, not its path), the data by the content of the files it reads, so the same files reached
    by another path name the same data. Hub data is named by dataset, configuration, revision and splits. A
    missing file names itself ``<missing>`` (preflight reports it)."""
    task = get_task(task_name_or_path)
    name = f"{task.name}@v{task.version}"
    if task_name_or_path.endswith((".yaml", ".yml")):
        name += "#" + hashlib.sha256(Path(task_name_or_path).read_bytes()).hexdigest()[:12]
    if task.synthetic:
        return name, "synthetic"
    if task.data_files:
        files = dict(task.data_files)
    elif data_dir is not None:
        files = {split: Path(data_dir) / task.name / f"{stem}.jsonl" for split, stem in task.local_splits.items()}
    else:
        hub = task.hf
        return name, "hub:" + json.dumps([hub.path, hub.name, hub.revision, hub.splits], sort_keys=True)
    digest = hashlib.sha256()
    for split in sorted(files):
        digest.update(f"{split}:{_file_digest(Path(files[split]))};".encode())
    return name, "sha256:" + digest.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    try:
        stat = path.resolve().stat()
    except OSError:
        return "<missing>"
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, read once per process while its size and modification time stay the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading ------------------------------------------------------------------------------------------

def _read_split(task: TaskSpec, split: str, data_dir: str | None) -> list[dict] | None:
    if task.synthetic:
        return _tag(GENERATORS[task.synthetic](split), split)
    if task.data_files:
        path = task.data_files.get(split)
        return _tag(read_jsonl(Path(path), task), split) if path else None
    if data_dir is not None:
        stem = task.local_splits.get(split)
        if stem is None:
            return None
        return _tag(read_jsonl(Path(data_dir) / task.name / f"{stem}.jsonl", task), split)
    return _read_hub(task, split)


def _tag(rows: list[dict], split: str) -> list[dict]:
    """Give every row a stable id (its split and line), the unit of the recorded sample."""
    for index, row in enumerate(rows):
        row["_id"] = f"{split}:{index}"
    return rows


def read_jsonl(path: Path, task: TaskSpec) -> list[dict]:
    """Rows of a JSONL file; any problem is a UserError naming the file and line."""
    if not path.is_file():
        raise UserError(f"task {task.name}: data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            missing = [f for f in task.fields if f not in row]
            if missing:
                raise UserError(f"{path}:{line_no}: missing field(s) {', '.join(missing)} "
                                f"(task {task.name} needs {', '.join(task.fields)})")
            if task.label_field and str(row[task.label_field]) not in task.label_words:
                raise UserError(f"{path}:{line_no}: label {row[task.label_field]!r} is outside the label set "
                                f"{sorted(task.label_words)} of task {task.name}")
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: the file has no rows")
    return rows


def _read_hub(task: TaskSpec, split: str) -> list[dict] | None:
    if task.hf is None:
        raise UserError(f"task {task.name} has no Hugging Face dataset; give data_dir=DIR with "
                        f"{task.name}/<split>.jsonl files")
    hub_split = task.hf.splits.get(split)
    if hub_split is None:
        return None
    import datasets

    try:
        dataset = datasets.load_dataset(task.hf.path, task.hf.name, split=hub_split, revision=task.hf.revision)
    except Exception as exc:  # offline, unknown dataset, ...: one line for the user
        raise UserError(f"task {task.name}: cannot load {task.hf.path} split {hub_split} from the Hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"use data_dir=DIR for local files") from None
    return _tag([dict(row) for row in dataset], split)


# --- carving, grouping, sampling ----------------------------------------------------------------------

def _carve_missing(task: TaskSpec, rows: dict[str, list[dict]], seed: int, size: int) -> dict[str, str]:
    """Fill each missing split from its carve source; the carved rows leave the source split."""
    carved = {}
    for split, source in task.carve.items():
        if rows.get(split) or not rows.get(source):
            continue
        pool = list(rows[source])
        random.Random(f"{task.name}/carve/{split}/{seed}").shuffle(pool)
        take = min(size, len(pool) // 2)  # never eat more than half of the source
        rows[split], rows[source] = pool[:take], sorted(pool[take:], key=_row_order)
        carved[split] = f"{take} rows carved from {source} (seed {seed}), disjoint from the rest of {source}"
    return carved


def _row_order(row: dict) -> tuple[str, int]:
    split, _, index = row["_id"].partition(":")
    return split, int(index)


def _group(task: TaskSpec, rows: list[dict]) -> list[list[dict]]:
    """One group per distinct input (E2E NLG's several references), else one group per row."""
    if not task.group_by:
        return [[row] for row in rows]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[task.group_by]), []).append(row)
    return list(groups.values())


def _sample(items: list, cap: int, rng: random.Random) -> list:
    """Up to ``cap`` items drawn with ``rng``, kept in source order (stable across Python versions)."""
    if len(items) <= cap:
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), cap))
    return [items[i] for i in chosen]


def _format(task: TaskSpec, group: list[dict]) -> Example:
    first = group[0]
    try:
        prompt = task.template.format(**first)
    except KeyError as exc:
        raise UserError(f"task {task.name}: template uses field {exc} that the data does not have") from None
    if task.type == "classification":
        references = (task.label_word(first[task.label_field]),)
    else:
        references = tuple(str(row[task.target_field]).strip() for row in group)
    return Example(id=first["_id"], prompt=prompt, target=references[0], references=references)


def _sample_hash(data: TaskData) -> str:
    ids = {split: [e.id for e in getattr(data, split)] for split in SPLITS}
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]
