"""``train.precision`` resolved per machine: bf16 autocast only where bf16 products are native."""

import pytest
import torch

from peftbench.recipe import precision

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("cpu", "expected"), [
    ("amx-bf16", "bf16"), ("avx512-bf16", "bf16"), ("avx512", "no"), ("avx2", "no"), ("default", "bf16"),
])
def test_auto_on_cpu_takes_bf16_only_with_native_bf16_products(monkeypatch, cpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "instruction_set", lambda: cpu)
    assert precision.mixed_precision("auto", "llama") == expected


@pytest.mark.parametrize(("bf16_gpu", "model_type", "expected"), [
    (True, "t5", "bf16"), (True, "llama", "bf16"), (False, "t5", "no"), (False, "llama", "fp16"),
])
def test_auto_on_cuda_keeps_t5_out_of_fp16(monkeypatch, bf16_gpu, model_type, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    assert precision.mixed_precision("auto", model_type) == expected


@pytest.mark.parametrize(("setting", "expected"), [("bf16", "bf16"), ("fp32", "no")])
def test_an_explicit_precision_is_taken_as_given(monkeypatch, setting, expected):
    monkeypatch.setattr(precision, "instruction_set", lambda: "avx2")
    assert precision.mixed_precision(setting, "t5") == expected
