"""Every private or undocumented library API peftbench relies on, checked against the installed versions.

pyproject.toml bounds torch, transformers, peft and accelerate above at the versions these tests pass on.
When a release moves one of these APIs, its test here fails with a message naming the API and what in
peftbench uses it, before the lever or fix behind it breaks silently. The tests exercise the libraries'
own objects, not peftbench's modules, so they stay valid wherever that code lives.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = pytest.mark.unit


def moved(api: str, used_by: str, detail: str = "") -> str:
    return (f"private API moved: {api} (used by {used_by}){': ' + detail if detail else ''}. Adapt that code, "
            f"then raise the upper bound in pyproject.toml")


# --- transformers ----------------------------------------------------------------------------------------

def test_config_attn_implementation_internal_selects_the_attention_function():
    from transformers import LlamaConfig

    config = LlamaConfig()
    api, user = "PretrainedConfig._attn_implementation_internal", "the per-pass attention choice (speedups/eager_attention.py, concatenated_rows.py)"
    assert hasattr(config, "_attn_implementation_internal"), moved(api, user, "attribute gone")
    for name in ("eager", "sdpa"):
        config._attn_implementation_internal = name
        assert config._attn_implementation == name, moved(api, user, "no longer read by _attn_implementation")


def test_attention_and_mask_registries_accept_a_new_function():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    user = "the grouped-query and concatenated-rows attention functions (speedups/eager_attention.py, concatenated_rows.py)"
    assert callable(getattr(AttentionInterface, "register", None)), moved("AttentionInterface.register", user)
    assert callable(getattr(AttentionMaskInterface, "register", None)), moved("AttentionMaskInterface.register", user)
    assert AttentionMaskInterface()["eager"] is eager_mask, \
        moved("transformers.masking_utils.eager_mask", user, "no longer the mask eager attention is given")


def test_eager_attention_is_one_function_across_the_grouped_query_families():
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.qwen2 import modeling_qwen2
    from transformers.models.qwen3 import modeling_qwen3

    api = "modeling_<family>.eager_attention_forward"
    user = "grouped_query_eager, which recomputes it for llama/mistral/qwen2/qwen3 (speedups/eager_attention.py)"
    reference = inspect.getsource(modeling_llama.eager_attention_forward)
    params = list(inspect.signature(modeling_llama.eager_attention_forward).parameters)
    assert params[:7] == ["module", "query", "key", "value", "attention_mask", "scaling", "dropout"], \
        moved(api, user, f"signature is now {params}")
    for module in (modeling_mistral, modeling_qwen2, modeling_qwen3):
        assert inspect.getsource(module.eager_attention_forward) == reference, \
            moved(api, user, f"{module.__name__}'s differs from Llama's")


def test_dynamic_cache_takes_a_config_and_repeats_its_rows():
    from transformers import DynamicCache, LlamaConfig

    user = "the shared prompt prefix and concatenated rows (speedups/shared_prompt_prefix.py, concatenated_rows.py)"
    assert "config" in inspect.signature(DynamicCache).parameters, moved("DynamicCache(config=...)", user)
    cache = DynamicCache(config=LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           hidden_size=8))
    keys = torch.arange(4.0).reshape(1, 1, 2, 2)
    cache.update(keys, keys + 1, 0)
    assert callable(getattr(cache, "batch_repeat_interleave", None)), moved("DynamicCache.batch_repeat_interleave", user)
    cache.batch_repeat_interleave(3)
    assert cache.get_seq_length() == 2, moved("DynamicCache.get_seq_length", user)
    assert cache.layers[0].keys.shape == (3, 1, 2, 2), moved("DynamicCache.batch_repeat_interleave", user,
                                                            "rows are not repeated")


def test_auto_mappings_name_the_known_architectures_and_the_masked_lm_ones():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    assert {"llama", "t5", "bert"} <= set(CONFIG_MAPPING.keys()), \
        moved("transformers.models.auto.configuration_auto.CONFIG_MAPPING",
              "refusing an unknown architecture before training (recipe/preflight.py)")
    user = "telling an encoder-only model from a causal one (catalog/models.py family_of)"
    assert "bert" in MODEL_FOR_MASKED_LM_MAPPING_NAMES, \
        moved("transformers.models.auto.modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES", user, "no bert")
    for causal in ("llama", "gpt2", "qwen2"):
        assert causal not in MODEL_FOR_MASKED_LM_MAPPING_NAMES, \
            moved("transformers.models.auto.modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES", user,
                  f"{causal} is now a masked-LM architecture")


def test_attention_functions_look_dropout_up_at_call_time(monkeypatch):
    from transformers.models.llama import modeling_llama

    calls = []

    def recording(input, p=0.5, training=True, inplace=False):
        calls.append(p)
        return input

    monkeypatch.setattr(F, "dropout", recording)
    nn.Dropout(0.25).train()(torch.ones(2))
    module = nn.Module()
    module.num_key_value_groups, module.training = 1, True
    q = torch.ones(1, 1, 2, 4)
    modeling_llama.eager_attention_forward(module, q, q, q, None, scaling=0.5, dropout=0.125)
    user = "the CPU dropout masks swapped in as torch.nn.functional.dropout (speedups/bits_dropout.py)"
    assert calls == [0.25, 0.125], moved("torch.nn.functional.dropout looked up at call time by nn.Dropout and "
                                         "transformers' eager attention", user, f"calls seen: {calls}")


# --- torch -----------------------------------------------------------------------------------------------

def test_mkldnn_prepacked_linear_multiplies_like_f_linear():
    user = "prepacked frozen bf16 linears (speedups/onednn_weights.py)"
    for name in ("_linear_pointwise", "_reorder_linear_weight", "_is_mkldnn_bf16_supported"):
        assert hasattr(torch.ops.mkldnn, name), moved(f"torch.ops.mkldnn.{name}", user)
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("this CPU has no oneDNN bf16: onednn_weights.py leaves linears alone here")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, 256, generator=generator).bfloat16()
    weight = torch.randn(192, 256, generator=generator).bfloat16()
    bias = torch.randn(192, generator=generator).bfloat16()
    blocked = torch.ops.mkldnn._reorder_linear_weight(weight)
    got = torch.ops.mkldnn._linear_pointwise(x, blocked, bias, "none", [], "")
    assert torch.equal(got, F.linear(x, weight, bias)), moved("torch.ops.mkldnn._linear_pointwise", user,
                                                              "products differ from F.linear")


def test_tensor_version_counts_in_place_writes():
    weight = torch.zeros(2)
    before = weight._version
    weight.add_(1)
    assert weight._version == before + 1, moved("Tensor._version", "re-packing a frozen weight written in place "
                                                "(speedups/onednn_weights.py)")


def test_dispatch_modes_see_every_op_and_storages_can_be_watched_until_freed():
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    api = "torch.utils._python_dispatch.TorchDispatchMode, torch.utils._pytree.tree_leaves, weakref.finalize on storages"
    user = "the dry run's transients (recipe/memory_estimate.py LiveBytes)"
    freed, seen = [], []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    seen.append(func)
                    weakref.finalize(tensor.untyped_storage(), freed.append, tensor.nbytes)
            return out

    weight = torch.ones(4, 4, requires_grad=True)
    with Watch():
        out = (torch.ones(2, 4) @ weight).sum()
        out.backward()  # backward's ops run under the mode too
        count = len(freed)
        del out
    assert seen and any("mm" in str(func) for func in seen[2:]), moved(api, user, "backward ops not seen")
    assert len(freed) > count, moved(api, user, "a freed storage's finalizer did not run")


# --- accelerate ------------------------------------------------------------------------------------------

def test_accelerator_state_reset_lets_the_next_run_pick_its_precision():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    api, user = "AcceleratorState._reset_state(reset_partial_state=True)", "each run's own precision (recipe/train.py)"
    assert "reset_partial_state" in inspect.signature(AcceleratorState._reset_state).parameters, moved(api, user)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert Accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert Accelerator(mixed_precision="no").mixed_precision == "no", moved(api, user, "the precision stayed")
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_maps_each_tracker_name_to_its_class():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

    api, user = "accelerate.tracking.LOGGER_TYPE_TO_CLASS", "trackers=[...] (running/tracking.py)"
    assert isinstance(LOGGER_TYPE_TO_CLASS, dict), moved(api, user, "not a mapping")
    for name in ("tensorboard", "mlflow", "wandb"):
        assert name in LOGGER_TYPE_TO_CLASS, moved(api, user, f"no {name}")
        assert issubclass(LOGGER_TYPE_TO_CLASS[name], GeneralTracker), moved(api, user, f"{name} is no tracker")


# --- peft ------------------------------------------------------------------------------------------------

def test_peft_prompt_learning_generation_internals():
    from peft import PeftModelForCausalLM, PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    user = "decoding with prompt learning on causal models (catalog/peft_compat.py)"
    source = inspect.getsource(PeftModelForCausalLM.generate)
    for line in ("self.base_model.prepare_inputs_for_generation = self.prepare_inputs_for_generation",
                 "self.base_model_prepare_inputs_for_generation"):
        assert line in source, moved("PeftModelForCausalLM.generate", user, f"no longer contains `{line}`")
    prepare = inspect.getsource(PeftModelForCausalLM.prepare_inputs_for_generation)
    assert "past_key_values" in prepare, moved("PeftModelForCausalLM.prepare_inputs_for_generation", user,
                                               "no longer reads past_key_values")
    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert model.active_peft_config.is_prompt_learning, moved("PeftConfig.is_prompt_learning", user)
    assert callable(getattr(model, "base_model_prepare_inputs_for_generation", None)), \
        moved("PeftModelForCausalLM.base_model_prepare_inputs_for_generation", user)


def test_peft_tuner_layers_declare_their_trainable_parameters():
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper
    from transformers import LlamaConfig, LlamaForCausalLM

    user = "the declared trainable parameters of a PEFT method (catalog/methods/__init__.py)"
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    lora = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    layers = [m for m in lora.modules() if isinstance(m, BaseTunerLayer)]
    assert layers, moved("peft.tuners.tuners_utils.BaseTunerLayer", user, "LoRA layers are not instances")
    assert {"lora_A", "lora_B"} <= set(layers[0].adapter_layer_names), moved("BaseTunerLayer.adapter_layer_names", user)
    head = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"],
                                                               modules_to_save=["lm_head"]))
    wrappers = [m for m in head.modules() if isinstance(m, ModulesToSaveWrapper)]
    assert wrappers, moved("peft.utils.other.ModulesToSaveWrapper", user, "modules_to_save are not wrapped in it")
    trained = [p for attr in wrappers[0].adapter_layer_names for p in getattr(wrappers[0], attr).parameters()]
    assert trained and all(p.requires_grad for p in trained), \
        moved("ModulesToSaveWrapper.adapter_layer_names", user, "names no trained copy")
    prompt = get_peft_model(LlamaForCausalLM(config), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    encoders = getattr(prompt, "prompt_encoder", None)
    assert isinstance(encoders, nn.ModuleDict) and "default" in encoders, moved("PeftModel.prompt_encoder", user)


def test_models_name_the_blocks_a_device_map_must_not_split():
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    user = "device_map=auto placement (catalog/models.py)"
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_ff=16, d_kv=4, num_heads=2, num_layers=1))
    assert "LlamaDecoderLayer" in llama._no_split_modules, moved("PreTrainedModel._no_split_modules", user)
    assert "T5Block" in t5._no_split_modules, moved("PreTrainedModel._no_split_modules", user)


def test_every_file_named_here_exists():
    """The ``used_by`` of each test names peftbench files; a file renamed or removed must be renamed here too."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "src" / "peftbench"
    sources = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    named = set(re.findall(r"\b((?:[a-z_]+/)*[a-z_]+\.py)\b", Path(__file__).read_text())) - {"tests/test_private_apis.py"}
    missing = sorted(name for name in named if not any(s == name or s.endswith("/" + name) for s in sources))
    assert named and not missing, f"{Path(__file__).name} names files that do not exist: {missing}"
