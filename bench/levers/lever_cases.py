"""The before/after pairs of bench/levers/levers.py: each case maps "what is timed" to {"before": f, "after": f}.

Also the child processes of the OpenMP case: ``--omp-child`` (times a training step and a decode) and
``--hog`` (a competing 2-thread torch loop, like another user's job on a shared machine).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import SpeedupsConfig
from peftbench.recipe.batching import collate, encode, length_grouped_batches
from peftbench.recipe.checkpoint import BackgroundWriter, save_checkpoint
from peftbench.recipe.evaluate import generate, validation_loss
from peftbench.recipe.label_ranking import rank_classify
from peftbench.recipe.loss import target_loss
from peftbench.speedups import OFF, LeverStatus, SpeedupPlan, for_model
from peftbench.speedups.bf16_frozen_weights import store_frozen_linears_in
from peftbench.speedups.eager_attention import pass_attention
from peftbench.speedups.onednn_weights import pack_frozen_linears
from peftbench.speedups.shared_prompt_prefix import shared_prefix_length

CPU = torch.device("cpu")
_PLANS: dict[tuple, SpeedupPlan] = {}


def eval_plan(model, fused_passes: bool = True) -> SpeedupPlan:
    """The CPU speed-up plan of forward-only passes as a run has it (the model is prepared by the case: its
    frozen linears stored and packed; the process's allocator left as the case finds it)."""
    key = (id(model), "eval", fused_passes)
    if key not in _PLANS:
        _PLANS[key] = for_model(model, CPU, SpeedupsConfig(keep_freed_memory=False, frozen_weights_bf16=False,
                                                           onednn_blocked_weights=False, fused_passes=fused_passes))
    return _PLANS[key]


def causal_target_loss(model, batch, reduction: str = "mean", prefix: int | None = None):
    """The target-only loss with the levers that act inside a pass (LM head at targets, shared prefix,
    concatenated rows where the attention is grouped-query eager, unpadded feed-forward networks); the
    attention around it is each case's own choice. ``prefix=0``: no prefix shared."""
    key = (id(model), "loss", prefix == 0)
    if key not in _PLANS:
        plan = for_model(model, CPU, SpeedupsConfig(keep_freed_memory=False, frozen_weights_bf16=False,
                                                    onednn_blocked_weights=False, shared_prompt_prefix=prefix != 0))
        plan.statuses["eager_attention"] = LeverStatus(OFF)  # the case chooses the attention around the pass
        _PLANS[key] = plan
    return target_loss(model, batch, _PLANS[key], reduction)


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


class Setup:
    """Data and model copies, built on first use."""

    def __init__(self, data_dir: str | None) -> None:
        self.data_dir = data_dir

    @cached_property
    def tokenizer(self):
        return load_model("smollm2-135m-q4").tokenizer

    def encoded(self, task: str, split: str, n: int):
        data = load_task_data(get_task(task), self.data_dir, "low", 0, 2 * max(n, 32))
        return encode(getattr(data, split)[:n], self.tokenizer, "causal", 512, 128)

    def model(self, method: str = "lora", bf16_storage: bool = True, packed: bool = True):
        """SmolLM2 with ``method`` applied, its frozen linears stored as peftbench trains them (bf16, packed)."""
        loaded = load_model("smollm2-135m-q4")
        torch.manual_seed(0)
        model = apply_method(loaded.model, "causal", method).model
        if bf16_storage:
            store_frozen_linears_in(model, torch.bfloat16)
            if packed:
                pack_frozen_linears(model)
        return model

    @cached_property
    def lora(self):
        return self.model()

    def batch(self, task: str, n: int = 16, skip: int = 40):
        """``n`` training examples of middling length (sorted, from position ``skip``)."""
        items = sorted(self.encoded(task, "train", 100), key=lambda e: len(e.input_ids))[skip: skip + n]
        return collate(items, "causal", self.tokenizer.pad_token_id)


def unshared_loss(model, batch):
    """The target-only loss without prefix sharing: the baseline the other levers are measured on."""
    return causal_target_loss(model, batch, prefix=0)


def train_step(model, batch, loss=unshared_loss, attention=None, zero=True, precision=autocast):
    if not model.training:  # peftbench sets the mode once per epoch; a walk over SmolLM2's modules is ~11 ms
        model.train()
    with precision(), attention or nullcontext():
        value = loss(model, batch)
    value.backward()
    if zero:
        model.zero_grad(set_to_none=True)


def accumulate(model, batches, loss=unshared_loss):
    """Forward/backward each batch into the same gradients, as an optimiser step does."""
    for batch in batches:
        train_step(model, batch, loss, attention=peftbench_attention(model, batch), zero=False)
    model.zero_grad(set_to_none=True)


def peftbench_attention(model, batch, training: bool = True):
    """The attention peftbench runs a CPU pass of ``batch`` with (speedups/eager_attention.py)."""
    return pass_attention(model, batch["input_ids"].shape[1], training)


def training_step(model, batch):
    """A step as peftbench trains: the shared-prefix target loss, the CPU attention kernel for its width."""
    train_step(model, batch, causal_target_loss, attention=peftbench_attention(model, batch))


def hf_loss(model, batch):
    return model(**batch).loss


def decode(model, setup: Setup, task="cola", n=16, new_tokens=8, batch_size=16):
    items = setup.encoded(task, "test", n)
    return lambda: generate(model, items, setup.tokenizer, "causal", new_tokens, batch_size, CPU, autocast())


def frozen_bf16(setup: Setup) -> dict:
    fp32 = setup.model(bf16_storage=False)
    batch = setup.batch("cola")
    return {"LoRA train step, CoLA 16 ex": {"before": lambda: train_step(fp32, batch),
                                            "after": lambda: train_step(setup.lora, batch)},
            "decode 16 CoLA prompts × 8 tokens": {"before": decode(fp32, setup), "after": decode(setup.lora, setup)}}


def bf16_autocast(setup: Setup) -> dict:
    """peftbench's CPU precision (bf16 autocast, frozen linears stored in bf16 and prepacked) against fp32
    (``train.precision=fp32``), on the 64-row CoLA LoRA step and a validation pass of the same rows."""
    fp32, batch = setup.model(bf16_storage=False), setup.batch("cola", n=64, skip=18)
    return {"LoRA step, CoLA 64 ex × 31 tokens": {
                "before": lambda: train_step(fp32, batch, causal_target_loss, attention=peftbench_attention(fp32, batch),
                                             precision=nullcontext),
                "after": lambda: training_step(setup.lora, batch)},
            "validation pass, CoLA 64 ex × 31 tokens": {
                "before": lambda: forward_pass(fp32, batch, peftbench_attention(fp32, batch, training=False),
                                               precision=nullcontext),
                "after": lambda: validation_pass(setup.lora, batch)}}


def tied_head_bf16(setup: Setup) -> dict:
    retied = setup.model()
    retied.get_output_embeddings().weight = retied.get_input_embeddings().weight  # the fp32 original, shared
    return {"decode 16 CoLA prompts × 8 tokens": {"before": decode(retied, setup), "after": decode(setup.lora, setup)}}


def target_only_head(setup: Setup) -> dict:
    cases = {}
    for task in ("cola", "samsum"):
        batch = setup.batch(task)
        width = batch["input_ids"].shape[1]
        cases[f"LoRA train step, {task} 16 ex × {width} tokens"] = {
            "before": lambda b=batch: train_step(setup.lora, b, hf_loss),
            "after": lambda b=batch: train_step(setup.lora, b)}
    return cases


def math_or_flash(width: int):
    """The SDPA kernel peftbench trained with before eager attention: math up to 200 tokens, flash beyond."""
    return sdpa_kernel([SDPBackend.MATH]) if width <= 200 else nullcontext()


def forward_pass(model, batch, attention, precision=autocast) -> None:
    """A validation pass: the summed target loss, in inference mode as evaluate.validation_loss runs it."""
    model.eval()
    with torch.inference_mode(), precision(), attention:
        causal_target_loss(model, batch, reduction="sum")


def validation_pass(model, batch) -> None:
    """A validation pass as peftbench runs it: the CPU attention for its width (forward only)."""
    forward_pass(model, batch, peftbench_attention(model, batch, training=False))


def length_grouping(setup: Setup) -> dict:
    items = setup.encoded("samsum", "train", 100)
    pad = setup.tokenizer.pad_token_id

    def epoch(grouped: bool):
        def run():
            for indices in length_grouped_batches(items, 16, seed=1, group_by_length=grouped):
                batch = collate([items[i] for i in indices], "causal", pad)
                train_step(setup.lora, batch, attention=peftbench_attention(setup.lora, batch))
        return run

    padded = {g: sum(16 * max(len(items[i].input_ids) for i in b) for b in length_grouped_batches(items, 16, 1, g))
              for g in (False, True)}
    real = sum(len(e.input_ids) for e in items)
    what = (f"LoRA epoch, SAMSum 100 ex ({real} tokens; padded to {padded[False]} random, {padded[True]} grouped)")
    return {what: {"before": epoch(False), "after": epoch(True), "repeats": 1}}


def sorted_decoding(setup: Setup) -> dict:
    items = setup.encoded("samsum", "test", 64)

    def in_dataset_order():  # what a plain loop does: batches of consecutive prompts
        for start in range(0, len(items), 32):
            generate(setup.lora, items[start: start + 32], setup.tokenizer, "causal", 16, 32, CPU, autocast())

    return {"decode 64 SAMSum prompts × 16 tokens": {
        "before": in_dataset_order,
        "after": lambda: generate(setup.lora, items, setup.tokenizer, "causal", 16, 32, CPU, autocast())}}


def rank_scoring(setup: Setup) -> dict:
    """Scoring CoLA's two label words (peftbench.recipe.label_ranking) against decoding the answer, on 64 test prompts in
    batches of 32: the two ways a classification test can be scored (exact match needs the decoding)."""
    task = get_task("cola")
    examples = load_task_data(task, setup.data_dir, "low", 0, 200).test[:64]
    items = encode(examples, setup.tokenizer, "causal", 512, 128)
    return {"64 CoLA test prompts: decode the answer / rank 2 label words": {
        "before": lambda: generate(setup.lora, items, setup.tokenizer, "causal", task.generation_budget, 32, CPU,
                                   autocast()),
        "after": lambda: rank_classify(setup.lora, task, examples, setup.tokenizer, "causal", 512, 128, 32,
                                       eval_plan(setup.lora), autocast())}}


def fused_accumulation(setup: Setup) -> dict:
    """Experiment: an optimiser step's 4 micro-batches of 16 as one forward/backward of 64."""
    cases = {}
    items = sorted(setup.encoded("cola", "train", 100), key=lambda e: len(e.input_ids))[20:84]
    pad = setup.tokenizer.pad_token_id
    quarters = [collate(items[i: i + 16], "causal", pad) for i in range(0, 64, 16)]
    whole = collate(items, "causal", pad)
    for method in ("lora", "full"):
        model = setup.lora if method == "lora" else setup.model("full")
        cases[f"{method} step: 4 passes of 16 CoLA ex, or 1 of 64"] = {
            "before": lambda m=model: accumulate(m, quarters), "after": lambda m=model: accumulate(m, [whole])}
    return cases


def shared_prefix(setup: Setup) -> dict:
    """A template prefix common to a pass's rows run once (speedups/shared_prompt_prefix.py), in a fused step of 64 CoLA
    examples (LoRA and full tuning) and in a validation pass over 100 CoLA examples."""
    cases = {}
    batch = setup.batch("cola", n=64, skip=18)
    prefix, width = shared_prefix_length(batch), batch["input_ids"].shape[1]
    for method in ("lora", "full"):
        model = setup.lora if method == "lora" else setup.model("full")
        what = f"{method} step, 64 CoLA ex × {width} tokens, {prefix} shared"
        cases[what] = {
            "before": lambda m=model: train_step(m, batch, attention=peftbench_attention(m, batch)),
            "after": lambda m=model: training_step(m, batch)}
    validation = setup.encoded("cola", "validation", 100)
    pad = setup.tokenizer.pad_token_id

    def unshared_in_dataset_order():  # the loop before both levers: batches of consecutive examples
        setup.lora.eval()
        with torch.no_grad(), autocast():
            for start in range(0, len(validation), 32):
                unshared_loss(setup.lora, collate(validation[start: start + 32], "causal", pad))

    cases["validation loss, 100 CoLA ex (length-ordered batches + shared prefix)"] = {
        "before": unshared_in_dataset_order,
        "after": lambda: validation_loss(setup.lora, validation, "causal", pad, 32, eval_plan(setup.lora, False),
                                         autocast())}
    return cases


def validation_fusion(setup: Setup) -> dict:
    """Validation batches of 32 in length order, each its own forward pass, or consecutive ones sharing a pass
    (``evaluate.validation_batches``; CoLA: passes of 64 and 36, not 32, 32, 32 and 4)."""
    validation = setup.encoded("cola", "validation", 100)
    pad = setup.tokenizer.pad_token_id

    def loss(fuse: bool):
        return lambda: validation_loss(setup.lora, validation, "causal", pad, 32, eval_plan(setup.lora, fuse),
                                       autocast())
    return {"validation loss, 100 CoLA ex, LoRA": {"before": loss(False), "after": loss(True)}}


def _full_tuning_state(setup: Setup):
    """SmolLM2 under full tuning after one AdamW step (so the optimiser holds its two moments), and a batch."""
    model, batch = setup.model("full"), setup.batch("cola", n=64, skip=18)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-5, fused=True)
    train_step(model, batch, causal_target_loss, zero=False)
    optimizer.step()
    return model, batch, trainable, optimizer


