"""Parameter counts on the meta device: the paper's Table 3 on FLAN-T5-XL, and hand arithmetic on tiny models.

Every model is built from its config on the meta device: no weights, no download, seconds in all.
"""

from __future__ import annotations

import argparse
import json

import pytest

from peftbench.catalog.models import load_config, tiny_llama_config, tiny_t5_config
from peftbench.catalog.params import (
    PAPER_FLAN_T5_XL_TOTAL,
    build_meta_model,
    count_params,
    paper_total_note,
    unique_param_count,
)
from peftbench.catalog.params_command import add_commands
from peftbench.errors import UserError

pytestmark = pytest.mark.unit

# FLAN-T5-XL: d_model 2048, inner attention width 32 heads × d_kv 64 = 2048, d_ff 5120, 24 + 24 blocks.
XL_D, XL_INNER, XL_FF, XL_LAYERS, XL_VOCAB = 2048, 32 * 64, 5120, 24, 32128
XL_ATTENTION_BLOCKS = XL_LAYERS + 2 * XL_LAYERS  # encoder self + decoder self + decoder cross = 72
XL_FF_BLOCKS = 2 * XL_LAYERS  # one feed-forward per block of each stack = 48
LORA_RANK = 3  # the rank that reproduces Table 3 (the paper's text says 2)


def lora_per_block(d_model: int, inner: int, r: int = LORA_RANK) -> int:
    """q, k, v: d_model → inner; o: inner → d_model; each gets A (r × in) and B (out × r)."""
    return 4 * r * (d_model + inner)


def ia3_attention(d_model: int, inner: int) -> int:
    """One vector per output of q, k, v (inner each) and o (d_model)."""
    return 3 * inner + d_model


def ia3_feed_forward(d_model: int, d_ff: int) -> int:
    """One vector on the linear branch's output (wi_1: d_ff) and the output projection (wo: d_model)."""
    return d_ff + d_model


XL_LORA = XL_ATTENTION_BLOCKS * lora_per_block(XL_D, XL_INNER)
XL_IA3_ATTENTION = XL_ATTENTION_BLOCKS * ia3_attention(XL_D, XL_INNER)
XL_IA3_FF = XL_FF_BLOCKS * ia3_feed_forward(XL_D, XL_FF)

