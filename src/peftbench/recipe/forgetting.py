"""What tuning forgets: the tuned model's loss on general text against the same method at initialisation.

``metrics.forgetting`` = the tuned model's mean cross-entropy (nats per token) on a fixed sample of general
text − the same method's at initialisation (before the first optimiser step: for LoRA, (IA)3, BitFit and full
tuning that is the base model; for prompt tuning, the base model with its initial virtual tokens). A run
whose weights never move forgets 0. Positive: the tuned model predicts general text worse. The base model's
own loss is recorded beside it (``result["forgetting"]["base_loss"]``), computed once per model, precision
and sample and cached on disk.

The text: WikiText-2's test split, one paragraph a row (``forgetting.data_file``; by default
``<data_dir>/wikitext2/test.jsonl`` when the run's data folder holds it, else the Hub's ``Salesforce/wikitext``
``wikitext-2-raw-v1``). Its tokenised spacing (``film , television``, `` @-@ ``) is undone; paragraphs with
more than 5 % ``<unk>`` words and the Hub's heading lines are left out. The sample: paragraphs in the order
of their text's SHA-256 (fixed, whatever the model, seed or run), each cut to ``max_paragraph_tokens``, taken
until their tokens reach ``forgetting.tokens``; its size and the hash of its token ids are recorded.

How it is scored, per family:
    causal   the paragraph after one start token (BOS, else EOS); every paragraph token is scored
    seq2seq  ``SEQ2SEQ_PREFIX`` as the encoder input, the paragraph as the decoder target
    encoder  not defined (a classifier has no language-model head): null, with the reason

The passes score as the validation loss does (``loss.target_token_losses``, the run's speed-ups and
precision), in batches of at most ``PASS_TOKENS`` padded tokens (never fused into larger passes), forward
only (``inference_mode``: a layer's activations are freed as the next runs). Every token is scored, so a pass holds its logits (512 × 49,152 for SmolLM2: about
100 MB in fp32, with the bf16 copy and the cross-entropy's about 250 MB), a quarter of what a training pass of
``batching.FUSE_MAX_TOKENS`` tokens keeps for its backward: scoring does not set the run's peak memory. Two
passes over the sample per run (the reference before training, the tuned model after the test), a third when
the base model's loss is not cached; their seconds are ``time.forgetting_s``, an evaluation time (not in
``train_s``). SmolLM2-135M, 4,096 tokens: about 1.1 TFLOP a pass.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftbench.catalog.embedded import cache_root
from peftbench.config import ForgettingConfig
from peftbench.errors import UserError
from peftbench.recipe.batching import IGNORE, Encoded, collate
from peftbench.recipe.loss import target_token_losses

SEQ2SEQ_PREFIX = "Text:"
"""A seq2seq model's encoder input while its decoder is scored on the paragraph."""
MAX_UNK_SHARE = 0.05
"""Paragraphs with more ``<unk>`` words than this share are left out (WikiText-2's file marks 6.3 % of words)."""
DEFAULT_FILE = Path("wikitext2") / "test.jsonl"
"""Where a data folder holds the general text."""
CACHE_PROCEDURE = 1
"""Raised when how the base model's loss is computed changes, so that cached losses are computed again (bf16
sums differ with the passes' batching by about 1e-3 nats)."""
PASS_TOKENS = 512
"""Padded tokens (virtual tokens included) one forward pass over the sample holds; a longer row runs alone."""


@dataclass(frozen=True)
class GeneralText:
    """The tokenised sample: ``items`` as the loss passes take them, and what the result records of it."""

    items: list[Encoded]
    source: str
    paragraphs: int
    tokens: int
    """Scored tokens (the paragraphs' tokens after truncation)."""
    hash: str
    """SHA-256 (16 hex digits) of the sample's token ids: the same sample, the same hash."""

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "paragraphs": self.paragraphs, "tokens": self.tokens, "hash": self.hash}


@dataclass
class Forgetting:
    """A run's forgetting: ``value`` (``metrics.forgetting``; None with ``details["reason"]``), the record
    beside it (``result["forgetting"]``) and the seconds spent (``time.forgetting_s``)."""

    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def detokenize(text: str) -> str:
    """WikiText's tokenised spacing undone (the usual WikiText detokenisation): ``a @-@ b`` → ``a-b``,
    ``film , television`` → ``film, television``, ``( x )`` → ``(x)``, ``it 's`` → ``it's``."""
    for spaced, joined in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" 's", "'s"), (" n't", "n't")):
        text = text.replace(spaced, joined)
    text = re.sub(r" ([.,:;!?%])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    text = re.sub(r" ([)\]}])", r"\1", text)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    return text.strip()


