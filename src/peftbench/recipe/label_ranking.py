"""Label ranking (rank classification): score every label word as the answer and predict the most likely one.

The paper scores classification by exact match of generated text. Scoring the label words instead (the
multiple-choice scoring of lm-evaluation-harness) asks which of the task's answers the model finds most
likely: for each test prompt and each label word, the log-likelihood of that word as the target, its
tokens encoded exactly as training encodes a target (a causal model's leading space and EOS; a seq2seq
model's EOS), summed over those tokens. The prediction is the label word with the highest sum. It never
answers outside the label set, so beside exact match it separates "knows the answer" from "learned the
answer's format"; it is reported as its own metric, ``rank_accuracy`` (``train.rank_classification``).

Cost: each test prompt runs once (``shared_prompt_scores``): a causal model keeps the prompt's key/value
cache and runs only each label word's tokens after it, a seq2seq model keeps the encoder's output and runs
only the decoder per word; the first target token's log-likelihood comes from the prompt's own last
position. Prompt tuning runs its virtual tokens before the prompt in that one pass (a seq2seq model's
encoder). Other prompt learning takes the general path instead: one forward pass per label word over the
whole prompt and target, in the batches and through the loss validation uses (``target_log_likelihoods``).
No decoding either way.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from dataclasses import replace

import torch
from torch import nn

from peftbench.catalog.peft_compat import prompt_learning
from peftbench.catalog.tasks import TaskSpec
from peftbench.catalog.tasks.data import Example
from peftbench.recipe.batching import Encoded, collate, collate_prompts, encode
from peftbench.recipe.evaluate import batch_done, validation_batches
from peftbench.recipe.loss import target_token_losses
from peftbench.speedups import SpeedupPlan


@torch.inference_mode()  # as evaluate.validation_loss
def target_log_likelihoods(model, items: list[Encoded], family: str, pad_id: int, batch_size: int,
                           speedups: SpeedupPlan, autocast: AbstractContextManager) -> torch.Tensor:
    """Each item's summed log-likelihood of its target tokens (nats, float64), in item order."""
    model.eval()
    totals = torch.zeros(len(items), dtype=torch.float64)
    for rows in validation_batches(items, family, batch_size, speedups.fused_passes, speedups.virtual_tokens):
        with autocast:
            losses, owners = target_token_losses(model, collate([items[i] for i in rows], family, pad_id), speedups)
        totals.index_add_(0, torch.tensor(rows)[owners.cpu()], -losses.double().cpu())
        batch_done()
    return totals


def label_words(task: TaskSpec) -> list[str]:
    """The task's distinct label words, in the order its YAML lists them (ties go to the first)."""
    return list(task.classes)


def rank_label_words(model, task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
                     max_target: int, batch_size: int, speedups: SpeedupPlan,
                     autocast: AbstractContextManager) -> list[dict[str, float]]:
    """Each example's ``{label word: summed log-likelihood (nats)}``, every word scored as the target,
    its tokens encoded exactly as training encodes a target; ``best_word`` picks the prediction."""
    words = label_words(task)
    if not examples:
        return []
    candidates = [encode([replace(e, target=word) for e in examples], tokenizer, family, max_source, max_target)
                  for word in words]  # [word][example]
    if family in ("causal", "seq2seq") and (not speedups.virtual_tokens or prompt_tuned(model)):
        scores = shared_prompt_scores(model, candidates, family, tokenizer.pad_token_id, batch_size, autocast)
    else:
        scores = torch.stack([target_log_likelihoods(model, items, family, tokenizer.pad_token_id, batch_size,
                                                     speedups, autocast) for items in candidates], dim=1)
    return [dict(zip(words, row, strict=True)) for row in scores.tolist()]


def _target_ids(item: Encoded, family: str) -> list[int]:
    """The target tokens of an encoded candidate (after its prompt: causal; the decoder labels: seq2seq)."""
    return item.input_ids[len(item.prompt_ids):] if family == "causal" else item.labels


@torch.inference_mode()
def shared_prompt_scores(model, candidates: list[list[Encoded]], family: str, pad_id: int, batch_size: int,
                         autocast: AbstractContextManager) -> torch.Tensor:
    """Summed target log-likelihoods [examples, words] (float64), each prompt run once for every word:
    ``candidates[w][i]`` is example i with word w as its target (the same prompt for every w)."""
    model.eval()
    prompts = candidates[0]
    device = next(model.parameters()).device
    totals = torch.zeros(len(prompts), len(candidates), dtype=torch.float64)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].prompt_ids))  # similar lengths pad least
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = {k: v.to(device) for k, v in collate_prompts([prompts[i] for i in rows], pad_id,
                                                             left=family == "causal").items()}
        targets = [[_target_ids(candidates[w][i], family) for i in rows] for w in range(len(candidates))]
        with autocast:
            scores = (_causal_scores if family == "causal" else _seq2seq_scores)(model, batch, targets, pad_id)
        totals[rows] = scores.double().cpu()
        batch_done()
    return totals


