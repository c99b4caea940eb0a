"""Label ranking of a prompt-tuned causal model: the prompt once with its virtual tokens and each label word
after its cache (``label_ranking.shared_prompt_scores``) against one full pass per label word
(``target_log_likelihoods``, the path prompt learning takes elsewhere).

    python bench/rank_paths.py [--data-dir ../shared/data] [--task ag_news] [--examples 64] [--model smollm2-135m-q4]

Both paths score the same test examples with the same (freshly initialised) virtual tokens, fp32, the
plain path (no speed-up levers), eval batches of 32; prints each path's seconds, the largest difference of a
label word's summed log-likelihood and how many predictions agree.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.config import SpeedupsConfig
from peftbench.recipe import label_ranking
from peftbench.speedups import for_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--task", default="ag_news")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m-q4")
    args = parser.parse_args()
    loaded = load_model(args.model)
    torch.manual_seed(0)
    model = apply_method(loaded.model, "causal", "prompt").model.eval()
    task = get_task(args.task)
    examples = load_task_data(task, args.data_dir, "low", 0, 200, args.examples).test
    plan = for_model(model, torch.device("cpu"), SpeedupsConfig.from_setting("none"))

    def rank() -> tuple[list[dict[str, float]], float]:
        started = time.perf_counter()
        scores = label_ranking.rank_label_words(model, task, examples, loaded.tokenizer, "causal", 512, 128, 32,
                                                plan, nullcontext())
        return scores, time.perf_counter() - started

    shared, shared_s = rank()
    label_ranking.prompt_tuned = lambda _: False  # the general path: one full pass per label word
    general, general_s = rank()
    diff = max(abs(a[w] - b[w]) for a, b in zip(shared, general, strict=True) for w in a)
    agree = sum(label_ranking.best_word(a) == label_ranking.best_word(b) for a, b in zip(shared, general, strict=True))
    print(f"{args.model}, prompt tuning, {args.task}, {len(examples)} test examples: shared {shared_s:.1f} s, "
          f"general {general_s:.1f} s ({general_s / shared_s:.1f}x); largest difference {diff:.1e} nats; "
          f"the same prediction on {agree} of {len(examples)}")


if __name__ == "__main__":
    main()
