"""Before/after pairs of bench/levers/levers.py for the CPU kernel levers: which attention runs a pass, passes over
real tokens only (concatenated rows, or the feed-forward networks alone), and dropout masks from random
bits (same format as lever_cases.py); and the child process of its keep_freed_memory case
(``--allocator-child DATA_DIR STEP keep|default``).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
from lever_cases import (
    CPU,
    Setup,
    accumulate,
    autocast,
    causal_target_loss,
    eval_plan,
    forward_pass,
    hf_loss,
    math_or_flash,
    train_step,
    training_step,
    validation_pass,
)
from transformers import AutoModelForSeq2SeqLM

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_config, load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe import evaluate
from peftbench.recipe.batching import collate, encode
from peftbench.speedups import concatenated_rows, freed_memory, unpadded_feed_forward
from peftbench.speedups import eager_attention as attention_kernels
from peftbench.speedups.bf16_frozen_weights import store_frozen_linears_in
from peftbench.speedups.bits_dropout import cpu_dropout
from peftbench.speedups.onednn_weights import pack_frozen_linears
from peftbench.speedups.shared_prompt_prefix import shared_prefix_length


def eager_attention(setup: Setup) -> dict:
    """Eager attention as peftbench runs it (bf16 matmuls, fp32 softmax; for SmolLM2 in grouped-query form,
    see grouped_query_case) against the SDPA kernel peftbench used before: training steps (math up to 200
    tokens, flash beyond) and validation passes (flash)."""
    cases, model = {}, setup.lora
    for task, n, skip in (("cola", 64, 18), ("samsum", 16, 20), ("samsum", 16, 60)):
        batch = setup.batch(task, n=n, skip=skip)
        width = batch["input_ids"].shape[1]
        cases[f"LoRA train step, {task} {n} ex × {width} tokens"] = {
            "before": lambda b=batch, w=width: train_step(model, b, causal_target_loss, attention=math_or_flash(w)),
            "after": lambda b=batch: training_step(model, b)}
        cases[f"validation pass, {task} {n} ex × {width} tokens"] = {
            "before": lambda b=batch: forward_pass(model, b, nullcontext()),
            "after": lambda b=batch: validation_pass(model, b)}
    return cases


@contextmanager
def padded_passes():
    """peftbench as it was before unpadding: every pass runs padded, its feed-forward networks too."""
    with (mock.patch.object(unpadded_feed_forward, "MIN_PADDING_SHARE", 2.0),
          mock.patch.object(concatenated_rows, "MIN_PADDING_SHARE", 2.0)):
        yield


@contextmanager
def feed_forward_unpadded_only():
    """peftbench as it was before concatenated rows: only the feed-forward networks skip the padding."""
    with mock.patch.object(concatenated_rows, "MIN_PADDING_SHARE", 2.0):
        yield


def unpadding_case(setup: Setup) -> dict:
    """Passes over real tokens only (concatenated rows, and for other passes unpadded feed-forward networks) against the
    padded pass: a LoRA step and a validation pass of 64 CoLA examples (20 % of the suffix pass is
    padding), a SAMSum step."""
    return _padding_cases(setup, padded_passes)


def packed_tokens_case(setup: Setup) -> dict:
    """Concatenated rows (speedups/concatenated_rows.py) against the feed-forward-only unpadding they replace, on the
    ``unpadding`` case's passes."""
    return _padding_cases(setup, feed_forward_unpadded_only)


def _padding_cases(setup: Setup, before) -> dict:
    cases, model = {}, setup.lora
    for task, n, skip in (("cola", 64, 18), ("samsum", 16, 20)):
        batch = setup.batch(task, n=n, skip=skip)
        prefix = shared_prefix_length(batch)
        real = batch["attention_mask"][:, prefix:]
        what = f"{task} {n} ex × {batch['input_ids'].shape[1]} tokens, {1 - real.float().mean():.0%} padding"

        def before_step(b=batch):
            with before():
                training_step(model, b)

        def before_validation(b=batch):
            with before():
                validation_pass(model, b)

        cases[f"LoRA step, {what}"] = {"before": before_step, "after": lambda b=batch: training_step(model, b)}
        cases[f"validation pass, {what}"] = {
            "before": before_validation, "after": lambda b=batch: validation_pass(model, b)}
    return cases


def _t5_lora(config) -> torch.nn.Module:
    torch.manual_seed(0)
    return apply_method(AutoModelForSeq2SeqLM.from_config(config), "seq2seq", "lora").model


