"""The script a competent user would write: Hugging Face ``Trainer`` (``Seq2SeqTrainer`` for T5) + PEFT.

    python bench/trainer_baseline.py OUT.json key=value ...

The same cell as peftbench's: the overrides resolve to the same config (``common.resolve_cell``), the rows
come from ``peftbench.catalog.tasks.data.load_task_data`` (same sample, same validation and test sets), the prompt
and target are tokenised to the same ids (the same truncation rule), the model is the same checkpoint,
and the method has the same configuration (LoRA r=3, alpha 8, on q/k/v/o; or every weight). Training:
fused AdamW (the Trainer's default) at the peak LR with the paper's warm-up/anneal as a ``LambdaLR``
(``optimizers=``), batch 16 × accumulation 4, the same max epochs, evaluation every epoch,
``EarlyStoppingCallback(patience=1)`` on eval_loss with ``load_best_model_at_end``,
``DataCollatorForSeq2Seq`` (dynamic padding), bf16 where the hardware has it. Test: batched greedy ``generate`` (left padding for causal models) under bf16 autocast,
with the task's max_new_tokens, scored by the same metric. Written as a user would: random batch order,
every position's logits, the Trainer's own evaluation loop.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time

import torch
from common import epoch_flops, load_average, resolve_cell, write_record
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.recipe.batching import IGNORE, truncate_middle
from peftbench.recipe.evaluate import score
from peftbench.recipe.protocol import paper_lr_lambda, resolved_lr

LORA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "t5": ["q", "k", "v", "o"]}


class EpochTimer(TrainerCallback):
    """Seconds spent in training steps (epoch begin → epoch end; evaluation runs after epoch end)."""

    def __init__(self) -> None:
        self.seconds, self.epochs, self._started = 0.0, 0, 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._started
        self.epochs += 1


def tokenize(examples, tokenizer, family: str, max_source: int, max_target: int) -> Dataset:
    """input_ids / attention_mask / labels as a user's ``Dataset.map`` would make them (-100 on the prompt)."""
    rows = Dataset.from_dict({"prompt": [e.prompt for e in examples], "target": [e.target for e in examples]})
    eos = tokenizer.eos_token_id

    def encode(batch):
        prompts = [truncate_middle(ids, max_source) for ids in tokenizer(batch["prompt"])["input_ids"]]
        if family == "seq2seq":
            targets = tokenizer(batch["target"])["input_ids"]
            labels = [t[:max_target] if t[-1:] == [eos] else t[: max_target - 1] + [eos] for t in targets]
            return {"input_ids": prompts, "attention_mask": [[1] * len(p) for p in prompts], "labels": labels}
        targets = tokenizer([" " + t for t in batch["target"]], add_special_tokens=False)["input_ids"]
        targets = [t[: max_target - 1] + [eos] for t in targets]
        return {"input_ids": [p + t for p, t in zip(prompts, targets, strict=True)],
                "attention_mask": [[1] * (len(p) + len(t)) for p, t in zip(prompts, targets, strict=True)],
                "labels": [[IGNORE] * len(p) + t for p, t in zip(prompts, targets, strict=True)],
                "prompt_ids": prompts}

    return rows.map(encode, batched=True, remove_columns=["prompt", "target"])


def attach_method(model, family: str, method: str):
    if method == "full":
        return model
    if method != "lora":
        raise SystemExit(f"the baseline implements full and lora, not {method}")
    config = LoraConfig(r=3, lora_alpha=8, lora_dropout=0.0, bias="none",
                        target_modules=LORA_TARGETS[model.config.model_type],
                        task_type="SEQ_2_SEQ_LM" if family == "seq2seq" else "CAUSAL_LM")
    return get_peft_model(model, config)


