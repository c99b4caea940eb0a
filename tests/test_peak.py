"""The measured matrix-product peak (recipe/peak.py): cached per machine and shape set, and the MFU computed
from it. The rates are injected (a fake ``measure``), so nothing here is timed."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from peftbench.recipe import peak
from peftbench.recipe.peak import GemmShape

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
MACHINE = {"device": "cpu", "processor": "Fake CPU", "flags": ["amx_bf16"], "threads": 2, "torch": "x"}
SHAPES = [GemmShape(4, 2, 3, count=2), GemmShape(4, 4, 3, count=1)]  # 48 and 96 FLOPs: 96 FLOPs of each per token
TINY = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=4)
QUIET = lambda: [0.0, 0.0, 0.0]  # noqa: E731 - the load average of an idle machine
TINY_LINEARS = 8 * 8 + 8 * 4 + 8 * 4 + 4 * 2 * 8 + 8 * 16 * 2 + 16 * 8  # q, k, v, o, gate + up, down: in × out


class FakeRates:
    """A ``measure`` that returns fixed GFLOP/s per (shape inner size, dtype) and counts its calls."""

    def __init__(self, rates: dict[tuple[int, str], float]):
        self.rates, self.calls = rates, 0

    def __call__(self, shape: GemmShape, dtype: str, device: torch.device) -> float:
        self.calls += 1
        return self.rates[shape.inner, dtype]


def test_the_cache_is_keyed_by_machine_and_shapes(tmp_path):
    fake = FakeRates({(2, "bf16"): 64.0, (4, "bf16"): 192.0, (2, "fp32"): 16.0, (4, "fp32"): 16.0})
    first, cached = peak.measured_peak(SHAPES, CPU, root=tmp_path, machine=MACHINE, measure=fake, load=QUIET)
    assert not cached and fake.calls == 4  # 2 shapes × 2 dtypes
    again, cached = peak.measured_peak(SHAPES, CPU, root=tmp_path, machine=MACHINE, measure=fake, load=QUIET)
    assert cached and fake.calls == 4 and again.gflops == first.gflops == {"bf16": [64.0, 192.0], "fp32": [16.0, 16.0]}

    other_machine = {**MACHINE, "flags": ["avx512_bf16"]}
    _, cached = peak.measured_peak(SHAPES, CPU, root=tmp_path, machine=other_machine, measure=fake, load=QUIET)
    assert not cached and fake.calls == 8
    other_threads = {**MACHINE, "threads": 1}
    _, cached = peak.measured_peak(SHAPES, CPU, root=tmp_path, machine=other_threads, measure=fake, load=QUIET)
    assert not cached and fake.calls == 12
    more_rows = [GemmShape(8, s.inner, s.outer, s.count) for s in SHAPES]
    _, cached = peak.measured_peak(more_rows, CPU, root=tmp_path, machine=MACHINE, measure=fake, load=QUIET)
    assert not cached and fake.calls == 16
    _, cached = peak.measured_peak(SHAPES[:1], CPU, root=tmp_path, machine=MACHINE, measure=fake, load=QUIET)
    assert not cached and fake.calls == 18
    _, cached = peak.measured_peak(SHAPES, CPU, root=tmp_path, machine=MACHINE, measure=fake, remeasure=True, load=QUIET)
    assert not cached and fake.calls == 22
    assert len(list(tmp_path.rglob("*.json"))) == 5 and not list(tmp_path.rglob("*.tmp"))


def test_a_measurement_on_an_oversubscribed_cpu_is_not_cached(tmp_path):
    fake = FakeRates({(2, "bf16"): 64.0, (4, "bf16"): 192.0})
    busy = lambda: [os.cpu_count() + 1.0, 1.0, 1.0]  # noqa: E731 - more runnable threads than cores
    table, cached = peak.measured_peak(SHAPES, CPU, ("bf16",), root=tmp_path, machine=MACHINE, measure=fake, load=busy)
    assert not cached and table.load_average == busy() and not list(tmp_path.rglob("*.json"))
    _, cached = peak.measured_peak(SHAPES, CPU, ("bf16",), root=tmp_path, machine=MACHINE, measure=fake, load=QUIET)
    assert not cached and fake.calls == 4 and len(list(tmp_path.rglob("*.json"))) == 1
    _, cached = peak.measured_peak(SHAPES, CPU, ("bf16",), root=tmp_path, machine=MACHINE, measure=fake, load=busy)
    assert cached and fake.calls == 4  # a table measured on a quiet machine serves a busy one


def test_the_rate_at_the_model_shapes_weighs_each_shape_by_its_flops(tmp_path):
    fake = FakeRates({(2, "bf16"): 64.0, (4, "bf16"): 192.0, (2, "fp32"): 16.0, (4, "fp32"): 16.0})
    table, _ = peak.measured_peak(SHAPES + [GemmShape(64, 64, 64, count=0)], CPU, dtypes=("bf16",),
                                  root=tmp_path, machine=MACHINE, measure=FakeRates({**fake.rates, (64, "bf16"): 1e6}), load=QUIET)
    # 96 FLOPs at 64 GFLOP/s and 96 at 192: 192 FLOPs in 1.5 + 0.5 units; the count-0 reference shape is no part
    assert table.model_rate("bf16") == 96.0
    record = table.record()
    assert record["gflops"] == {"bf16": 96.0} and record["rows"] == 4
    assert record["shapes"][1] == {"rows": 4, "in": 4, "out": 3, "count": 1, "bf16": 192.0}


def test_gemm_shapes_are_the_body_linears_of_the_config():
    shapes = peak.gemm_shapes(TINY, "causal", rows=128)
    assert {(s.inner, s.outer): s.count for s in shapes} == {(8, 8): 2, (8, 4): 2, (8, 16): 2, (16, 8): 1}
    assert all(s.rows == 128 for s in shapes)
    assert (8, 32) in {(s.inner, s.outer) for s in peak.gemm_shapes(TINY, "causal", 128, head=True)}
    assert [peak.pass_rows(t, b) for t, b in [(60_000, 64), (10, 64), (10**9, 1), (0, 0)]] == [1024, 16, 4096, 1024]


def test_train_flops_per_token_follow_bench_flops():
    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY)
    assert peak.train_flops_per_token(model) == 6 * TINY_LINEARS  # full tuning: forward and both gradients
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    assert peak.train_flops_per_token(model) == 4 * TINY_LINEARS + 2 * 64  # a frozen base, one weight trains


def test_mfu_is_computed_from_the_cached_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    tokens, batches, seconds = 64 * 30, 64, 2.0  # 30 tokens per batch: measured at 32 rows
    shapes = peak.gemm_shapes(TINY, "causal", peak.pass_rows(tokens, batches))
    fake = FakeRates({(inner, dtype): rate for inner in (8, 16) for dtype, rate in (("bf16", 128.0), ("fp32", 32.0))})
    peak.measured_peak(shapes, CPU, root=tmp_path / "peak", measure=fake, load=QUIET)  # this machine's key, the injected rates

    torch.manual_seed(0)
    model = LlamaForCausalLM(TINY)
    record, mfu = peak.run_peak(True, model, TINY, "causal", CPU, "bf16", tokens, batches, seconds)
    assert record["gflops"] == {"bf16": 128.0, "fp32": 32.0} and record["rows"] == 32
    assert mfu == tokens / seconds * 6 * TINY_LINEARS / 128e9
    _, fp32_mfu = peak.run_peak(True, model, TINY, "causal", CPU, "no", tokens, batches, seconds)
    assert fp32_mfu == tokens / seconds * 6 * TINY_LINEARS / 32e9
    assert fake.calls == 8  # only the seeding measured
    assert peak.run_peak(False, model, TINY, "causal", CPU, "bf16", tokens, batches, seconds) == (None, None)
    assert peak.mfu(None, 1.0, 1.0) is None and peak.mfu(1.0, None, 1.0) is None


@pytest.mark.parametrize(("flags", "capability", "expected"), [
    (["amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2"], "AVX512", "amx-bf16"),
    (["avx512_bf16", "avx512f", "avx2"], "AVX512", "avx512-bf16"),
    (["avx512f", "avx2"], "AVX512", "avx512"),
    (["amx_bf16", "avx512_bf16", "avx512f", "avx2"], "AVX2", "avx2"),  # torch capped at AVX2 (ATEN_CPU_CAPABILITY)
    ([], "DEFAULT", "default"),
])
def test_instruction_set_from_the_cpu_flags(monkeypatch, flags, capability, expected):
    from peftbench.speedups import cpu

    monkeypatch.setattr(cpu, "matrix_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert peak.instruction_set(CPU) == expected


def test_eager_attention_limits_follow_the_instruction_set():
    from peftbench.speedups.eager_attention import eager_attention_pays

    # without AMX, the limits measured on AVX-512 BF16: forward-only passes up to 600 tokens, training up to 320
    assert [eager_attention_pays(w, False, "avx512-bf16") for w in (63, 64, 600, 601)] == [True, True, True, False]
    # with AMX the same, until the packed AMX flash forward is measured on an idle machine
    assert [eager_attention_pays(w, False, "amx-bf16") for w in (63, 64, 600, 601)] == [True, True, True, False]
    for cpu in ("amx-bf16", "avx512-bf16", "avx2"):  # training passes: the same limit on every CPU
        assert [eager_attention_pays(w, True, cpu) for w in (320, 321)] == [True, False]


def test_a_config_that_does_not_build_leaves_the_run_without_a_peak():
    from transformers import T5Config

    model = LlamaForCausalLM(TINY)
    with pytest.warns(UserWarning, match="no matrix-product peak"):  # no causal-LM class for T5's config
        assert peak.run_peak(True, model, T5Config(), "causal", CPU, "bf16", 100, 1, 1.0) == (None, None)
