"""The sections a run's config holds: training (``TrainConfig``), the serve stage (``ServeConfig``) and the
speed-up levers (``SpeedupsConfig``). Their defaults live here and only here (``peftbench.config`` holds the
grid, the run and the loading of YAML and ``key=value`` overrides)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from peftbench.errors import UserError, did_you_mean


@dataclass
class TrainConfig:
    """The paper's training protocol (§A.2, §A.3). ``None`` means "the method's or the scale's default"."""

    batch_size: int = 16
    """Examples per micro-batch: each batch's mean loss enters the step. On CPU, small consecutive batches of a
    step run as one forward/backward pass (same gradient, less fixed cost per pass; batching.plan_passes)."""
    grad_accum: int = 4
    """Micro-batches per optimiser step: the paper's effective batch is 16 × 4 = 64."""
    max_epochs: int | None = None
    """Upper bound on epochs; None takes the scale's (low 10, medium 5, high 1)."""
    patience: int = 1
    """Epochs without a lower validation loss before stopping (the paper stops at the first rise)."""
    min_delta: float = 0.0
    """A validation loss must fall by more than this to count as an improvement."""
    warmup_fraction: float = 0.1
    """Share of the planned optimiser steps spent rising from the initial to the peak learning rate."""
    lr_initial: float | None = None
    """Learning rate at step 0; None takes the method family's (full 3e-5, adapters 3e-4, prompt 3e-3)."""
    lr_peak: float | None = None
    """Learning rate at the end of warm-up; None takes the method family's (3e-4, 3e-3, 3e-1)."""
    lr_final: float | None = None
    """Learning rate at the last planned step; None takes the method family's (3e-5, 3e-4, 3e-2)."""
    lr_scale: float = 1.0
    """Multiplies the learning-rate triple (initial, peak, final) together; the LR search's candidates set it."""
    run_test: bool = True
    """False: train and validate only, with no test (the LR search's candidates); such a result is no cell."""
    weight_decay: float = 0.0
    """AdamW weight decay (the paper does not state one; 0 keeps adapters' init meaningful)."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 turns it off."""
    precision: str = "auto"
    """"auto" (bf16 autocast where the hardware multiplies bf16 natively, else fp32; fp16 on fp16-only GPUs
    except T5: ``recipe/precision.py``), "bf16" or "fp32"."""
    max_source_tokens: int = 512
    """Prompt tokens kept (truncated from the left of long inputs' bodies, never the instruction)."""
    max_target_tokens: int = 128
    """Target tokens kept for training; generation stops at the task's own max_new_tokens."""
    eval_batch_size: int = 32
    """Examples per batch when computing validation loss and decoding."""
    val_metric_examples: int = 200
    """Validation examples decoded each epoch for the per-epoch metric (0: loss only; loss uses them all)."""
    rank_classification: bool = True
    """Classification tasks: also score every label word as the answer to each test prompt and report the
    most likely one's accuracy as ``metrics.test.rank_accuracy`` (``label_ranking.py``), beside exact match
    of the generated text (``accuracy``, the headline score). One forward pass per label word over the test
    set; generation tasks ignore it."""
    eval_examples: int = 2500
    """Cap on validation + test examples together (the paper's 2,500), split evenly, unless ``test_examples``
    sets the test split's size; validation then takes half of this."""
    test_examples: int | None = None
    """Test examples per seed (None: half of ``eval_examples``), the same examples for every method of a cell.
    Sized to the question: the test decides comparisons, the validation split only early stopping, which is
    computed every epoch and so costs more per example."""
    group_by_length: bool = True
    """Batch examples of similar length together to cut padding (order is still seeded)."""
    save_adapter: bool = True
    """Save the best adapter (or model) with ``save_pretrained`` in the run directory."""
    checkpoint_every_epoch: bool = True
    """Write resumable checkpoints at epoch ends (never after the last; deleted when the run finishes)."""
    checkpoint_interval_s: float = 60.0
    """Run seconds (training and validation) that must pass after the last checkpoint, or the run's start,
    before an epoch end writes one. Short epochs then skip checkpoints that would cost more than the work
    they keep (full tuning writes 12 bytes per parameter); a crash loses at most this plus one epoch.
    0: at every epoch end."""
    num_threads: int | None = None
    """torch intra-op threads on CPU; None leaves torch's default."""
    measure_peak: bool | None = None
    """Record the machine's matrix-product peak at the model's shapes (``hardware.peak``) and the run's share of
    it (``throughput.mfu``), measured after training in a few seconds and cached per machine and model
    (recipe/peak.py). None: on in single-process runs, off when several processes train together."""
    max_oom_retries: int = 4
    """CUDA out-of-memory errors a run survives: each halves the micro-batch and doubles the accumulation
    (the effective batch, batch_size × grad_accum, is unchanged); 0 fails at the first. Never used on CPU."""
    max_tokens_per_pass: int | None = 2048
    """Padded tokens one forward/backward pass may hold (activation memory), validation passes too: a batch
    over it runs as micro-batches within it, with the same gradient (each piece's mean loss weighted by its
    share of the batch's target tokens); None: no budget. A row that alone exceeds it runs alone. 2048 brings
    SmolLM2-135M's full tuning on SAMSum low from a 17.9 GB peak to 8.3 GB on CPU, with no more training time
    (bench/RESULTS.md, "Memory"); a GPU with room for wider passes may run faster with null."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (less memory, ~1/3 more
    compute; the paper did not use it)."""

    def validate(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "eval_batch_size": self.eval_batch_size, "eval_examples": self.eval_examples,
                    "max_source_tokens": self.max_source_tokens, "max_target_tokens": self.max_target_tokens}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"train.{name} must be at least 1, got {value}")
        if not self.lr_scale > 0:
            raise UserError(f"train.lr_scale must be above 0, got {self.lr_scale}")
        if self.test_examples is not None and self.test_examples < 1:
            raise UserError(f"train.test_examples must be at least 1 or null, got {self.test_examples}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise UserError(f"train.max_epochs must be at least 1, got {self.max_epochs}")
        for name in ("lr_initial", "lr_peak", "lr_final"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"train.{name} must be at least 0 or null, got {getattr(self, name)}")
        if self.checkpoint_interval_s < 0:
            raise UserError(f"train.checkpoint_interval_s must be at least 0, got {self.checkpoint_interval_s}")
        if self.max_oom_retries < 0:
            raise UserError(f"train.max_oom_retries must be at least 0, got {self.max_oom_retries}")
        if self.max_tokens_per_pass is not None and self.max_tokens_per_pass < 1:
            raise UserError(f"train.max_tokens_per_pass must be at least 1 or null, got {self.max_tokens_per_pass}")
        if self.patience < 1:
            raise UserError(f"train.patience must be at least 1, got {self.patience}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}"
                            f"{did_you_mean(self.precision, ['auto', 'bf16', 'fp32'])}")


@dataclass
class ServeConfig:
    """The serve stage (``serving.py``): what a run's tested weights cost to store, load and answer requests
    with. Measured after the test when ``enabled``, or later by ``peftbench serve-bench RESULTS_DIR``."""

    enabled: bool = False
    """Measure serving after the test and record it as the result's ``serving`` (needs train.save_adapter)."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    """Decoding batch sizes measured: batch 1 is one request's latency, a larger batch the throughput."""
    requests: int = 16
    """Test prompts decoded per model variant and batch size (the first ones of the test split)."""
    new_tokens: int | None = None
    """Tokens decoded per request, end of sequence ignored so every variant decodes as many; None takes the
    task's generation budget."""
    swaps: int = 20
    """Switches between two adapters of one base, timed together; the mean is recorded."""
    precision: str = "fp32"
    """Weights' dtype while serving: "fp32" (merged predictions must equal unmerged ones exactly) or "bf16"."""
    bf16_tolerance: float = 0.05
    """In bf16, the share of requests whose merged prediction may differ from the unmerged one (fp32: none)."""

    def validate(self) -> None:
        if not self.batch_sizes or any(size < 1 for size in self.batch_sizes):
            raise UserError(f"serve.batch_sizes must be one or more sizes of at least 1, got {self.batch_sizes}")
        for name in ("requests", "swaps"):
            if getattr(self, name) < 1:
                raise UserError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.new_tokens is not None and self.new_tokens < 1:
            raise UserError(f"serve.new_tokens must be at least 1 or null, got {self.new_tokens}")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"serve.precision must be fp32 or bf16, got {self.precision!r}"
                            f"{did_you_mean(self.precision, ['fp32', 'bf16'])}")
        if not 0.0 <= self.bf16_tolerance < 1.0:
            raise UserError(f"serve.bf16_tolerance must be in [0, 1), got {self.bf16_tolerance}")


