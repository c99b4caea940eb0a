"""Where the tiny T5 cell's training step goes, and which levers do not move it.

    python bench/t5_probe.py [DATA_DIR] [--repeats 5]

The cell of ``compare_trainer.py --cells t5tiny-lora-cola`` (2 + 2 layers, d_model 32, 4 heads, byte
tokens, LoRA, bf16 autocast, the attention kernel peftbench trains with) on 64 length-sorted CoLA training examples, one optimiser step's worth.
Medians of interleaved repeats (``levers.interleaved``). It prints:
- the step as four passes of 16 rows or one of 64 (the fusion peftbench applies to SmolLM2);
- the step on one or two torch threads;
- one attention-probability dropout mask (64 × 4 × L × L) drawn with ``bernoulli_`` (what
  ``F.dropout`` does on CPU), with ``rand_like``, or applied by ``speedups.bits_dropout.bits_dropout``;
- scaled-dot-product attention forward + backward on those shapes, with T5's dropout of 0.1 and without;
- the share of the step's CPU time in each of its five most expensive operators (torch.profiler), with
  torch's dropout (the step measures the model's own code, as the Trainer side runs it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import probe_parser
from kernel_cases import tiny_t5_rows
from lever_cases import accumulate, hf_loss
from levers import interleaved
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import profile

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.recipe.batching import collate
from peftbench.speedups.bits_dropout import bits_dropout


def setup(data_dir: str):
    model = apply_method(load_model("t5-tiny-random").model, "seq2seq", "lora").model
    rows, pad = tiny_t5_rows(data_dir)
    return model, [collate(rows[i: i + 16], "seq2seq", pad) for i in range(0, 64, 16)], collate(rows, "seq2seq", pad)


def on_threads(n: int, function):
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            function()
        finally:
            torch.set_num_threads(before)
    return run


def attention(q: torch.Tensor, bias: torch.Tensor, dropout: float):
    def run():
        with sdpa_kernel([SDPBackend.MATH]):
            F.scaled_dot_product_attention(q, q, q, attn_mask=bias, dropout_p=dropout, scale=1.0).sum().backward()
    return run


def report(what: str, times: dict[str, float]) -> None:
    (a, ta), *others = times.items()
    print(f"{what}: {a} {ta:.4f} s, " + ", ".join(f"{b} {tb:.4f} s ({ta / tb:.2f}×)" for b, tb in others), flush=True)


def main(data_dir: str, repeats: int) -> None:
    model, quarters, whole = setup(data_dir)
    heads, width = model.config.num_heads, whole["input_ids"].shape[1]
    print(f"step: 64 rows, source width {width}, target width {whole['labels'].shape[1]}, {heads} heads")

    def optimiser_step(batches):
        accumulate(model, batches, hf_loss)

    report("passes", interleaved({"4 × 16": lambda: optimiser_step(quarters), "1 × 64": lambda: optimiser_step([whole])},
                                 repeats))
    report("threads", interleaved({"1": on_threads(1, lambda: optimiser_step(quarters)),
                                   "2": on_threads(2, lambda: optimiser_step(quarters))}, repeats))
    probabilities = torch.empty(64, heads, width, width)
    report(f"dropout mask of {probabilities.numel():,} elements", interleaved(
        {"bernoulli_": lambda: probabilities.bernoulli_(0.9), "rand_like": lambda: torch.rand_like(probabilities),
         "speedups.bits_dropout": lambda: bits_dropout(probabilities, 0.1)},
        repeats))
    q = torch.randn(64, heads, width, model.config.d_kv, requires_grad=True)
    bias = torch.randn(64, heads, width, width)
    report("attention fwd+bwd", interleaved({"dropout 0.1": attention(q, bias, 0.1),
                                             "dropout 0": attention(q, bias, 0.0)}, repeats))
    with profile() as prof:
        for _ in range(repeats):
            optimiser_step(quarters)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("step CPU time by operator: " + ", ".join(
        f"{e.key} {100 * e.self_cpu_time_total / total:.0f} %" for e in events[:5]))


if __name__ == "__main__":
    parser = probe_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    main(args.data_dir, args.repeats)
