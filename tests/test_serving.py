"""The serve stage (serving.py), serve-bench and Table 7 on the tiny models."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from sweep_helpers import tiny_overrides

from peftbench.analysis.report import build_report
from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.config import RunConfig, ServeConfig, load_sweep
from peftbench.errors import UserError
from peftbench.recipe import serving
from peftbench.running.results import iter_results
from peftbench.running.serve_bench import SERVING_FILE, serve_bench, settings_from
from peftbench.running.sweep import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

METHODS = ("full", "lora", "ia3", "prompt", "bitfit")
MERGE_STATUS = {"full": "not_applicable", "lora": "merged", "ia3": "merged", "prompt": "impossible",
                "bitfit": "merged"}
SERVE = ("serve.enabled=true", "serve.requests=4", "serve.batch_sizes=[1,2]", "serve.swaps=4",
         "serve.new_tokens=3")


@pytest.fixture(scope="module", params=["llama-tiny-random", "t5-tiny-random"])
def served(request, tmp_path_factory):
    """A one-epoch sweep of the five methods with the serve stage on: its results directory."""
    results_dir = tmp_path_factory.mktemp(f"served-{request.param}")
    overrides = tiny_overrides(results_dir, models=(request.param,), methods=METHODS, epochs=1, extra=SERVE)
    run_sweep(load_sweep(None, overrides), progress=False)
    return results_dir


def test_every_method_records_its_serving_figures(served):
    results = {r["config"]["method"]: r for r in iter_results(served)}
    assert sorted(results) == sorted(METHODS)
    for method, result in results.items():
        figures = result["serving"]
        assert result["status"] == "ok" and figures["precision"] == "fp32" and figures["requests"] == 4
        assert figures["merge"]["status"] == MERGE_STATUS[method]
        assert figures["adapter_bytes"] == result["adapter"]["bytes"] > 0
        assert figures["load_s"] > 0 and figures["swap_s"] > 0
        assert (figures["loads"], figures["swap_by"]) == (("model", "load_state_dict") if method == "full"
                                                          else ("adapter", "set_adapter"))
        variants = ["base", "unmerged"] + (["merged"] if MERGE_STATUS[method] == "merged" else [])
        records = figures["decoding"]
        assert [(d["variant"], d["batch_size"]) for d in records] == [(v, b) for v in variants for b in (1, 2)]
        for record in records:  # every request decodes exactly new_tokens tokens
            # the base model decodes beside the unmerged model, and again beside the merged one
            passes = 2 if record["variant"] == "base" and "merged" in variants else 1
            assert record["batches"] == passes * 4 // record["batch_size"]
            assert record["tokens"] == passes * 4 * 3
            assert record["latency_s"] > 0 and record["tokens_per_s"] > 0
        assert figures["virtual_tokens"] == (100 if method == "prompt" else None)


def test_the_saved_weights_are_the_declared_trainable_ones(served):
    """Adapter bytes on disk hold exactly the run's trainable parameters (the whole model for full tuning)."""
    for result in iter_results(served):
        adapter = served / result["run_id"] / "adapter"
        [weights] = adapter.glob("*.safetensors")
        stored = sum(t.numel() for t in load_file(weights).values())
        params = result["params"]
        assert stored == (params["total"] if result["config"]["method"] == "full" else params["trainable"])


def test_merged_predictions_equal_unmerged_ones_where_merging_applies(served):
    for result in iter_results(served):
        check = result["serving"]["check"]
        if MERGE_STATUS[result["config"]["method"]] != "merged":
            assert check is None
            continue
        assert check == {**check, "precision": "fp32", "rule": "exact", "tolerance": 0.0, "compared": 8,
                         "agreement": 1.0, "passed": True}
        assert check["max_abs_logit_diff"] < 1e-4


