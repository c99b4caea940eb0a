"""The serve stage: what a method costs once its tested weights answer requests.

Measured on the weights a run saved (``train.save_adapter``: PEFT's ``save_pretrained`` of the adapter, or the
whole model for full tuning), after the test (``serve.enabled``) or later (``peftbench serve-bench``):

- the adapter's bytes on disk; the seconds to load it onto a base model already in memory (full tuning:
  to load the model itself) and to switch between two adapters of one base (PEFT's ``set_adapter``; full
  tuning switches by loading the other model's weights into the one in memory);
- greedy decoding of the first ``serve.requests`` test prompts at each of ``serve.batch_sizes``, by the base
  model alone, the tuned model as trained ("unmerged") and merged into the base weights where the method
  merges ("merged": LoRA and (IA)3 by PEFT's ``merge_and_unload``; BitFit's biases folded into the linears,
  which get a zero bias first where they have none; prompt tuning cannot merge and pays its virtual tokens
  at every request; full tuning is the model itself). The base model takes each batch in turn with the
  variant it is compared with, so that both meet the same load on the machine. Every request decodes
  exactly ``new_tokens`` tokens, end of sequence ignored, so latencies compare the models' compute and not
  their answers' lengths; a prediction is the text before the first end of sequence, as the test decoded it;
- the merge check, never assumed: the merged model's predictions against the unmerged one's, request by
  request (exact in fp32; in bf16 at most ``serve.bf16_tolerance`` of them may differ), and the largest
  difference of their next-token logits over the requests.

An encoder classifier (family ``encoder``) answers a request with one forward pass and its head's highest
class, not by decoding: its latency is that pass, its one "token" per request is the class (``tokens_per_s``
reads requests per second), its prediction the class's label word, and the logits checked are the head's.
Its base model is the untuned encoder under a head drawn as training drew it.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
from safetensors.torch import load_file
from torch import nn

from peftbench.catalog.models import auto_class, load_model
from peftbench.catalog.peft_compat import cache_visible_to_peft
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import RunConfig, ServeConfig
from peftbench.errors import UserError
from peftbench.recipe.batching import Encoded, collate_prompts, encode, source_token_limit

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def serve_stage(run: RunConfig, adapter: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's serve stage: the serving figures of the weights just saved, or None when ``serve`` is off."""
    if not run.serve.enabled or not adapter.get("path"):  # no path: another process of a launch saved them
        return None
    return measure(run, Path(adapter["path"]), run.serve)


@dataclass
class Decoded:
    """One variant's decoding of the requests at one batch size."""

    batch_size: int
    seconds: float
    batches: int
    tokens: int
    predictions: list[str]

    def pooled(self, other: Decoded) -> Decoded:
        """Both measurements of one variant together (the predictions are this one's)."""
        return Decoded(self.batch_size, self.seconds + other.seconds, self.batches + other.batches,
                       self.tokens + other.tokens, self.predictions)

    def record(self, variant: str) -> dict[str, Any]:
        return {"variant": variant, "batch_size": self.batch_size, "latency_s": self.seconds / self.batches,
                "tokens_per_s": self.tokens / self.seconds, "batches": self.batches, "tokens": self.tokens}


