"""torch.compile on SmolLM2 LoRA training steps, against eager: compile time and step time.

    python bench/compile_probe.py [DATA_DIR]                          # the whole model, one step
    python bench/compile_probe.py [DATA_DIR] --regional [--parts P]   # parts of it, three batch shapes

A probe for the MFU gap (bench/RESULTS.md), not a lever peftbench uses. Whole model: 64 CoLA training
examples × 31 tokens in one pass, bf16 autocast, without prefix sharing, so the step matches the profiled
one. Regional: parts of the model compiled on their own with dynamic shapes, on the training path as
peftbench runs it (shared prefix), for three CoLA batches of different shapes. ``--parts`` says which:
``layers`` (each decoder layer, the default), ``mlp-norm`` (each layer's MLP and RMSNorms, which do not
touch the key/value cache) or ``body`` (the decoder stack under the LM head, as one module).
"""

from __future__ import annotations

import time

import torch
from common import probe_parser
from lever_cases import Setup, peftbench_attention, train_step, training_step


def best_of(step, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def main(data_dir: str) -> None:
    setup = Setup(data_dir)
    batch = setup.batch("cola", n=64, skip=18)  # the same pass as levers.py's shared_prefix case
    model = setup.lora

    def step(module):  # the unshared loss (train_step's default), as profiled
        train_step(module, batch, attention=peftbench_attention(module, batch))

    step(model)  # warm-up: kernel choices, page faults
    eager = best_of(lambda: step(model))
    compiled = torch.compile(model)
    started = time.perf_counter()
    step(compiled)
    first = time.perf_counter() - started
    fast = best_of(lambda: step(compiled))
    print(f"eager step {eager:.3f} s; compile + first step {first:.1f} s; compiled step {fast:.3f} s "
          f"({eager / fast:.2f}×)")


def compile_parts(model, parts: str) -> None:
    body = model.get_base_model().base_model  # PEFT model → LlamaForCausalLM → LlamaModel
    if parts == "body":
        body.compile(dynamic=True)
        return
    # Each layer's graph is guarded on its layer_idx (the cache update reads it), so each compiles its own:
    # allow one per layer (dynamo's default of 8 leaves 22 of the 30 layers eager).
    torch._dynamo.config.recompile_limit = 64
    for layer in body.layers:
        if parts == "layers":
            layer.compile(dynamic=True)
        else:
            for module in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                module.compile(dynamic=True)


def regional(data_dir: str, parts: str) -> None:
    setup = Setup(data_dir)
    model = setup.lora
    batches = [setup.batch("cola", n=64, skip=18), setup.batch("cola", n=64, skip=0), setup.batch("cola", n=48, skip=40)]

    def step(batch):
        training_step(model, batch)

    for batch in batches:  # warm-up
        step(batch)
    eager = [best_of(lambda b=batch: step(b)) for batch in batches]
    compile_parts(model, parts)
    for batch in batches:
        started = time.perf_counter()
        step(batch)
        print(f"{tuple(batch['input_ids'].shape)}: compile + first step {time.perf_counter() - started:.1f} s", flush=True)
    compiled = [best_of(lambda b=batch: step(b)) for batch in batches]
    for batch, before, after in zip(batches, eager, compiled, strict=True):
        print(f"{tuple(batch['input_ids'].shape)}: eager {before:.3f} s, compiled {after:.3f} s ({before / after:.2f}×)")


if __name__ == "__main__":
    parser = probe_parser(__doc__)
    parser.add_argument("--regional", action="store_true", help="compile parts of the model, three batch shapes")
    parser.add_argument("--parts", choices=["layers", "mlp-norm", "body"], default="layers")
    args = parser.parse_args()
    if args.regional:
        regional(args.data_dir, args.parts)
    else:
        main(args.data_dir)
