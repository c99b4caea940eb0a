"""The speed-up seam: configured by ``speedups``, decided once per run, recorded per lever, and changing how
fast a run goes, not what it computes."""

from __future__ import annotations

import pytest
import torch
from speedup_helpers import plain_plan, plan_for

from peftbench.catalog.methods import apply_method
from peftbench.catalog.models import load_model
from peftbench.config import SpeedupsConfig, load_sweep
from peftbench.errors import UserError
from peftbench.recipe.train import run_cell
from peftbench.speedups import for_model
from peftbench.speedups.compiled_layers import cpp_compiler

pytestmark = pytest.mark.integration

LEVERS = SpeedupsConfig.levers()
CPU_ONLY = ["fused_passes", "onednn_blocked_weights", "eager_attention", "concatenated_rows",
            "unpadded_feed_forward", "bits_dropout"]


def _model(name: str, method: str, options: dict | None = None):
    loaded = load_model(name)
    torch.manual_seed(0)
    return apply_method(loaded.model, loaded.family, method, options).model


def test_speedups_setting_shorthands_and_single_levers(tmp_path):
    assert load_sweep(None, []).speedups == SpeedupsConfig() == SpeedupsConfig.from_setting("default")
    assert load_sweep(None, ["speedups=all"]).speedups.setting == "all"
    none = load_sweep(None, ["speedups=none"]).speedups
    assert none.setting == "none" and not any(vars(none).values())
    custom = load_sweep(None, ["speedups=none", "speedups.fused_adamw=true"]).speedups
    assert custom.setting == "custom" and [k for k, v in vars(custom).items() if v] == ["fused_adamw"]
    suite = tmp_path / "suite.yaml"
    suite.write_text("speedups: none\n")
    assert load_sweep(suite, ["speedups.eager_attention=true"]).speedups.eager_attention
    assert load_sweep(suite, ["speedups=all"]).speedups.setting == "all"
    with pytest.raises(UserError, match="speedups must be default, all, none or a mapping"):
        load_sweep(None, ["speedups=some"])
    with pytest.raises(UserError, match="unknown key 'eager'.*eager_attention"):
        load_sweep(None, ["speedups.eager=false"])


def test_the_paper_suite_compares_times_without_speedups():
    from peftbench.cli import resolve_config_path

    assert load_sweep(resolve_config_path("paper")).speedups.setting == "none"
    quickstart = load_sweep(resolve_config_path("quickstart")).speedups
    assert [lever for lever, on in vars(quickstart).items() if not on] == ["compiled_layers"]


def test_the_setting_is_part_of_the_run_id_and_the_config():
    [fast] = load_sweep(None, ["model=llama-tiny-random", "method=lora", "task=synthetic_classification",
                               "speedups=all"]).expand()
    [plain] = load_sweep(None, ["model=llama-tiny-random", "method=lora", "task=synthetic_classification",
                                "speedups=none"]).expand()
    assert fast.run_id() != plain.run_id()
    assert fast.to_dict()["speedups"] == dict.fromkeys(LEVERS, True)
    assert plain.to_dict()["speedups"] == dict.fromkeys(LEVERS, False)


def test_every_lever_is_off_without_speedups():
    record = plain_plan(_model("llama-tiny-random", "lora")).record()
    assert record == {"setting": "none", "levers": {lever: {"status": "off", "reason": None} for lever in LEVERS}}


def test_a_lora_llama_on_cpu_gets_every_lever_but_dropout_masks():
    record = plan_for(_model("llama-tiny-random", "lora"), precision="bf16").record()
    statuses = {lever: entry["status"] for lever, entry in record["levers"].items()}
    assert record["setting"] == "custom" and list(statuses) == LEVERS  # all but compiled_layers
    # the tiny model's weights are below oneDNN's packing size; it has no dropout; plan_for leaves layers eager
    assert {k for k, v in statuses.items() if v != "applied"} == {"onednn_blocked_weights", "bits_dropout",
                                                                  "compiled_layers"}
    assert record["levers"]["bits_dropout"]["reason"] == "the model has no dropout"
    assert record["levers"]["onednn_blocked_weights"]["reason"].startswith("no frozen bf16 CPU linear")