def measure(run: RunConfig, adapter_dir: Path, settings: ServeConfig) -> dict[str, Any]:
    """Every serving figure of the weights in ``adapter_dir`` (saved by ``run``), as recorded in ``serving``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[settings.precision]
    task = get_task(run.task)
    classes = task.classes or None  # an encoder model's head, as trained
    loaded = load_model(run.model, run.trust_remote_code, revision=run.model_revision, labels=classes,
                        seed=run.seed)
    model, load_s = load_tuned(loaded.model.to(device, dtype), loaded.family, adapter_dir, device, dtype)
    requests = serving_requests(run, loaded.tokenizer, loaded.family, settings.requests, model)
    new_tokens = 1 if loaded.family == "encoder" else settings.new_tokens or task.generation_budget

    def logits_of(model: nn.Module) -> torch.Tensor:
        return next_token_logits(model, requests, loaded.tokenizer, loaded.family, device)

    base = load_model(run.model, run.trust_remote_code, revision=run.model_revision, labels=classes,
                      seed=run.seed).model.to(device, dtype)  # a copy of its own
    decoded: dict[str, dict[int, Decoded]] = {"base": {}}

    def decode_beside_base(variant: str, model: nn.Module) -> dict[int, Decoded]:
        """``model``'s decoding, batch by batch in turn with the base model's (pooled into ``decoded``), so
        that both meet the same load on the machine."""
        sides = {size: decode_side_by_side({"base": base, variant: model}, requests, loaded.tokenizer,
                                           loaded.family, size, new_tokens, device)
                 for size in settings.batch_sizes}
        for size, side in sides.items():
            earlier = decoded["base"].get(size)
            decoded["base"][size] = side["base"] if earlier is None else earlier.pooled(side["base"])
        return {size: side[variant] for size, side in sides.items()}

    swap_s, swap_by = swap_seconds(model, adapter_dir, settings.swaps)
    peft_config = model.active_peft_config if isinstance(model, peft.PeftModel) else None
    decoded["unmerged"] = decode_beside_base("unmerged", model)
    merge, check = merge_and_check(model, decoded, functools.partial(decode_beside_base, "merged"), logits_of,
                                   settings)
    return {
        "precision": settings.precision, "device": device.type, "threads": torch.get_num_threads(),
        "requests": len(requests), "new_tokens": new_tokens,
        "adapter_bytes": directory_bytes(adapter_dir), "load_s": load_s,
        "loads": "adapter" if isinstance(model, peft.PeftModel) else "model",
        "swap_s": swap_s, "swap_by": swap_by, "merge": merge,
        "virtual_tokens": getattr(peft_config, "num_virtual_tokens", None),
        "decoding": [d.record(variant) for variant, sizes in decoded.items() for d in sizes.values()],
        "check": check,
    }


def serving_requests(run: RunConfig, tokenizer, family: str, count: int,
                     model: nn.Module | None = None) -> list[Encoded]:
    """The first ``count`` prompts of the run's test split, tokenised as the test tokenised them (on an
    encoder, cut to what the tuned ``model``'s positions hold: ``batching.source_token_limit``)."""
    task = get_task(run.task)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, run.train.eval_examples,
                          run.train.test_examples)
    if not data.test:
        raise UserError(f"{run.run_id()}: the test split is empty: no requests to serve")
    max_source = run.train.max_source_tokens if model is None else source_token_limit(
        run.train.max_source_tokens, family, model)
    classes = list(task.classes) if family == "encoder" else None
    return encode(data.test[:count], tokenizer, family, max_source, run.train.max_target_tokens, classes)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_tuned(base: nn.Module, family: str, adapter_dir: Path, device: torch.device,
               dtype: torch.dtype) -> tuple[nn.Module, float]:
    """The tuned model ready to serve, and the seconds it took: a PEFT adapter onto ``base`` (already in
    memory), or, for full tuning, the saved model itself."""
    _sync(device)
    started = time.perf_counter()
    if (Path(adapter_dir) / "adapter_config.json").is_file():
        model = peft.PeftModel.from_pretrained(base, adapter_dir)
    else:
        model = auto_class(family).from_pretrained(adapter_dir, dtype=torch.float32, use_safetensors=True)
    model = model.to(device, dtype).eval()
    _sync(device)
    return model, time.perf_counter() - started


def swap_seconds(model: nn.Module, adapter_dir: Path, swaps: int) -> tuple[float, str]:
    """Mean seconds of one switch between two sets of tuned weights for one base, and how it is done.

    PEFT: the saved adapter loaded a second time under another name, then ``set_adapter`` back and forth.
    Full tuning: the saved weights, read into memory once, loaded into the model in place."""
    if isinstance(model, peft.PeftModel):
        model.load_adapter(adapter_dir, adapter_name="swap")
        started = time.perf_counter()
        for i in range(swaps):
            model.set_adapter("swap" if i % 2 == 0 else "default", inference_mode=True)
        seconds = (time.perf_counter() - started) / swaps
        model.set_adapter("default", inference_mode=True)
        model.delete_adapter("swap")
        return seconds, "set_adapter"
    state: dict[str, torch.Tensor] = {}
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        state.update(load_file(path))
    device = next(model.parameters()).device
    started = time.perf_counter()
    for _ in range(swaps):
        model.load_state_dict(state, strict=False)  # tied output weights are saved once
    _sync(device)
    return (time.perf_counter() - started) / swaps, "load_state_dict"


def merge_and_check(model: nn.Module, decoded: dict[str, dict[int, Decoded]], decode_beside_base, logits_of,
                    settings: ServeConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Merge where the method allows (``merge_weights``), decode with the merged model into
    ``decoded["merged"]`` and check it against ``decoded["unmerged"]``; returns the merge and the check."""
    mergeable = isinstance(model, peft.PeftModel) and not model.active_peft_config.is_prompt_learning
    reference = logits_of(model) if mergeable else None  # before merging changes the model
    merged, merge = merge_weights(model)
    if merged is None:
        return merge, None
    decoded["merged"] = decode_beside_base(merged)
    difference = float((logits_of(merged) - reference).abs().max())
    return merge, merge_check(decoded["unmerged"], decoded["merged"], difference, settings)


def merge_weights(model: nn.Module) -> tuple[nn.Module | None, dict[str, Any]]:
    """The tuned weights merged into the base model's, where the method allows it (changes ``model``)."""
    if not isinstance(model, peft.PeftModel):
        return None, {"status": "not_applicable", "how": "full tuning's weights are the model itself",
                      "seconds": None}
    if model.active_peft_config.is_prompt_learning:
        return None, {"status": "impossible", "seconds": None,
                      "how": "virtual tokens are inputs, not weights: every request pays for them"}
    how = "merge_and_unload"
    given = give_bitfit_biases(model)
    if given:
        how += f" (zero biases given first to {given} bias-less linears)"
    started = time.perf_counter()
    try:
        merged = model.merge_and_unload()
    except (ValueError, NotImplementedError, AttributeError, TypeError) as exc:
        return None, {"status": "unsupported", "how": f"{type(exc).__name__}: {exc}", "seconds": None}
    return merged.eval(), {"status": "merged", "how": how, "seconds": time.perf_counter() - started}


def give_bitfit_biases(model: nn.Module) -> int:
    """A zero bias on every linear that BitFit (PEFT's BEFT) adapts and that has none, so that the trained
    bias can merge into it; returns how many were given."""
    from peft.tuners.beft.layer import BeftLayer

    given = 0
    for module in model.modules():
        if isinstance(module, BeftLayer) and module.get_base_layer().bias is None:
            linear = module.get_base_layer()
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                   device=linear.weight.device), requires_grad=False)
            given += 1
    return given


