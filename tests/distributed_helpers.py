"""Child processes of the data-parallel tests: ``peftbench run`` with test-only switches from the environment.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_helpers.py run ...``

- ``DP_TEST_NO_DROPOUT=1``: models without dropout. The tiny T5 has dropout 0.1 (T5's default), whose masks
  a single process draws from one running stream and several processes per batch, so only without
  dropout do one process and several compute the same thing.
- ``DP_TEST_FAIL=kind:rank:when,...``: in Llama runs of that kind (``peft`` or ``full``), process ``rank``
  raises at the second optimiser step, ``before`` its backward passes or ``after`` the step's all-reduce.
- ``DP_TEST_STOP_RANK=r``: process r alone sees a stop request after the third optimiser step of a T5 run
  (as when a signal reaches one process only).
"""

from __future__ import annotations

import os
import sys

import torch


def without_dropout(load_model):
    def load(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        for module in loaded.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(getattr(module, "dropout", None), float):  # attention's functional dropout
                module.dropout = 0.0
        return loaded
    return load


def install_faults(rank: int) -> None:
    import peftbench.recipe.steps
    import peftbench.running.sweep

    failures = dict(((kind, int(where)), when) for kind, where, when in
                    (entry.split(":") for entry in os.environ.get("DP_TEST_FAIL", "").split(",") if entry))
    stop_rank = os.environ.get("DP_TEST_STOP_RANK")
    stop_seen = [False]
    original = peftbench.recipe.steps.optimizer_step

    def optimizer_step(model, optimizer, scheduler, accelerator, items, group, cfg, family, pad_id, state, speedups):
        unwrapped = accelerator.unwrap_model(model)
        kind = "peft" if hasattr(unwrapped, "peft_config") else "full"
        fail = failures.get((kind, rank)) if unwrapped.config.model_type == "llama" and state.step == 1 else None
        if fail == "before":
            raise RuntimeError(f"injected failure in process {rank} before the step")
        losses = original(model, optimizer, scheduler, accelerator, items, group, cfg, family, pad_id, state,
                          speedups)
        if fail == "after":
            raise RuntimeError(f"injected failure in process {rank} after the step")
        if stop_rank == str(rank) and unwrapped.config.model_type == "t5" and state.step == 2:
            stop_seen[0] = True
        return losses

    peftbench.recipe.steps.optimizer_step = optimizer_step
    flag_call = peftbench.running.sweep.StopFlag.__call__
    peftbench.running.sweep.StopFlag.__call__ = lambda self: flag_call(self) or stop_seen[0]


def main() -> int:
    import peftbench.recipe.train
    from peftbench.cli import main as cli_main

    if os.environ.get("DP_TEST_NO_DROPOUT") == "1":
        peftbench.recipe.train.load_model = without_dropout(peftbench.recipe.train.load_model)
    install_faults(int(os.environ.get("RANK", "0")))
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
