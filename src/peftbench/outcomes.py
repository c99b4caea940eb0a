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
                          reference)
    scores        dict    {metric: score} for each per-example metric of the task (accuracy, rouge_l)
    rank_prediction str?  classification with label ranking: the most likely label word
    label_scores  dict?   classification with label ranking: {label word: summed log-likelihood, nats}

The file is gzip with a zero timestamp, so the same outcomes give the same bytes. The result records
``outcomes: {"file", "examples", "sha256", "version"}``; ``read_outcomes`` checks the hash, so a file that
does not belong to its result is refused rather than paired. This module imports nothing of peftbench: the
recipe writes the file and the analysis reads it.
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
OUTCOMES_VERSION = 1


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
    """Write ``rows`` atomically to ``run_dir/outcomes.jsonl.gz``; returns the result's ``outcomes`` entry."""
    data = encode_rows(rows)
    atomic_write_bytes(Path(run_dir) / OUTCOMES_FILE, data)
    return {"file": OUTCOMES_FILE, "examples": len(rows), "sha256": hashlib.sha256(data).hexdigest(),
            "version": OUTCOMES_VERSION}


def read_outcomes(run_dir: Path, entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of a result's outcomes file (``entry``: the result's ``outcomes`` field). Raises
    OutcomesError when the result records none, or the file is absent, unreadable or not the one recorded."""
    if not entry:
        raise OutcomesError(f"{run_dir}: the result records no per-example outcomes")
    path = Path(run_dir) / entry.get("file", OUTCOMES_FILE)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OutcomesError(f"{path}: cannot be read ({exc.strerror})") from None
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise OutcomesError(f"{path}: its content is not the one its result.json recorded (sha256 differs)")
    try:
        rows = [json.loads(line) for line in gzip.decompress(data).decode("utf-8").splitlines() if line]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutcomesError(f"{path}: not gzip'd JSON Lines ({exc})") from None
    if entry.get("examples") is not None and len(rows) != entry["examples"]:
        raise OutcomesError(f"{path}: {len(rows)} rows, its result recorded {entry['examples']}")
    return rows