@pytest.mark.parametrize("model", ["llama-tiny-random", "t5-tiny-random"])
@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit"])
def test_merging_random_adapters_keeps_every_prediction(model, method):
    """Adapters far from their initial values (every declared parameter drawn at random) change what the model
    decodes, and the merged model decodes exactly as the unmerged one in fp32."""
    loaded = load_model(model)
    applied = apply_method(loaded.model, loaded.family, method)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in applied.trainable.values():
            param.normal_(mean=1.0 if method == "ia3" else 0.0, std=0.2)
    run = RunConfig(model=model, method=method, task="synthetic_classification", scale=8)
    requests = serving.serving_requests(run, loaded.tokenizer, loaded.family, 6)
    cpu = torch.device("cpu")

    def decode(m):
        return serving.decode_side_by_side({"m": m}, requests, loaded.tokenizer, loaded.family, 3, 4, cpu)["m"]

    base = serving.next_token_logits(load_model(model).model, requests, loaded.tokenizer, loaded.family, cpu)
    unmerged_logits = serving.next_token_logits(applied.model, requests, loaded.tokenizer, loaded.family, cpu)
    unmerged = decode(applied.model)
    merged_model, merge = serving.merge_weights(applied.model)
    assert merge["status"] == "merged" and not any("lora_" in n or "ia3_" in n or "beft_" in n
                                                   for n, _ in merged_model.named_parameters())
    merged_logits = serving.next_token_logits(merged_model, requests, loaded.tokenizer, loaded.family, cpu)
    merge_error = (merged_logits - unmerged_logits).abs().max()
    assert merge_error < 1e-3  # fp32 rounding only
    assert (unmerged_logits - base).abs().max() > 100 * merge_error  # the adapter matters far more
    assert decode(merged_model).predictions == unmerged.predictions


def test_the_check_fails_and_warns_when_merged_predictions_differ():
    def decoded(predictions):
        return {1: serving.Decoded(1, 1.0, len(predictions), len(predictions), predictions)}

    with pytest.warns(UserWarning, match="agree with unmerged ones on 75.0%"):
        check = serving.merge_check(decoded(list("abcd")), decoded(list("abcx")), 0.5, ServeConfig())
    assert (check["agreement"], check["passed"], check["rule"]) == (0.75, False, "exact")
    bf16 = ServeConfig(precision="bf16", bf16_tolerance=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = serving.merge_check(decoded(list("abcd")), decoded(list("abcx")), 0.5, bf16)
    assert (check["passed"], check["rule"], check["tolerance"]) == (True, "tolerance", 0.25)


def test_serve_bench_writes_beside_each_result_and_leaves_results_alone(served):
    before = {p: p.read_bytes() for p in served.glob("*/result.json")}
    outcome = serve_bench(served, settings_from(["requests=2", "serve.batch_sizes=[2]"]), say=lambda _: None)
    assert outcome.measured == [] and {why for _, why in outcome.skipped} == {
        "measured already (--force measures again)"}
    outcome = serve_bench(served, settings_from(["requests=2", "serve.batch_sizes=[2]"]), force=True,
                          say=lambda _: None)
    assert len(outcome.measured) == len(METHODS)
    assert {p: p.read_bytes() for p in served.glob("*/result.json")} == before
    for run_id in outcome.measured:
        written = json.loads((served / run_id / SERVING_FILE).read_text())
        assert written["run_id"] == run_id and written["settings"]["batch_sizes"] == [2]
        records = written["serving"]["decoding"]
        assert {(d["variant"], d["batch_size"]) for d in records} >= {("base", 2), ("unmerged", 2)}
        assert all(d["tokens"] == d["batches"] * 2 * written["serving"]["new_tokens"] for d in records)


def test_the_report_has_table_7_and_the_latency_plot(served):
    written = build_report(served)
    table = (served / "report" / "tables" / "table7.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Method (task" not in line
            and "---" not in line]
    assert len(rows) == len(METHODS)
    assert sum("passed: 100% (exact, fp32)" in row for row in rows) == 3
    assert "impossible" in next(row for row in rows if row.startswith("| Prompt Tune"))
    assert served / "report" / "figures" / "serving_latency.png" in written["figures"]


def test_serving_settings_are_checked_and_stay_out_of_the_run_id():
    run = RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale=8)
    assert run.run_id() == RunConfig(**{**run.__dict__, "serve": ServeConfig(enabled=True)}).run_id()
    with pytest.raises(UserError, match="needs train.save_adapter=true"):
        load_sweep(None, ["serve.enabled=true", "train.save_adapter=false"])
    with pytest.raises(UserError, match="serve.batch_sizes"):
        load_sweep(None, ["serve.batch_sizes=[0]"])
    with pytest.raises(UserError, match="did you mean 'bf16'"):
        settings_from(["precision=bf61"])
