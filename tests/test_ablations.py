"""Named ablations: the layers and modules each selects, seeded random halves, bad input, and the
paper-ablations suite (Table 2's 13 rows × 4 tasks) through ``SweepConfig.method_ablations``."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from peftbench.catalog.ablations import ABLATIONS, resolve_selection
from peftbench.catalog.methods.roles import select_layers, select_modules
from peftbench.catalog.models import tiny_t5_config
from peftbench.catalog.params import count_params
from peftbench.cli import SUITES_DIR
from peftbench.config import SweepConfig, load_sweep
from peftbench.errors import UserError

pytestmark = pytest.mark.integration

SUITE = SUITES_DIR / "paper-ablations.yaml"
XL_STACKS = {"encoder": 24, "decoder": 24}


@pytest.fixture(scope="module")
def tiny_t5():
    with torch.device("meta"):
        return AutoModelForSeq2SeqLM.from_config(tiny_t5_config())


def selected(model, ablation: str, targets: set[str]) -> set[str]:
    """Module names as "stack.block.module" (e.g. "decoder.0.EncDecAttention.q") for readable asserts."""
    layers, modules = resolve_selection(ablation, None, None)
    names, _ = select_modules(model, targets, layers=layers, modules=modules)
    return {re.sub(r"^(\w+)\.block\.(\d+)\.layer\.\d+\.", r"\1.\2.", name) for name in names}


ATTENTION, IA3_TARGETS = {"attention"}, {"attention", "ff_up", "ff_down"}
SELF = {f"{stack}.{i}.SelfAttention.{p}" for stack in ("encoder", "decoder") for i in (0, 1) for p in "qkvo"}
CROSS = {f"decoder.{i}.EncDecAttention.{p}" for i in (0, 1) for p in "qkvo"}
FEED_FORWARD = {
    f"{stack}.{i}.DenseReluDense.{p}"
    for stack in ("encoder", "decoder")
    for i in (0, 1)
    for p in ("wi_1", "wo")
}


@pytest.mark.parametrize(
    ("ablation", "targets", "expected"),
    [
        ("drop_self_attention", ATTENTION, CROSS),
        ("drop_cross_attention", ATTENTION, SELF),
        ("drop_query_output", ATTENTION, {n for n in SELF | CROSS if n[-1] in "kv"}),
        ("drop_attention", IA3_TARGETS, FEED_FORWARD),
        ("drop_feed_forward", IA3_TARGETS, SELF | CROSS),
        ("early_layers", ATTENTION, {n for n in SELF | CROSS if ".0." in n}),
        ("later_layers", ATTENTION, {n for n in SELF | CROSS if ".1." in n}),
    ],
)
def test_each_ablation_selects_its_modules(tiny_t5, ablation, targets, expected):
    assert selected(tiny_t5, ablation, targets) == expected


def test_every_named_ablation_is_tested():
    tested = {
        "early_layers",
        "later_layers",
        "random_layers",
        "drop_self_attention",
        "drop_cross_attention",
        "drop_query_output",
        "drop_attention",
        "drop_feed_forward",
    }
    assert set(ABLATIONS.names()) == tested


def test_early_and_later_halves_of_flan_t5_xl():
    early = count_params("flan-t5-xl", "ia3", "early_layers").selected_layers
    later = count_params("flan-t5-xl", "ia3", "later_layers").selected_layers
    assert early == {"encoder": list(range(12)), "decoder": list(range(12))}
    assert later == {"encoder": list(range(12, 24)), "decoder": list(range(12, 24))}


def test_random_half_is_reproducible_per_seed_and_differs_between_seeds():
    first = count_params("flan-t5-xl", "lora", "random_layers", seed=0)
    again = count_params("flan-t5-xl", "lora", "random_layers", seed=0)
    other = count_params("flan-t5-xl", "lora", "random_layers", seed=1)
    assert first.selected_layers == again.selected_layers
    assert first.selected_layers != other.selected_layers
    assert first.trainable == other.trainable == 1_769_472  # always half of each stack
    for stack, indices in first.selected_layers.items():
        assert len(indices) == 12 and indices == sorted(set(indices)) and indices != list(range(12))
        assert f"{stack}.block.{indices[0]}." in " ".join(first.target_modules)
    # each stack draws its own half
    assert first.selected_layers["encoder"] != first.selected_layers["decoder"]


def test_layer_fractions_and_index_lists():
    assert select_layers(XL_STACKS, "early:0.25", 0) == {s: list(range(6)) for s in XL_STACKS}
    assert select_layers(XL_STACKS, "later:1", 0) == {s: list(range(24)) for s in XL_STACKS}
    assert select_layers(XL_STACKS, [3, 1, 3], 0) == {s: [1, 3] for s in XL_STACKS}
    assert count_params("flan-t5-xl", "lora", layers=[0, 1, 2]).trainable == 3 * 3 * 4 * 3 * (2048 + 2048)


def test_unknown_ablation_lists_the_valid_ones():
    with pytest.raises(UserError) as error:
        count_params("t5-tiny-random", "lora", "drop_selfattention")
    message = str(error.value)
    assert "did you mean 'drop_self_attention'" in message
    assert all(name in message for name in ABLATIONS.names())


@pytest.mark.parametrize(
    ("layers", "pattern"),
    [
        ([0, 2], r"\[2\] out of range for the encoder stack \(0\.\.1\)"),
        ([-1], r"out of range"),
        ("early:0", r"fraction must be in \(0, 1\]"),
        ("random:1.5", r"fraction must be in \(0, 1\]"),
        ("later:half", r"fraction must be in \(0, 1\]"),
        ("middle", r"valid: .*early.*later.*random"),
    ],
)
def test_bad_layer_selection(layers, pattern):
    with pytest.raises(UserError, match=pattern):
        count_params("t5-tiny-random", "lora", layers=layers)


def test_unknown_module_role_lists_the_roles():
    with pytest.raises(UserError, match=r"unknown module role 'self_attn'.*valid: .*cross_attention"):
        count_params("t5-tiny-random", "lora", modules=["-self_attn"])


@pytest.mark.parametrize("method", ["prompt", "full"])
def test_ablation_with_a_method_without_layers(method):
    with pytest.raises(UserError, match=rf"method {method} .*ablations apply to: adalora, bitfit, ia3, lora"):
        count_params("t5-tiny-random", method, "early_layers")
    with pytest.raises(UserError, match="ablations apply to"):
        count_params("t5-tiny-random", method, layers="early")


def test_ablation_and_own_selection_together():
    with pytest.raises(UserError, match="already chooses layers and modules"):
        count_params("t5-tiny-random", "lora", "early_layers", layers="later")


def test_ablation_that_leaves_nothing_to_adapt():
    with pytest.raises(UserError, match="matches no linear layer"):
        count_params("t5-tiny-random", "lora", "drop_attention")


def test_bitfit_takes_ablations():
    # BitFit without feed-forward: the attention biases only, 6 blocks × (3 × 32 + 32)
    assert count_params("t5-tiny-random", "bitfit", "drop_feed_forward").trainable == 6 * 128


# --- the paper-ablations suite: Table 2 as a sweep ---------------------------------------------------------

TABLE2_ROWS = [
    ("ia3", None),
    ("ia3", "early_layers"),
    ("ia3", "later_layers"),
    ("ia3", "random_layers"),
    ("ia3", "drop_attention"),
    ("ia3", "drop_feed_forward"),
    ("lora", None),
    ("lora", "early_layers"),
    ("lora", "later_layers"),
    ("lora", "random_layers"),
    ("lora", "drop_self_attention"),
    ("lora", "drop_cross_attention"),
    ("lora", "drop_query_output"),
]


def test_paper_ablations_suite_is_table2():
    sweep = load_sweep(SUITE)
    runs = sweep.expand()
    assert len(runs) == 13 * 4
    assert {(r.model, r.scale, r.seed) for r in runs} == {("flan-t5-xl", "medium", 0)}
    tasks = ["ag_news", "cola", "e2e_nlg", "samsum"]
    assert [r.task for r in runs] == [t for t in tasks for _ in TABLE2_ROWS]
    assert [(r.method, r.ablation) for r in runs[:13]] == TABLE2_ROWS
    assert len({r.run_id() for r in runs}) == len(runs)


def test_method_ablations_keeps_the_product_order_otherwise():
    plain = SweepConfig(methods=["lora", "ia3"], tasks=["cola"], ablations=[None, "early_layers"])
    assert [(r.method, r.ablation) for r in plain.expand()] == [
        ("lora", None),
        ("lora", "early_layers"),
        ("ia3", None),
        ("ia3", "early_layers"),
    ]
    mixed = SweepConfig(
        methods=["full", "lora"],
        tasks=["cola"],
        ablations=[None],
        method_ablations={"lora": ["drop_query_output", None]},
    )
    mixed.validate()
    assert [(r.method, r.ablation) for r in mixed.expand()] == [
        ("full", None),
        ("lora", "drop_query_output"),
        ("lora", None),
    ]


def test_method_ablations_override_from_the_command_line():
    sweep = load_sweep(SUITE, ["method_ablations.ia3=[later_layers]", "tasks=[cola]"])
    assert [(r.method, r.ablation) for r in sweep.expand()] == [("ia3", "later_layers"), *TABLE2_ROWS[6:]]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["method_ablations.loha=[early_layers]"],
            r"unknown method in method_ablations 'loha'.*valid: ia3, lora",
        ),
        (
            ["method_ablations.lora=[drop_selfattention]"],
            r"unknown ablation in method_ablations.lora 'drop_selfattention' \(did you mean 'drop_self_attention'\?\)"
            r".*valid: .*drop_query_output.*null",
        ),
        (["method_ablations.ia3=[]"], r"method_ablations.ia3 is empty"),
    ],
)
def test_method_ablations_validation(overrides, pattern):
    with pytest.raises(UserError, match=pattern):
        load_sweep(SUITE, overrides)