def background_checkpoint(setup: Setup) -> dict:
    """An epoch checkpoint of full tuning (weights + AdamW moments, 1.6 GB) followed by the next epoch's first
    training step: written first, or written on a background thread during the step (the step's optimiser
    update would wait for it)."""
    model, batch, trainable, optimizer = _full_tuning_state(setup)
    run_dir = Path(tempfile.mkdtemp(prefix="peftbench-lever-"))

    def step():
        training_step(model, batch)

    def write(save):
        save(run_dir, trainable, trainable, {"optimizer": optimizer.state_dict()}, best_is_trainable=True)

    def in_background():
        with BackgroundWriter() as writer:
            write(writer.save)
            step()

    return {"full-tuning checkpoint + next step, 64 CoLA ex": {
        "before": lambda: (write(save_checkpoint), step()), "after": in_background}}


def fused_adamw(setup: Setup) -> dict:
    """AdamW's update of all 135M weights of full tuning: one multi-tensor (foreach) kernel per operation, or
    one fused kernel."""
    _, _, trainable, _ = _full_tuning_state(setup)
    optimizers = {kind: torch.optim.AdamW(list(trainable.values()), lr=1e-9, **{kind: True})
                  for kind in ("foreach", "fused")}
    return {"AdamW step, 135M weights (full tuning)": {
        "before": optimizers["foreach"].step, "after": optimizers["fused"].step}}


CASES = {"bf16_autocast": bf16_autocast, "frozen_bf16": frozen_bf16, "tied_head_bf16": tied_head_bf16, "target_only_head": target_only_head,
         "length_grouping": length_grouping, "sorted_decoding": sorted_decoding,
         "fused_accumulation": fused_accumulation, "shared_prefix": shared_prefix,
         "validation_fusion": validation_fusion, "background_checkpoint": background_checkpoint,
         "fused_adamw": fused_adamw, "rank_scoring": rank_scoring}
"""The cases of the other levers; the kernel levers' are in kernel_cases.py."""


def _omp_child() -> None:
    setup = Setup(None)
    model, batch = setup.lora, setup.batch("synthetic_classification", skip=0)
    run = decode(model, setup, task="synthetic_classification")
    train_step(model, batch)
    started = time.perf_counter()
    train_step(model, batch)
    run()
    print(json.dumps({"seconds": time.perf_counter() - started}))


def _hog() -> None:
    x, w = torch.randn(512, 576), torch.randn(576, 576)
    while True:
        (x @ w).relu().mul(1.5).add(x)


if __name__ == "__main__":
    {"--omp-child": _omp_child, "--hog": _hog}[sys.argv[1]]()