def _gathered_log_probs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over positions of log p(target) where ``mask``: logits [rows, positions, vocab] → [rows]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (log_probs * mask).sum(dim=1)


def _padded(sequences: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    return ids, mask


def prompt_tuned(model) -> bool:
    """Whether ``model`` is PEFT's prompt tuning: learned virtual-token embeddings before every input."""
    return prompt_learning(model) == "prompt tuning"


def _first_pass(model, batch: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    """The model every pass calls, the prompt pass's inputs and its attention mask. Prompt tuning: the virtual
    tokens before each prompt (a causal model's left-padded, as PEFT's forward puts them before a right-padded
    one, so every real token keeps its position; a seq2seq model's encoder input), and the transformers model
    under PEFT, which would put them again before each word's tokens."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if not prompt_tuned(model):
        return model, {"input_ids": ids}, mask
    embeds = model.word_embeddings(ids)
    virtual = model.get_prompt(batch_size=ids.shape[0]).to(embeds.dtype)  # [rows, virtual tokens, hidden]
    mask = torch.cat([mask.new_ones(ids.shape[0], virtual.shape[1]), mask], dim=1)
    return model.base_model, {"inputs_embeds": torch.cat([virtual, embeds], dim=1)}, mask


def _causal_scores(model, batch: dict[str, torch.Tensor], targets: list[list[list[int]]], pad_id: int) -> torch.Tensor:
    """[rows, words]: the left-padded prompts once with their key/value cache, then each word's tokens after it.
    The prompt's last position predicts each word's first token; a word's own tokens predict the rest."""
    model, first_inputs, mask = _first_pass(model, batch)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(**first_inputs, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [rows, vocab]
    scores = torch.zeros(mask.shape[0], len(targets), device=mask.device)
    for w, word_targets in enumerate(targets):
        ids, valid = _padded(word_targets, pad_id, mask.device)  # [rows, n]: the word's tokens and EOS
        scores[:, w] = first.gather(-1, ids[:, :1]).squeeze(-1)
        if ids.shape[1] > 1:  # the word's tokens but its last, fed after the prompt, predict the tokens after them
            feed, steps = ids[:, :-1], ids.shape[1] - 1
            cont = model(input_ids=feed, attention_mask=torch.cat([mask, valid[:, :-1]], dim=1),
                         position_ids=positions[:, -1:] + torch.arange(1, steps + 1, device=mask.device),
                         past_key_values=copy.deepcopy(out.past_key_values), use_cache=True)
            scores[:, w] += _gathered_log_probs(cont.logits, ids[:, 1:], valid[:, 1:])
    return scores


def _seq2seq_scores(model, batch: dict[str, torch.Tensor], targets: list[list[list[int]]], pad_id: int) -> torch.Tensor:
    """[rows, words]: the encoder once, the decoder once per word (teacher-forced on the word's tokens)."""
    model, encoder_inputs, mask = _first_pass(model, batch)  # prompt tuning: its virtual tokens in the encoder
    encoder_outputs = model.get_encoder()(**encoder_inputs, attention_mask=mask)
    scores = torch.zeros(batch["input_ids"].shape[0], len(targets), device=batch["input_ids"].device)
    for w, word_targets in enumerate(targets):
        labels, valid = _padded(word_targets, pad_id, batch["input_ids"].device)
        out = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels.masked_fill(valid == 0, -100))
        scores[:, w] = _gathered_log_probs(out.logits, labels, valid)
    return scores


def best_word(label_scores: dict[str, float]) -> str:
    """The most likely label word; a tie goes to the word listed first."""
    return max(label_scores, key=label_scores.__getitem__)


def rank_classify(model, task: TaskSpec, examples: list[Example], tokenizer, family: str, max_source: int,
                  max_target: int, batch_size: int, speedups: SpeedupPlan,
                  autocast: AbstractContextManager) -> list[str]:
    """The most likely label word for each example (``rank_label_words``)."""
    return [best_word(s) for s in rank_label_words(model, task, examples, tokenizer, family, max_source,
                                                    max_target, batch_size, speedups, autocast)]