# (method, ablation, Table 3 count, the same count from the dims): every row of the paper's Table 3.
TABLE3 = [
    ("ia3", None, 933_888, XL_IA3_ATTENTION + XL_IA3_FF),
    ("lora", None, 3_538_944, XL_LORA),
    ("ia3", "early_layers", 466_944, (XL_IA3_ATTENTION + XL_IA3_FF) // 2),
    ("lora", "early_layers", 1_769_472, XL_LORA // 2),
    ("ia3", "later_layers", 466_944, (XL_IA3_ATTENTION + XL_IA3_FF) // 2),
    ("lora", "later_layers", 1_769_472, XL_LORA // 2),
    ("ia3", "random_layers", 466_944, (XL_IA3_ATTENTION + XL_IA3_FF) // 2),
    ("lora", "random_layers", 1_769_472, XL_LORA // 2),
    ("lora", "drop_self_attention", 1_179_648, XL_LAYERS * lora_per_block(XL_D, XL_INNER)),  # cross only
    ("lora", "drop_cross_attention", 2_359_296, 2 * XL_LAYERS * lora_per_block(XL_D, XL_INNER)),
    ("lora", "drop_query_output", 1_769_472, XL_ATTENTION_BLOCKS * 2 * LORA_RANK * (XL_D + XL_INNER)),
    ("ia3", "drop_attention", 344_064, XL_IA3_FF),
    ("ia3", "drop_feed_forward", 589_824, XL_IA3_ATTENTION),
]
TABLE3_LABELS = {
    ("ia3", None): "(IA)3 (full layers/modules)",
    ("lora", None): "LoRA (full layers/modules)",
    ("ia3", "early_layers"): "(IA)3 (select early layers)",
    ("lora", "early_layers"): "LoRA (select early layers)",
    ("ia3", "later_layers"): "(IA)3 (select later layers)",
    ("lora", "later_layers"): "LoRA (select later layers)",
    ("ia3", "random_layers"): "(IA)3 (select random layers)",
    ("lora", "random_layers"): "LoRA (select random layers)",
    ("lora", "drop_self_attention"): "LoRA (drop self-attention)",
    ("lora", "drop_cross_attention"): "LoRA (drop enc/dec-attention)",
    ("lora", "drop_query_output"): "LoRA (drop query/output attention)",
    ("ia3", "drop_attention"): "(IA)3 (drop attention)",
    ("ia3", "drop_feed_forward"): "(IA)3 (drop dense activation)",
}


def t5_gated_total(
    vocab: int,
    d_model: int,
    inner: int,
    d_ff: int,
    layers: int,
    heads: int,
    untied_head: bool,
    buckets: int = 32,
) -> int:
    """Unique parameters of a gated-GELU T5 (FLAN-T5 / T5 v1.1), from its dims."""
    attention = 4 * d_model * inner
    feed_forward = 3 * d_model * d_ff  # wi_0, wi_1, wo
    encoder_block = attention + feed_forward + 2 * d_model  # + 2 layer norms
    decoder_block = 2 * attention + feed_forward + 3 * d_model
    stacks = layers * (encoder_block + decoder_block) + 2 * (
        buckets * heads + d_model
    )  # rel. bias, final norm
    return vocab * d_model * (2 if untied_head else 1) + stacks


@pytest.mark.parametrize(
    ("method", "ablation", "paper", "by_hand"), TABLE3, ids=[f"{m}-{a}" for m, a, _, _ in TABLE3]
)
def test_flan_t5_xl_table3_rows(method, ablation, paper, by_hand):
    count = count_params("flan-t5-xl", method, ablation)
    assert count.trainable == paper == by_hand
    assert count.total == PAPER_FLAN_T5_XL_TOTAL
    assert count.label == TABLE3_LABELS[(method, ablation)]


def test_flan_t5_xl_baselines():
    """§A.4: prompt tuning n × h = 100 × 2048; BitFit one bias per linear output; full = every weight."""
    assert count_params("flan-t5-xl", "prompt").trainable == 100 * XL_D == 204_800
    bitfit = XL_ATTENTION_BLOCKS * (3 * XL_INNER + XL_D) + XL_FF_BLOCKS * (2 * XL_FF + XL_D)
    assert count_params("flan-t5-xl", "bitfit").trainable == bitfit == 1_179_648
    assert count_params("flan-t5-xl", "full").trainable == PAPER_FLAN_T5_XL_TOTAL


def test_lora_rank_two_of_the_paper_text():
    assert count_params("flan-t5-xl", "lora", method_options={"r": 2}).trainable == 2_359_296


def test_flan_t5_xl_total_is_the_papers_with_an_untied_lm_head():
    """The paper's total is exact: shared embedding + FLAN-T5's own lm_head + the blocks."""
    model, _family, config, untied = build_meta_model("flan-t5-xl")
    assert untied and model.lm_head.weight is not model.shared.weight
    total = unique_param_count(model)
    expected = t5_gated_total(XL_VOCAB, XL_D, XL_INNER, XL_FF, XL_LAYERS, 32, untied_head=True)
    assert total == expected == PAPER_FLAN_T5_XL_TOTAL
    # transformers >= 5 ties lm_head in a config-only build: one 32,128 × 2,048 matrix fewer.
    assert total - XL_VOCAB * XL_D == 2_783_959_040
    note = paper_total_note(config, total, untied)
    assert "65,798,144" in note and "2,783,959,040" in note and "2,849,757,184" in note


@pytest.mark.parametrize(
    ("size", "dims"),
    [
        ("small", (512, 1024, 8, 6)),
        ("base", (768, 2048, 12, 12)),
        ("large", (1024, 2816, 24, 16)),
        ("xl", (2048, 5120, 24, 32)),
        ("xxl", (4096, 10240, 24, 64)),
    ],
)
def test_bundled_flan_t5_configs(size, dims):
    d_model, d_ff, layers, heads = dims
    config = load_config(f"flan-t5-{size}")
    assert config.model_type == "t5" and config.vocab_size == 32128 and config.d_kv == 64
    assert (config.d_model, config.d_ff, config.num_layers, config.num_decoder_layers, config.num_heads) == (
        d_model,
        d_ff,
        layers,
        layers,
        heads,
    )
    assert (
        config.is_gated_act and config.scale_decoder_outputs is False
    )  # gated-gelu, tie_word_embeddings false
    model, *_ = build_meta_model(f"flan-t5-{size}")
    assert unique_param_count(model) == t5_gated_total(32128, d_model, heads * 64, d_ff, layers, heads, True)


# --- t5-tiny-random: d_model 32, 4 heads × d_kv 8 = 32, d_ff 64, 2 + 2 blocks, vocab 384, built tied ----
T5_D, T5_INNER, T5_FF, T5_LAYERS = 32, 4 * 8, 64, 2
T5_ATTENTION_BLOCKS = 3 * T5_LAYERS  # 2 encoder self + 2 decoder self + 2 cross = 6
T5_FF_BLOCKS = 2 * T5_LAYERS
T5_LORA = T5_ATTENTION_BLOCKS * lora_per_block(T5_D, T5_INNER)  # 6 × 4 × 3 × (32 + 32) = 4,608
T5_IA3_ATT = T5_ATTENTION_BLOCKS * ia3_attention(T5_D, T5_INNER)  # 6 × 128 = 768
T5_IA3_FF = T5_FF_BLOCKS * ia3_feed_forward(T5_D, T5_FF)  # 4 × 96 = 384

TINY_T5 = [
    ("lora", None, T5_LORA),
    ("ia3", None, T5_IA3_ATT + T5_IA3_FF),
    ("prompt", None, 100 * T5_D),
    ("bitfit", None, T5_ATTENTION_BLOCKS * (3 * T5_INNER + T5_D) + T5_FF_BLOCKS * (2 * T5_FF + T5_D)),
    ("lora", "early_layers", T5_LORA // 2),  # block 0 of each stack: 3 attention blocks
    ("lora", "later_layers", T5_LORA // 2),
    ("lora", "random_layers", T5_LORA // 2),
    ("ia3", "early_layers", (T5_IA3_ATT + T5_IA3_FF) // 2),
    ("lora", "drop_self_attention", T5_LAYERS * lora_per_block(T5_D, T5_INNER)),
    ("lora", "drop_cross_attention", 2 * T5_LAYERS * lora_per_block(T5_D, T5_INNER)),
    ("lora", "drop_query_output", T5_LORA // 2),
    ("ia3", "drop_attention", T5_IA3_FF),
    ("ia3", "drop_feed_forward", T5_IA3_ATT),
]


@pytest.mark.parametrize(("method", "ablation", "expected"), TINY_T5, ids=[f"{m}-{a}" for m, a, _ in TINY_T5])
def test_tiny_t5_counts(method, ablation, expected):
    cfg = tiny_t5_config()
    assert (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.num_layers) == (
        T5_D,
        T5_INNER,
        T5_FF,
        T5_LAYERS,
    )
    count = count_params("t5-tiny-random", method, ablation)
    assert count.trainable == expected
    # Built from its config (tied lm_head), exactly the model a run trains: one embedding matrix.
    assert (
        count.total == t5_gated_total(384, T5_D, T5_INNER, T5_FF, T5_LAYERS, 4, untied_head=False) == 62_080
    )
    assert not count.lm_head_untied


# --- llama-tiny-random: hidden 32, 4 heads of 8, 2 key/value heads (kv width 16), ff 64, 2 layers -----
LL_D, LL_KV, LL_FF, LL_LAYERS = 32, 2 * 8, 64, 2
LL_LORA = LL_LAYERS * LORA_RANK * (2 * (LL_D + LL_D) + 2 * (LL_D + LL_KV))  # q, o: 32→32; k, v: 32→16
LL_IA3_ATT = LL_LAYERS * (LL_D + 2 * LL_KV + LL_D)  # outputs of q, k, v, o
LL_IA3_FF = LL_LAYERS * (LL_FF + LL_D)  # up_proj and down_proj outputs
TINY_LLAMA = [
    ("lora", None, LL_LORA),  # 2 × 3 × (128 + 96) = 1,344
    ("ia3", None, LL_IA3_ATT + LL_IA3_FF),  # 192 + 192 = 384
    ("prompt", None, 100 * LL_D),
    ("bitfit", None, LL_LAYERS * (2 * LL_D + 2 * LL_KV + 2 * LL_FF + LL_D)),  # q o k v, gate up, down
    ("lora", "later_layers", LL_LORA // 2),
    ("lora", "drop_query_output", LL_LAYERS * LORA_RANK * 2 * (LL_D + LL_KV)),
    ("ia3", "drop_attention", LL_IA3_FF),
    ("ia3", "drop_feed_forward", LL_IA3_ATT),
]


@pytest.mark.parametrize(
    ("method", "ablation", "expected"), TINY_LLAMA, ids=[f"{m}-{a}" for m, a, _ in TINY_LLAMA]
)
def test_tiny_llama_counts(method, ablation, expected):
    cfg = tiny_llama_config()
    kv_width = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    assert (cfg.hidden_size, kv_width, cfg.intermediate_size, cfg.num_hidden_layers) == (
        LL_D,
        LL_KV,
        LL_FF,
        LL_LAYERS,
    )
    count = count_params("llama-tiny-random", method, ablation)
    assert count.trainable == expected
    per_layer = 2 * LL_D * LL_D + 2 * LL_D * LL_KV + 3 * LL_D * LL_FF + 2 * LL_D  # attention, mlp, 2 norms
    assert count.total == 384 * LL_D + LL_LAYERS * per_layer + LL_D == 30_880  # tied embedding, final norm


def test_full_fine_tuning_trains_every_unique_weight():
    assert count_params("llama-tiny-random", "full").trainable == 30_880
    assert count_params("t5-tiny-random", "full").trainable == 62_080


def test_no_note_for_models_without_a_separate_head():
    _model, _family, config, untied = build_meta_model("llama-tiny-random")
    assert paper_total_note(config, 30_880, untied) is None


# --- the `peftbench params` command ---------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="peftbench")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["params", *argv])
    status = args.func(args)
    return status, capsys.readouterr().out


def test_cli_table_has_every_table3_row(capsys):
    status, out = run_cli(["flan-t5-xl"], capsys)
    assert status == 0
    lines = out.splitlines()

    def row(label: str) -> str:
        matches = [line for line in lines if line.startswith(label + "  ")]
        assert len(matches) == 1, (label, out)
        return matches[0]

    assert "2,849,757,184" in row("Total Parameters (no PEFT)")
    for method, ablation, paper, _ in TABLE3:
        assert f" {paper:,} " in row(TABLE3_LABELS[(method, ablation)])
    assert " 204,800 " in row("Prompt Tune") and " 1,179,648 " in row("BitFit")
    assert "0.1242%" in row("LoRA (full layers/modules)")  # 3,538,944 / 2,849,757,184
    assert "Note:" in out and "2,783,959,040" in out
    labels = [TABLE3_LABELS[(m, a)] for m, a, _, _ in TABLE3]
    positions = [out.index(label + "  ") for label in labels]
    assert positions[:8] == sorted(positions[:8])  # all-layers rows, then early, later, random pairs


def test_cli_json_parses(capsys):
    status, out = run_cli(
        [
            "t5-tiny-random",
            "--json",
            "--method",
            "lora",
            "--ablation",
            "none",
            "--ablation",
            "random_layers",
            "--seed",
            "1",
        ],
        capsys,
    )
    assert status == 0
    report = json.loads(out)
    assert report["total"]["count"] == 62_080 and report["total"]["note"] is None
    assert [(r["method"], r["ablation"], r["trainable"]) for r in report["rows"]] == [
        ("lora", None, T5_LORA),
        ("lora", "random_layers", T5_LORA // 2),
    ]
    assert set(report["rows"][1]["selected_layers"]) == {"encoder", "decoder"}


def test_cli_skips_default_rows_a_decoder_only_model_cannot_form(capsys):
    status, out = run_cli(["llama-tiny-random"], capsys)
    assert status == 0
    assert "Skipped LoRA (drop enc/dec-attention)" in out and "Skipped LoRA (drop self-attention)" in out
    assert "(IA)3 (drop attention)" in out


def test_cli_custom_selection_and_options(capsys):
    _, out = run_cli(
        [
            "t5-tiny-random",
            "--method",
            "lora",
            "--option",
            "r=2",
            "--layers",
            "early",
            "--modules=-self_attention",
        ],
        capsys,
    )
    # block 0 of each stack, cross-attention only: 1 block × 4 × 2 × (32 + 32)
    assert "LoRA (layers=early, modules=-self_attention)" in out and " 512 " in out


def test_cli_ablation_with_prompt_or_full_is_an_error(capsys):
    for method in ("prompt", "full"):
        with pytest.raises(UserError, match="ablations apply to: adalora, bitfit, ia3, lora"):
            run_cli(["t5-tiny-random", "--method", method, "--ablation", "early_layers"], capsys)


def test_cli_bad_option(capsys):
    with pytest.raises(UserError, match="KEY=VALUE"):
        run_cli(["t5-tiny-random", "--method", "lora", "--option", "r"], capsys)
    with pytest.raises(UserError, match="not a field of LoraConfig"):
        run_cli(["t5-tiny-random", "--method", "lora", "--option", "rank=2"], capsys)