@dataclass
class ForgettingConfig:
    """What tuning costs the model elsewhere (``recipe/forgetting.py``): after the test, the tuned model's mean
    cross-entropy on a fixed sample of general text minus that of the same method at initialisation
    (``metrics.forgetting``, nats per token; 0 for a run whose weights never moved). Causal and seq2seq
    models; an encoder classifier records null with the reason."""

    enabled: bool = True
    """Measure forgetting after the test (two forward passes over the sample per run)."""
    data_file: str | None = None
    """A JSONL file of general text, one paragraph a row in a ``text`` field (WikiText's tokenised spacing
    is undone). None: ``<data_dir>/wikitext2/test.jsonl`` when the run's ``data_dir`` holds it, else the
    Hub dataset ``hub_dataset``."""
    hub_dataset: str = "Salesforce/wikitext"
    """The Hub dataset read when no file is given (its ``hub_config``, test split, ``text`` field)."""
    hub_config: str = "wikitext-2-raw-v1"
    tokens: int = 4096
    """The sample's size: paragraphs are taken in a fixed order until their tokens reach this."""
    max_paragraph_tokens: int = 256
    """Tokens kept of each paragraph (its head), which bounds a forward pass's size."""

    def validate(self) -> None:
        for name in ("tokens", "max_paragraph_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"forgetting.{name} must be at least 1, got {getattr(self, name)}")


SPEEDUP_SETTINGS = ("default", "all", "none")
"""The shorthands ``speedups=default`` (the levers whose measured tilt of a method-vs-full time ratio is at
most 5 %: the fields' defaults below), ``speedups=all`` (every lever on) and ``speedups=none`` (plain
PyTorch)."""


@dataclass
class SpeedupsConfig:
    """Speed-ups that keep what a run computes (the same loss and gradients up to floating-point reordering,
    or the same distribution): one switch per lever. ``speedups=all`` / ``speedups=none`` set them all;
    ``speedups.<lever>=true`` one. Part of the run id. Each run records per lever whether it was
    ``applied``, ``not_applicable`` (with the reason) or ``off`` (``speedups/``).

    A lever is on by default only where it moves no method's time ratio to full tuning by more than 5 %
    (bench/lever_tilt.py; the table and the default set it gives: bench/RESULTS.md, "Which levers tilt the
    comparison"; tests/test_speedup_defaults.py pins the two together). Each lever's gain: bench/RESULTS.md,
    "Each lever, before and after"."""

    PREREQUISITES: ClassVar[dict[str, str]] = {"onednn_blocked_weights": "frozen_weights_bf16",
                                               "concatenated_rows": "eager_attention"}
    """A lever → the lever it works through: without that one applied it does not apply."""

    keep_freed_memory: bool = False
    """glibc's malloc keeps freed memory in the process (``mallopt``), so training steps stop page-faulting.
    Linux with glibc's malloc, process-wide (once on, a process keeps it). Pays where a step allocates many
    mid-sized tensors (T5's attention maps); the process then holds its peak heap."""
    fused_adamw: bool = False
    """AdamW's update as one fused kernel over all tensors (``fused=True``) instead of ``foreach``. Any
    device; gains most for full tuning, which updates the most tensors."""
    fused_passes: bool = False
    """An optimiser step's small batches (and validation's) run as one forward/backward pass while it stays
    under ``batching.FUSE_MAX_TOKENS`` padded tokens. CPU only: fewer, larger matrix multiplications keep
    the cores busier than four small passes."""
    frozen_weights_bf16: bool = False
    """Frozen ``nn.Linear`` weights stored in bf16 once instead of cast by autocast at every call. bf16
    precision, methods with frozen linears (not full tuning). Saves the casts, which matter most in
    decoding, where each call's matrix work is small."""
    onednn_blocked_weights: bool = False
    """Frozen bf16 linears multiplied through oneDNN's prepacked (blocked) weight layout. CPU with bf16
    oneDNN kernels, after ``frozen_weights_bf16``, when the copies fit in a quarter of the free memory
    (the prepacked copies raise the peak resident set)."""
    lm_head_on_targets: bool = False
    """A causal model's LM head runs only at the positions that predict a target token. Causal models: the
    vocabulary projection is the largest matrix, and the prompt positions never need it."""
    shared_prompt_prefix: bool = False
    """The prompt tokens every row of a causal batch shares (a task's instruction) run once, their
    keys/values repeated over the rows. Causal models without prompt learning (prompt tuning's virtual
    tokens come first), not while training with dropout. Pays in proportion to the shared share of a row."""
    eager_attention: bool = False
    """transformers' eager attention (grouped-query form for the Llama family) instead of SDPA's CPU
    kernels for passes up to 320 (training) / 600 (forward only) tokens. CPU, models on SDPA: at these
    lengths SDPA's CPU kernels (flash's backward, math's fp32 upcasts) cost more than eager's."""
    concatenated_rows: bool = False
    """A padded batch's real tokens run as one concatenated sequence (variable-length rows); attention alone
    sees the rows. CPU, Llama-family causal models without prompt learning, with ``eager_attention`` and
    ``lm_head_on_targets``; it replaces ``unpadded_feed_forward``, unpadding the projections too."""
    unpadded_feed_forward: bool = False
    """Feed-forward networks run on a padded pass's real tokens only. CPU, causal models whose role map
    names the feed-forward module, without prompt learning: padding is skipped where most of a layer's
    matrix work is."""
    compiled_layers: bool = False
    """The model's repeated blocks (decoder layers) compiled by ``torch.compile`` with dynamic shapes: Inductor
    fuses each layer's pointwise work. Any device with a C++ compiler for Inductor's CPU kernels; the first
    pass of each kind compiles (8-30 s for SmolLM2-135M on two threads). It takes the place of
    ``shared_prompt_prefix``, ``concatenated_rows`` and ``unpadded_feed_forward``, whose per-pass caches and
    hooks would compile the layers again at every pass, and of ``onednn_blocked_weights`` (Inductor lowers the
    frozen linears itself). Its gain and tilt: bench/RESULTS.md, "Where a training step goes"."""
    bits_dropout: bool = False
    """Dropout masks drawn from 16 random bits per element instead of ``bernoulli_`` (the same rate to
    2⁻¹⁶, another random stream). CPU training of models with dropout (T5; not SmolLM2): drawing 32-bit
    uniforms for every mask element is a visible part of a small model's step."""

    @classmethod
    def from_setting(cls, setting: str) -> SpeedupsConfig:
        """``default``, ``all`` or ``none``."""
        if setting not in SPEEDUP_SETTINGS:
            raise UserError(f"speedups must be default, all, none or a mapping of levers, got {setting!r}"
                            f"{did_you_mean(str(setting), list(SPEEDUP_SETTINGS))}")
        if setting == "default":
            return cls()
        return cls(**{name: setting == "all" for name in cls.levers()})

    @classmethod
    def levers(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def default_levers(cls) -> list[str]:
        """The levers on by default: those that tilt no method's time ratio to full tuning by more than 5 %."""
        return [name for name, on in dataclasses.asdict(cls()).items() if on]

    @property
    def setting(self) -> str:
        """all, none, default (a mix that is the default set) or custom."""
        values = set(dataclasses.asdict(self).values())
        if len(values) == 1:
            return "all" if values == {True} else "none"
        return "default" if self == type(self)() else "custom"