def tiny_t5_rows(data_dir: str | None) -> tuple[list, int]:
    """The tiny T5 cell's step: 64 length-sorted CoLA training rows (bytes) of middling length, and the pad id."""
    loaded = load_model("t5-tiny-random")
    data = load_task_data(get_task("cola"), data_dir, "low", 0, 200)
    rows = sorted(encode(data.train[:100], loaded.tokenizer, "seq2seq", 512, 128), key=lambda e: len(e.input_ids))
    return rows[20:84], loaded.tokenizer.pad_token_id


def _tiny_t5_batches(data_dir: str | None) -> list[dict]:
    """``tiny_t5_rows`` as the cell runs them: 4 passes of 16."""
    rows, pad = tiny_t5_rows(data_dir)
    return [collate(rows[i: i + 16], "seq2seq", pad) for i in range(0, 64, 16)]


def _flan_t5_base_shaped() -> tuple:
    """2 + 2 layers shaped like FLAN-T5-base (d_model 768, 12 heads) and a batch of 8 rows of 256 source and
    32 target tokens (random ids)."""
    config = load_config("flan-t5-base")  # bundled with the package: no download
    config.num_layers = config.num_decoder_layers = 2
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(2, 32000, (8, 256), generator=generator),
             "attention_mask": torch.ones(8, 256, dtype=torch.long),
             "labels": torch.randint(2, 32000, (8, 32), generator=generator)}
    return config, batch


def bits_dropout_case(setup: Setup) -> dict:
    """Dropout masks from random bits (speedups/bits_dropout.py) against torch's ``bernoulli_`` masks: LoRA steps
    with T5's dropout of 0.1 (on attention probabilities and hidden states), eager attention as peftbench
    trains: the tiny T5 cell's step (4 passes of 16 CoLA rows, bytes), and 2 + 2 layers shaped like
    FLAN-T5-base (d_model 768, 12 heads, random weights) on 8 rows of 256 source and 32 target tokens."""
    tiny_batches = _tiny_t5_batches(setup.data_dir)
    base_config, base_batch = _flan_t5_base_shaped()
    cases = {}
    for what, model, batches in (("tiny T5 LoRA step, 4 × 16 CoLA rows", _t5_lora(load_config("t5-tiny-random")),
                                  tiny_batches),
                                 ("FLAN-T5-base-shaped 2+2 layers, LoRA step, 8 × 256", _t5_lora(base_config),
                                  [base_batch])):
        def torch_masks(m=model, b=batches):
            accumulate(m, b, hf_loss)

        def bits_masks(m=model, b=batches):
            with cpu_dropout():
                accumulate(m, b, hf_loss)
        cases[what] = {"before": torch_masks, "after": bits_masks}
    return cases


def grouped_query_case(setup: Setup) -> dict:
    """Eager attention in grouped-query form (eager_attention.grouped_query_eager: each key/value head meets its group
    of query heads in one matmul) against transformers' eager attention (repeat_kv copies), as peftbench
    runs each pass otherwise."""
    cases, model = {}, setup.lora
    for task, n, skip in (("cola", 64, 18), ("samsum", 16, 20), ("samsum", 16, 60)):
        batch = setup.batch(task, n=n, skip=skip)
        what = f"{task} {n} ex × {batch['input_ids'].shape[1]} tokens"

        def repeated_kv(run, b=batch):
            with mock.patch.object(attention_kernels, "GROUPED_QUERY_EAGER_MODEL_TYPES", frozenset()):
                run(model, b)

        cases[f"LoRA step, {what}"] = {"before": lambda r=repeated_kv: r(training_step),
                                       "after": lambda b=batch: training_step(model, b)}
        cases[f"validation pass, {what}"] = {"before": lambda r=repeated_kv: r(validation_pass),
                                             "after": lambda b=batch: validation_pass(model, b)}
    return cases


def inference_mode_case(setup: Setup) -> dict:
    """Forward-only passes as peftbench runs them (evaluate.validation_loss, evaluate.generate) under
    ``torch.inference_mode`` against ``torch.no_grad``: the tiny T5 cell's 100 validation examples and 100
    test prompts, SmolLM2 LoRA's 100 CoLA validation examples and 16 test prompts."""
    t5 = _t5_lora(load_config("t5-tiny-random"))
    t5_tokenizer = load_model("t5-tiny-random").tokenizer
    data = load_task_data(get_task("cola"), setup.data_dir, "low", 0, 200)
    t5_validation, t5_test = (encode(split, t5_tokenizer, "seq2seq", 512, 128) for split in (data.validation, data.test))
    smollm2, validation, test = setup.lora, setup.encoded("cola", "validation", 100), setup.encoded("cola", "test", 16)
    pad = setup.tokenizer.pad_token_id
    runs = {"tiny T5 validation loss, 100 examples": lambda: evaluate.validation_loss.__wrapped__(
                t5, t5_validation, "seq2seq", 0, 32, eval_plan(t5), autocast()),
            "tiny T5 decoding, 100 prompts × ≤ 14 bytes": lambda: evaluate.generate.__wrapped__(
                t5, t5_test, t5_tokenizer, "seq2seq", 14, 32, CPU, autocast()),
            "SmolLM2 validation loss, 100 CoLA examples": lambda: evaluate.validation_loss.__wrapped__(
                smollm2, validation, "causal", pad, 32, eval_plan(smollm2), autocast()),
            "SmolLM2 decoding, 16 CoLA prompts × ≤ 8 tokens": lambda: evaluate.generate.__wrapped__(
                smollm2, test, setup.tokenizer, "causal", 8, 16, CPU, autocast())}

    def under(mode, run):
        def timed():
            with mode():
                run()
        return timed
    return {what: {"before": under(torch.no_grad, run), "after": under(torch.inference_mode, run)}
            for what, run in runs.items()}