def build_trainer(run, model, tokenizer, family, train_set, validation_set, output_dir, timer):
    cfg = run.train
    max_epochs = run.epoch_cap()
    steps = math.ceil(math.ceil(len(train_set) / cfg.batch_size) / cfg.grad_accum) * max_epochs
    warmup = max(1, round(cfg.warmup_fraction * steps)) if cfg.warmup_fraction > 0 else 0
    lr = resolved_lr(cfg, run.method)
    # fused=True: what the Trainer's default optim ("adamw_torch_fused" since torch 2.8) builds.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr.peak,
                                  weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, paper_lr_lambda(lr, steps, warmup))
    bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True  # CPU autocast has bf16
    args_cls, trainer_cls = ((Seq2SeqTrainingArguments, Seq2SeqTrainer) if family == "seq2seq"
                             else (TrainingArguments, Trainer))
    args = args_cls(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=max_epochs, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        max_grad_norm=cfg.max_grad_norm, bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none", seed=run.seed, disable_tqdm=True,
        logging_strategy="epoch", remove_unused_columns=False)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE)
    return trainer_cls(model=model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                       data_collator=collator, optimizers=(optimizer, scheduler),
                       callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience), timer])


@torch.no_grad()
def generate_test(model, tokenizer, family, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                  device) -> list[str]:
    """Batched greedy decoding in dataset order, as a user's loop would do it."""
    model.eval()
    tokenizer.padding_side = "left" if family == "causal" else "right"
    predictions = []
    for start in range(0, len(prompts), batch_size):
        features = [{"input_ids": ids} for ids in prompts[start: start + batch_size]]
        batch = tokenizer.pad(features, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        if family == "causal":
            out = out[:, batch["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        predictions += [t.strip().split("\n")[0].strip() if family == "causal" else t.strip() for t in texts]
    return predictions


def main(out: str, overrides: list[str]) -> None:
    started = time.perf_counter()
    run = resolve_cell(overrides)
    cfg = run.train
    torch.manual_seed(run.seed)
    task = get_task(run.task)
    data = load_task_data(task, run.data_dir, run.scale, run.seed, cfg.eval_examples)
    loaded = load_model(run.model, run.trust_remote_code)
    tokenizer, family = loaded.tokenizer, loaded.family
    torch.manual_seed(run.seed)
    model = attach_method(loaded.model, family, run.method)
    splits = {name: tokenize(getattr(data, name), tokenizer, family, cfg.max_source_tokens, cfg.max_target_tokens)
              for name in ("train", "validation", "test")}
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        columns = ["input_ids", "attention_mask", "labels"]
        trainer = build_trainer(run, model, tokenizer, family, splits["train"].select_columns(columns),
                                splits["validation"].select_columns(columns), output_dir, timer)
        trainer.train()
    eval_started = time.perf_counter()
    prompts = splits["test"]["prompt_ids" if family == "causal" else "input_ids"]
    predictions = generate_test(trainer.model, tokenizer, family, prompts, task.generation_budget,
                                cfg.eval_batch_size, trainer.args.device)
    test_score = score(task, predictions, data.test)
    eval_s = time.perf_counter() - eval_started
    total_s = time.perf_counter() - started
    write_record(out, _record(overrides, run, trainer, timer, splits["train"], family, test_score, task,
                              total_s, eval_s, predictions))


def _record(overrides, run, trainer, timer, train_set, family, test_score, task, total_s, eval_s, predictions):
    lengths = [(len(ids), sum(label != IGNORE for label in labels), 0 if family == "causal" else len(labels))
               for ids, labels in zip(train_set["input_ids"], train_set["labels"], strict=True)]
    if family == "seq2seq":
        lengths = [(source, 0, decoder) for source, _, decoder in lengths]
    tokens_per_epoch = sum(source + decoder for source, _, decoder in lengths)
    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    best_epoch = min(history, key=lambda e: e["eval_loss"])["epoch"] if history else None
    return {
        "side": "trainer", "overrides": overrides, "time_to_result_s": total_s, "train_s": timer.seconds,
        "validation_s": None, "eval_s": eval_s, "epochs": timer.epochs, "best_epoch": best_epoch,
        "train_tokens": tokens_per_epoch * timer.epochs,
        "train_flops": epoch_flops(trainer.model, lengths) * timer.epochs,
        "score": test_score, "metric": task.headline,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "precision": "bf16" if trainer.args.bf16 else "fp32", "device": str(trainer.args.device),
        "history": history, "load_average": {"after": load_average()},
        "predictions_sample": predictions[:3],
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