def test_levers_that_cannot_apply_say_why():
    prompt = plan_for(_model("llama-tiny-random", "prompt")).statuses
    assert prompt["shared_prompt_prefix"].reason == (
        "prompt tuning: its virtual tokens come before the prompt, so no prefix is shared")
    assert prompt["concatenated_rows"].status == prompt["unpadded_feed_forward"].status == "not_applicable"
    assert prompt["eager_attention"].status == "applied"
    full = plan_for(_model("llama-tiny-random", "full"), precision="bf16").statuses
    assert full["frozen_weights_bf16"].reason == "full tuning: no frozen linears"
    assert full["onednn_blocked_weights"].reason == "needs frozen_weights_bf16"
    t5 = plan_for(_model("t5-tiny-random", "lora")).statuses
    assert t5["lm_head_on_targets"].reason == "encoder-decoder model: every decoder position predicts a target"
    assert t5["shared_prompt_prefix"].reason == "encoder-decoder model: the encoder attends both ways"
    assert t5["bits_dropout"].status == "applied"  # T5 has dropout
    dropout = plan_for(_model("llama-tiny-random", "lora", {"lora_dropout": 0.1})).statuses
    assert dropout["shared_prompt_prefix"].status == "applied"
    assert dropout["shared_prompt_prefix"].reason == "validation and ranking only: the model has dropout"


def test_cpu_levers_do_not_apply_on_other_devices():
    model = _model("t5-tiny-random", "lora")  # not moved: only the plan's decisions are under test
    statuses = for_model(model, torch.device("cuda")).statuses
    for lever in CPU_ONLY:
        assert statuses[lever].status == "not_applicable", lever
        assert statuses[lever].reason.startswith("device cuda"), lever
    assert statuses["fused_adamw"].status == statuses["keep_freed_memory"].status == "applied"


def _run(tmp_path, setting: str, method: str, *levers: str) -> dict:
    overrides = ["model=llama-tiny-random", f"method={method}", "task=synthetic_classification", "scale=32",
                 f"speedups={setting}", *levers, "train.max_epochs=2", "train.batch_size=4", "train.grad_accum=4",
                 "train.eval_examples=16", "train.eval_batch_size=4", "train.val_metric_examples=0",
                 "train.precision=fp32", "train.num_threads=1", f"output_dir={tmp_path}"]
    [run] = load_sweep(None, overrides).expand()
    return run_cell(run, tmp_path / run.run_id(), progress=False)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_speedups_none_gives_the_losses_of_speedups_all(tmp_path, method):
    """The tiny Llama has no dropout, so both settings compute the same function: in fp32 the training and
    validation losses of every epoch agree to 1e-5 (relative). (A model with dropout draws other masks:
    ``bits_dropout`` is another random stream, and fused passes draw them in other shapes.) Compiled layers,
    which take the place of the shared prefix: ``test_compiled_layers_run_a_cell_with_the_eager_losses``."""
    fast = _run(tmp_path, "all", method, "speedups.compiled_layers=false")
    plain = _run(tmp_path, "none", method)
    assert {entry["status"] for entry in plain["speedups"]["levers"].values()} == {"off"}
    assert plain["speedups"]["setting"] == "none" and fast["speedups"]["setting"] == "custom"
    assert fast["speedups"]["levers"]["shared_prompt_prefix"]["status"] == "applied"
    assert len(fast["history"]) == len(plain["history"]) == 2
    for ours, reference in zip(fast["history"], plain["history"], strict=True):
        assert ours["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
        assert ours["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


@pytest.mark.skipif(cpp_compiler() is None, reason="Inductor's CPU backend needs a C++ compiler")
@pytest.mark.slow
def test_compiled_layers_run_a_cell_with_the_eager_losses(tmp_path):
    """A whole cell with compiled layers: training and validation compiled (fp32: losses to 1e-5), test
    decoding eager, the lever recorded as applied."""
    compiled = _run(tmp_path, "none", "lora", "speedups.compiled_layers=true")
    plain = _run(tmp_path, "none", "lora")
    assert compiled["speedups"]["levers"]["compiled_layers"] == {"status": "applied", "reason": None}
    assert compiled["status"] == "ok" and compiled["metrics"]["test"] == plain["metrics"]["test"]
    for ours, reference in zip(compiled["history"], plain["history"], strict=True):
        assert ours["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
        assert ours["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)


def test_fused_passes_count_prompt_tuning_virtual_tokens_against_their_budget():
    from peftbench.recipe.batching import FUSE_MAX_TOKENS, Encoded, fuse_batches

    plan = for_model(_model("llama-tiny-random", "prompt", {"num_virtual_tokens": 100}), torch.device("cpu"))
    assert plan.virtual_tokens == 100
    assert for_model(_model("llama-tiny-random", "lora"), torch.device("cpu")).virtual_tokens == 0
    # Four batches of 16 rows × 30 tokens: 1,920 padded tokens fuse into one pass; with 100 virtual tokens
    # per row each batch alone holds 16 × 130 = 2,080 > 2,048, so each runs alone.
    items = [Encoded([1] * 30, [1] * 30, [1] * 20) for _ in range(64)]
    group = [list(range(start, start + 16)) for start in range(0, 64, 16)]
    assert len(fuse_batches(items, group, "causal", FUSE_MAX_TOKENS)) == 1
    assert len(fuse_batches(items, group, "causal", FUSE_MAX_TOKENS, virtual_tokens=plan.virtual_tokens)) == 4