def packed_weights_case(setup: Setup) -> dict:
    """Frozen bf16 linears multiplied through oneDNN's prepacked weights (speedups/onednn_weights.py) against
    ``F.linear``: SmolLM2 LoRA's training step on 64 CoLA rows, its validation loss on 100 CoLA examples
    and decoding of 16 CoLA prompts; a LoRA step of 2 + 2 layers shaped like FLAN-T5-base. (The tiny T5
    cell's weights are below ``onednn_weights.MIN_PACKED_ELEMENTS``: it is left as it was.)"""
    plain = setup.model(packed=False)
    batch = setup.batch("cola", n=64, skip=18)
    validation, test = setup.encoded("cola", "validation", 100), setup.encoded("cola", "test", 16)
    pad = setup.tokenizer.pad_token_id
    t5_config, t5_batch = _flan_t5_base_shaped()
    t5_plain, t5_packed = (_t5_lora(t5_config) for _ in range(2))
    for t5 in (t5_plain, t5_packed):
        store_frozen_linears_in(t5, torch.bfloat16)
    pack_frozen_linears(t5_packed)

    def sides(run):
        return {"before": lambda: run(plain), "after": lambda: run(setup.lora)}
    return {"SmolLM2 LoRA step, 64 CoLA rows": sides(lambda m: training_step(m, batch)),
            "SmolLM2 validation loss, 100 CoLA examples": sides(lambda m: evaluate.validation_loss(
                m, validation, "causal", pad, 32, eval_plan(m), autocast())),
            "SmolLM2 decoding, 16 CoLA prompts × ≤ 8 tokens": sides(lambda m: evaluate.generate(
                m, test, setup.tokenizer, "causal", 8, 16, CPU, autocast())),
            "FLAN-T5-base-shaped 2+2 layers, LoRA step, 8 × 256": {
                "before": lambda: _dropout_step(t5_plain, [t5_batch]), "after": lambda: _dropout_step(t5_packed, [t5_batch])}}


CASES = {"eager_attention": eager_attention, "grouped_query": grouped_query_case, "unpadding": unpadding_case,
         "packed_tokens": packed_tokens_case,
         "bits_dropout": bits_dropout_case, "inference_mode": inference_mode_case,
         "packed_weights": packed_weights_case}


ALLOCATOR_STEPS = ("tiny T5 LoRA step, 4 × 16 CoLA rows", "SmolLM2 LoRA step, 64 CoLA rows")


def allocator_child(data_dir: str, what: str, mode: str) -> None:
    """One process of ``levers.py``'s keep_freed_memory case (glibc's settings hold for the process's life,
    and what a process loaded before moves glibc's own thresholds, so each step has a process of its own):
    glibc's thresholds set as a run sets them (``mode`` keep) or left alone (default), then the median
    seconds and minor page faults of one of ``ALLOCATOR_STEPS`` as peftbench trains it."""
    kept = freed_memory.keep_freed_memory() if mode == "keep" else False
    if what == ALLOCATOR_STEPS[0]:
        model, batches = _t5_lora(load_config("t5-tiny-random")), _tiny_t5_batches(data_dir)
        step, repeats = lambda: _dropout_step(model, batches), 15
    else:
        setup = Setup(data_dir)
        model, batch = setup.lora, setup.batch("cola", n=64, skip=18)
        step, repeats = lambda: training_step(model, batch), 5
    for _ in range(3):  # warm-up: the heap reaches its size, kernels are chosen
        step()
    seconds, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    print(json.dumps({"kept": kept, "seconds": statistics.median(seconds), "faults_per_step": faults}))


def _dropout_step(model, batches) -> None:
    with cpu_dropout():
        accumulate(model, batches, hf_loss)


if __name__ == "__main__":
    allocator_child(sys.argv[2], sys.argv[3], sys.argv[4])  # kernel_cases.py --allocator-child DATA_DIR STEP MODE