def merge_check(unmerged: dict[int, Decoded], merged: dict[int, Decoded], max_logit_diff: float,
                settings: ServeConfig) -> dict[str, Any]:
    """Merged against unmerged predictions, request by request at every batch size; warns when they differ
    more than the precision allows."""
    pairs = [pair for size in unmerged
             for pair in zip(unmerged[size].predictions, merged[size].predictions, strict=True)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    tolerance = 0.0 if settings.precision == "fp32" else settings.bf16_tolerance
    check = {"precision": settings.precision, "rule": "exact" if tolerance == 0 else "tolerance",
             "tolerance": tolerance, "compared": len(pairs), "agreement": agreement,
             "max_abs_logit_diff": max_logit_diff, "passed": agreement >= 1.0 - tolerance}
    if not check["passed"]:
        warnings.warn(f"merged predictions agree with unmerged ones on {agreement:.1%} of requests "
                      f"({settings.precision} allows {tolerance:.0%} to differ)", stacklevel=2)
    return check


@torch.inference_mode()
def decode_side_by_side(models: dict[str, nn.Module], items: list[Encoded], tokenizer, family: str,
                        batch_size: int, new_tokens: int, device: torch.device) -> dict[str, Decoded]:
    """Greedy decoding of ``items`` in batches of ``batch_size`` by each of ``models``, timed, the models taking
    each batch in turn; each decodes the first batch once untimed before (one-time costs are no request's)."""
    batches = [items[start: start + batch_size] for start in range(0, len(items), batch_size)]
    for model in models.values():
        model.eval()
        respond(model, batches[0], tokenizer, family, new_tokens, device)
    decoded = {name: Decoded(batch_size, 0.0, 0, 0, []) for name in models}
    for batch in batches:
        for name, model in models.items():
            _sync(device)
            started = time.perf_counter()
            predictions, tokens = respond(model, batch, tokenizer, family, new_tokens, device)
            _sync(device)
            decoded[name].seconds += time.perf_counter() - started
            decoded[name].batches += 1
            decoded[name].tokens += tokens
            decoded[name].predictions += predictions
    return decoded


def respond(model: nn.Module, items: list[Encoded], tokenizer, family: str, new_tokens: int,
            device: torch.device) -> tuple[list[str], int]:
    """The model's answers to one batch of requests and the tokens it produced: ``new_tokens`` greedy
    tokens per request, or an encoder classifier's one class per request (its label word)."""
    if family == "encoder":
        batch = collate_prompts(items, tokenizer.pad_token_id, left=False)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # [batch, classes]
        return [model.config.id2label[i] for i in logits.argmax(dim=-1).tolist()], len(items)
    new = generate_new_tokens(model, items, tokenizer, family, new_tokens, device)
    return answers(new, tokenizer, family), new.numel()


def generate_new_tokens(model: nn.Module, items: list[Encoded], tokenizer, family: str, new_tokens: int,
                        device: torch.device) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens per prompt (no end-of-sequence stop): [batch, new_tokens]."""
    batch = collate_prompts(items, tokenizer.pad_token_id, left=family == "causal")
    batch = {k: v.to(device) for k, v in batch.items()}
    with cache_visible_to_peft(model):
        generated = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=[])
    start = batch["input_ids"].shape[1] if family == "causal" else 1  # the echoed prompt / decoder start
    return generated[:, start:]


def answers(new: torch.Tensor, tokenizer, family: str) -> list[str]:
    """Each row's text before its first end of sequence, cleaned as ``evaluate.generate`` cleans it."""
    rows = []
    for ids in new.tolist():
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        rows.append(text.split("\n")[0].strip() if family == "causal" else text)
    return rows


@torch.inference_mode()
def next_token_logits(model: nn.Module, items: list[Encoded], tokenizer, family: str,
                      device: torch.device) -> torch.Tensor:
    """fp32 logits of each request's first answer token, [requests, vocab] (an encoder classifier's head:
    [requests, classes])."""
    batch = collate_prompts(items, tokenizer.pad_token_id, left=family == "causal")
    batch = {k: v.to(device) for k, v in batch.items()}
    if family == "encoder":
        return model(**batch).logits.float()
    if family == "seq2seq":
        start = model.config.decoder_start_token_id
        batch["decoder_input_ids"] = torch.full((len(items), 1), start, dtype=torch.long, device=device)
    return model(**batch).logits[:, -1].float()
