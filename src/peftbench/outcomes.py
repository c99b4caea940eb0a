"""Per-example outcomes: every test example's prediction and scores, kept beside a run's ``result.json``.

A result's headline score is a mean (or a whole-test-set statistic) over a few hundred examples. Comparing
two methods well needs the examples themselves: both methods of a cell answer the same test examples for a
seed, so a comparison can pair them example by example, and a metric added later can be scored again without
training again. ``outcomes.jsonl.gz`` holds one JSON object per test example, in test-split order:

    id            str     stable example id: a hash of the example's source index and its content
                          (``example_id``); equal ids mean the same example in any run of any method
    source        str     "<split>:<row index>" in the source split (CoLA repeats sentences, so content alone
                          is not an id)
    prediction    str     the decoded answer (an encoder classifier's: its predicted label word)
    references    list    every reference the prediction is scored against (one label word, or every human
                          reference); version 2 keeps them out of the run's file (below)
    scores        dict    {metric: score} for each per-example metric of the task (accuracy, rouge_l)
    rank_prediction str?  classification with label ranking: the most likely label word
    label_scores  dict?   classification with label ranking: {label word: summed log-likelihood, nats}

The file is gzip with a zero timestamp, so the same outcomes give the same bytes. The result records
``outcomes: {"file", "examples", "sha256", "version"}``; ``read_outcomes`` checks the hash, so a file that
does not belong to its result is refused rather than paired. This module imports nothing of peftbench: the
recipe writes the file and the analysis reads it.

Every method and reference row of a cell's seed answers the same test examples, so their references are the
same: version 2 stores them once, in ``<results dir>/references/<hash>.jsonl.gz`` beside the run folders
(one ``{"id", "references"}`` row per example, named by the first 16 hex digits of its content's sha256, so
runs that share a sample share a file and concurrent writers write the same bytes), and the result's entry
names it: ``outcomes.references: {"file": "../references/<hash>.jsonl.gz", "sha256"}``. ``read_outcomes``
puts the references back into each row. Version 1 files (references in every row) are read as they are.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftbench.atomic import atomic_write_bytes

OUTCOMES_FILE = "outcomes.jsonl.gz"
OUTCOMES_VERSION = 2
REFERENCES_DIR = "references"
"""The folder beside the run folders that holds each test sample's references once (version 2)."""


class OutcomesError(ValueError):
    """Outcomes that are missing, unreadable or do not match their result."""


def example_id(source: str, prompt: str, references: Sequence[str]) -> str:
    """A 16-hex-digit id of one example: its source index (``split:row``) and its content (prompt and
    references), so the same row formatted the same way has the same id in every run."""
    payload = json.dumps([source, prompt, list(references)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """The gzip'd JSON Lines bytes of ``rows`` (deterministic: sorted keys, no timestamp)."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=9) as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def write_outcomes(run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``rows`` atomically: their references to the shared references file (unless it exists), the rest
    to ``run_dir/outcomes.jsonl.gz``; returns the result's ``outcomes`` entry."""
    run_dir = Path(run_dir)
    entry: dict[str, Any] = {}
    if any("references" in row for row in rows):
        shared = encode_rows([{"id": row["id"], "references": row.get("references")} for row in rows])
        digest = hashlib.sha256(shared).hexdigest()
        relative = f"../{REFERENCES_DIR}/{digest[:16]}.jsonl.gz"
        if not (run_dir / relative).is_file():  # the same name holds the same bytes: written once
            atomic_write_bytes(run_dir / relative, shared)
        entry["references"] = {"file": relative, "sha256": digest}
    data = encode_rows([{k: v for k, v in row.items() if k != "references"} for row in rows])
    atomic_write_bytes(run_dir / OUTCOMES_FILE, data)
    return {"file": OUTCOMES_FILE, "examples": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
            "version": OUTCOMES_VERSION, **entry}


def read_outcomes(run_dir: Path, entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of a result's outcomes file (``entry``: the result's ``outcomes`` field). Raises
    OutcomesError when the result records none, or the file is absent, unreadable or not the one recorded."""
    if not entry:
        raise OutcomesError(f"{run_dir}: the result records no per-example outcomes")
    path = Path(run_dir) / entry.get("file", OUTCOMES_FILE)
    rows = _read_rows(path, entry.get("sha256"))
    if entry.get("examples") is not None and len(rows) != entry["examples"]:
        raise OutcomesError(f"{path}: {len(rows)} rows, its result recorded {entry['examples']}")
    shared = entry.get("references")
    if shared:
        references = {row["id"]: row["references"] for row in _read_rows(Path(run_dir) / shared["file"],
                                                                          shared.get("sha256"))}
        absent = [row["id"] for row in rows if row["id"] not in references]
        if absent:
            raise OutcomesError(f"{Path(run_dir) / shared['file']}: no references for {len(absent)} of the "
                                f"run's examples (e.g. {absent[0]})")
        rows = [{**row, "references": references[row["id"]]} for row in rows]
    return rows


def _read_rows(path: Path, sha256: str | None) -> list[dict[str, Any]]:
    """The rows of a gzip'd JSON Lines file whose sha256 is ``sha256`` (unchecked when None)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OutcomesError(f"{path}: cannot be read ({exc.strerror})") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise OutcomesError(f"{path}: its content is not the one its result.json recorded (sha256 differs)")
    try:
        return [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines() if line]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutcomesError(f"{path}: not gzip'd JSON Lines ({exc})") from None