def source_of(cfg: ForgettingConfig, data_dir: str | None) -> Path | None:
    """The general-text file a run reads: ``cfg.data_file``, else the data folder's ``wikitext2/test.jsonl``
    when it exists; None: the Hub dataset."""
    if cfg.data_file is not None:
        return Path(cfg.data_file)
    if data_dir is not None and (Path(data_dir) / DEFAULT_FILE).is_file():
        return Path(data_dir) / DEFAULT_FILE
    return None


@functools.lru_cache(maxsize=4)
def read_paragraphs(path: Path | None, hub_dataset: str, hub_config: str) -> tuple[str, tuple[str, ...]]:
    """(where the text came from, its usable paragraphs detokenised, in the sample's fixed order)."""
    if path is not None:
        if not path.is_file():
            raise UserError(f"forgetting.data_file not found: {path}")
        with path.open(encoding="utf-8") as handle:
            texts = [json.loads(line)["text"] for line in handle if line.strip()]
        source = str(path)
    else:
        _check_reachable(hub_dataset)
        import datasets

        rows = datasets.load_dataset(hub_dataset, hub_config, split="test")["text"]
        texts = [t for t in rows if t.strip() and not t.strip().startswith("= ")]  # headings: " = Title = "
        source = f"huggingface-hub:{hub_dataset}/{hub_config}:test"
    usable = [detokenize(t) for t in texts
              if t.split().count("<unk>") <= MAX_UNK_SHARE * len(t.split())]
    ordered = sorted(set(usable), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    return source, tuple(ordered)


def _check_reachable(hub_dataset: str) -> None:
    """Offline (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``) without the dataset in either cache: a UserError
    at once, before ``datasets`` is imported and asks the Hub (seconds per run)."""
    from huggingface_hub import constants

    if not (constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")):
        return
    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{hub_dataset.replace('/', '--')}"
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    if not hub_copy.is_dir() and not (datasets_cache / hub_dataset.replace("/", "___")).is_dir():
        raise UserError(f"offline and {hub_dataset} is not cached: set forgetting.data_file (or a data_dir "
                        f"holding {DEFAULT_FILE})")


def general_text(cfg: ForgettingConfig, data_dir: str | None, tokenizer, family: str) -> GeneralText:
    """The fixed sample, tokenised for ``family`` (see the module docstring)."""
    source, paragraphs = read_paragraphs(source_of(cfg, data_dir), cfg.hub_dataset, cfg.hub_config)
    chosen: list[list[int]] = []
    total = 0
    for start in range(0, len(paragraphs), 64):  # tokenise in slices until the budget is reached
        batch = tokenizer(list(paragraphs[start: start + 64]), add_special_tokens=False)["input_ids"]
        for ids in batch:
            if total >= cfg.tokens:
                break
            if ids:
                chosen.append(ids[: cfg.max_paragraph_tokens])
                total += len(chosen[-1])
        if total >= cfg.tokens:
            break
    if family == "seq2seq":
        prefix = tokenizer(SEQ2SEQ_PREFIX, add_special_tokens=True)["input_ids"]
        items = [Encoded(prefix, ids, prefix) for ids in chosen]
    else:
        start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        items = [Encoded([start_id, *ids], [IGNORE, *ids], [start_id]) for ids in chosen]
    digest = hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]
    return GeneralText(items, source, len(chosen), total, digest)


@torch.inference_mode()
def text_loss(loop, text: GeneralText, model=None) -> float:
    """Mean cross-entropy per scored token (nats) of ``model`` (default the run's) over the sample, scored as
    the validation loss is (``loss.target_token_losses``, the run's speed-ups and autocast) but in passes of at
    most ``PASS_TOKENS`` padded tokens, never fused into larger ones. Every process scores the whole sample."""
    cell, speedups = loop.cell, loop.speedups
    model = model if model is not None else loop.model
    model.eval()
    width = max(len(e.input_ids) + (len(e.labels) if cell.loaded.family == "seq2seq" else 0) for e in text.items)
    rows = max(1, PASS_TOKENS // (width + speedups.virtual_tokens))
    order = sorted(range(len(text.items)), key=lambda i: len(text.items[i].input_ids))  # least padding
    total, count = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, len(order), rows):
        batch = collate([text.items[i] for i in order[start: start + rows]], cell.loaded.family,
                        cell.loaded.tokenizer.pad_token_id)
        with loop.autocast():
            losses, _ = target_token_losses(model, batch, speedups)
        total += losses.double().sum().cpu()
        count += losses.numel()
    return float(total / max(count, 1))


@dataclass
class Reference:
    """What ``measure_reference`` found before training: the sample, the method's loss at initialisation and
    the base model's; or ``skipped``, the reason there is none."""

    text: GeneralText | None = None
    reference_loss: float | None = None
    base_loss: float | None = None
    skipped: str | None = None
    seconds: float = 0.0


def measure_reference(loop) -> Reference:
    """Before training (the method at initialisation): the sample, its loss, and the base model's loss (from
    the cache, else measured with the method's adapters disabled). Unreadable text skips forgetting, with
    the reason, rather than failing the run."""
    cfg, family = loop.run.forgetting, loop.cell.loaded.family
    if not cfg.enabled:
        return Reference(skipped="forgetting.enabled is false")
    if not loop.run.train.run_test:
        return Reference(skipped="a learning-rate candidate (train.run_test false): not tested")
    if family == "encoder":
        return Reference(skipped="an encoder classifier has no language-model head to score general text")
    started = time.perf_counter()
    try:
        text = general_text(cfg, loop.run.data_dir, loop.cell.loaded.tokenizer, family)
    except Exception as exc:  # noqa: BLE001 - offline without the file, a malformed file: recorded, not fatal
        return Reference(skipped=f"general text unavailable: {type(exc).__name__}: {str(exc)[:200]}")
    reference_loss = text_loss(loop, text)
    base_loss = _cached_base_loss(loop, text)
    return Reference(text, reference_loss, base_loss, seconds=time.perf_counter() - started)


def after_test(loop, reference: Reference) -> Forgetting:
    """The tested weights' loss on the sample, against the reference: the run's ``Forgetting``."""
    if reference.text is None:
        return Forgetting(None, {"reason": reference.skipped}, reference.seconds)
    started = time.perf_counter()
    loss = text_loss(loop, reference.text)
    details = {"loss": loss, "reference_loss": reference.reference_loss, "base_loss": reference.base_loss,
               "sample": reference.text.record(), "reason": None}
    return Forgetting(loss - reference.reference_loss, details, reference.seconds + time.perf_counter() - started)


def record(result: dict[str, Any], forgetting: Forgetting) -> dict[str, Any]:
    """``result`` with ``metrics.forgetting``, ``forgetting`` and ``time.forgetting_s`` set."""
    result["metrics"]["forgetting"] = forgetting.value
    result["forgetting"] = forgetting.details
    result["time"]["forgetting_s"] = forgetting.seconds
    return result


def reference_row(result: dict[str, Any], method: str) -> dict[str, Any]:
    """A reference row's forgetting: 0 for a model answering as it is (zero-shot, in-context: no weight
    changes), null for majority (no model)."""
    if method == "majority":
        return record(result, Forgetting(None, {"reason": "majority answers without a model"}))
    return record(result, Forgetting(0.0, {"reason": "the untuned model: its weights are the reference"}))


def _cached_base_loss(loop, text: GeneralText) -> float:
    """The base model's loss on the sample: cached under the model's identity, the sample's hash, the
    precision, the device type and the scoring procedure (``PASS_TOKENS``, ``CACHE_PROCEDURE``); measured with the method's adapters disabled (PEFT models) or on the
    model as it is (full tuning, BitFit: before training nothing has changed yet)."""
    loaded = loop.cell.loaded
    key = {"model": loaded.name, "source": loaded.source, "revision": loop.run.model_revision,
           "provenance": loaded.provenance, "sample": text.hash, "precision": loop.accelerator.mixed_precision,
           "device": loop.accelerator.device.type, "pass_tokens": PASS_TOKENS, "procedure": CACHE_PROCEDURE}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_root() / "forgetting" / f"{digest}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["base_loss"])
    model = getattr(loop.model, "module", loop.model)
    if hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        with model.disable_adapter():
            loss = text_loss(loop, text, model)
    else:
        loss = text_loss(loop, text, model)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # one writer
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{id(key)}.tmp")
        temporary.write_text(json.dumps({**key, "provenance": str(loaded.provenance), "base_loss": loss}))
        temporary.replace(path)
    return loss
