"""``peftbench recommend``: the rules of Pu et al. (2023) §3.2, and answers from measured results."""

from __future__ import annotations

import argparse

import pytest
from report_fixtures import make_result, write_results

from peftbench.analysis.recommend import Recommendation, data_scale, format_recommendations, recommend
from peftbench.analysis.report.cli import add_commands
from peftbench.errors import UserError

pytestmark = pytest.mark.unit

TASK_TYPES = ("classification", "generation")


def _ranked(recommendations: list[Recommendation]) -> list[str]:
    return [r.method for r in sorted(recommendations, key=lambda r: r.rank or 99) if r.rank is not None]


@pytest.mark.parametrize(
    ("examples", "scale"),
    [(1, "low"), (100, "low"), (101, "medium"), (1000, "medium"), (1001, "high"), (10**6, "high")],
)
def test_data_scales_follow_section_3_1(examples, scale):
    assert data_scale(examples) == scale


# Every rule of §3.2's last paragraph: (constraint, examples) -> the methods it puts first, as a set.
SECTION_3_2 = [
    ("time", 50, {"full"}),
    ("time", 500, {"full"}),
    ("time", 5000, {"ia3", "lora", "bitfit"}),
    ("memory", 50, {"bitfit", "ia3"}),
    ("memory", 500, {"ia3"}),
    ("memory", 5000, {"ia3"}),
    ("performance", 50, {"ia3", "lora", "bitfit"}),
    ("performance", 500, {"ia3", "lora", "bitfit"}),
    ("performance", 5000, {"full"}),
]


@pytest.mark.parametrize("task_type", TASK_TYPES)
@pytest.mark.parametrize(("constraint", "examples", "first"), SECTION_3_2)
def test_paper_framework_reproduces_section_3_2(task_type, constraint, examples, first):
    recommendations = recommend(task_type, examples, constraint)
    ranked = _ranked(recommendations)
    assert set(ranked[: len(first)]) == first
    assert sorted(ranked) == ["bitfit", "full", "ia3", "lora"]  # every compared method, ranked once
    for rec in recommendations[: len(first)]:
        assert "§3.2 recommends it" in rec.reason and rec.evidence["recommended_by_paper"]
    for rec in recommendations[len(first) : 4]:
        assert "Not among §3.2's recommendations" in rec.reason


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_prompt_tuning_is_excluded_with_the_papers_reason(task_type):
    recommendations = recommend(task_type, 50, "performance")
    prompt = recommendations[-1]
    assert (prompt.method, prompt.rank) == ("prompt", None)
    assert "noticeably worse" in prompt.reason and "§A.5" in prompt.reason
    assert "prompt" not in _ranked(recommendations)


def test_within_a_rule_methods_are_ordered_by_the_papers_numbers():
    # Table 4, low, AG News + CoLA: BitFit 3.06x, LoRA 5.12x, (IA)3 6.53x full tuning's run time.
    assert _ranked(recommend("classification", 50, "time")) == ["full", "bitfit", "lora", "ia3"]
    # Table 1, low, E2E NLG + SAMSum: BitFit 0.4537 > LoRA 0.4473 > (IA)3 0.3122.
    assert _ranked(recommend("generation", 50, "performance")) == ["bitfit", "lora", "ia3", "full"]
    reason = recommend("classification", 50, "time")[0].reason
    assert "speed-up of 73% on AG News, 87% on CoLA" in reason


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("regression", 50, "time"), "unknown task type 'regression'"),
        (("classification", 50, "tme"), "did you mean 'time'"),
        (("classification", 0, "time"), "positive number"),
    ],
)
def test_bad_input_is_a_user_error(arguments, message):
    with pytest.raises(UserError, match=message):
        recommend(*arguments)


def test_missing_or_empty_results_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        recommend("classification", 50, "time", tmp_path / "nope")
    with pytest.raises(UserError, match="no result files"):
        recommend("classification", 50, "time", tmp_path)
    write_results(tmp_path, [make_result(task="samsum")])
    with pytest.raises(UserError, match="no ok results for classification"):
        recommend("classification", 50, "time", tmp_path)


# ---- from measured results --------------------------------------------------------------------------------


def _measured(tmp_path, scale="low"):
    """LoRA measured faster than full tuning: the opposite of the paper's low-resource finding."""
    runs = [
        make_result(
            method="lora",
            task="cola",
            scale=scale,
            seed=s,
            score=0.80 + 0.01 * s,
            total_s=738.0,
            peak_bytes=3 * 2**30,
        )
        for s in range(3)
    ]
    runs += [
        make_result(method="full", task="cola", scale=scale, score=0.70, total_s=1200.0, peak_bytes=8 * 2**30)
    ]
    runs += [
        make_result(method="ia3", task="cola", scale=scale, score=0.75, total_s=900.0, peak_bytes=3 * 2**30)
    ]
    runs += [make_result(method="bitfit", task="cola", scale=scale, status="failed")]
    runs += [make_result(method="bitfit", task="samsum", scale=scale, total_s=1.0)]  # generation: ignored
    return write_results(tmp_path, runs)


def test_results_change_the_answer_and_cite_the_numbers(tmp_path):
    results = _measured(tmp_path)
    assert _ranked(recommend("classification", 50, "time"))[0] == "full"
    measured = recommend("classification", 50, "time", results)
    assert _ranked(measured) == ["lora", "ia3", "full"]  # failed BitFit and generation runs do not count
    assert measured[0].reason.startswith(
        "Mean training time to the best epoch 12.3 min. lora: 0.81 accuracy on cola (low, 3 seeds), 12.3 min."
    )
    assert "would put Full Tuning first" in measured[0].reason  # full tuning ran seed 0 only: nothing decided
    assert ("these measurements do not decide the order (paired by seed: undecided on cola (difference -7.7 "
            "[-inf, +inf], paired t p n/a, 1 seed; one seed: no interval over seeds; seed 1, 2 only in lora))."
            ) in measured[0].reason
    assert measured[0].evidence["source"] == "results" and len(measured[0].evidence["runs"]) == 3


def test_the_order_against_the_papers_first_choice_is_decided_by_seed_and_task(tmp_path):
    # LoRA 10 min to its best epoch, full tuning 20; LoRA's seeds 7 s apart more than full tuning's
    runs = [make_result(method=m, task=t, scale="low", seed=s, score=0.5, total_s=base + (17 if m == "lora" else 10) * s)
            for m, base in (("lora", 600.0), ("full", 1200.0)) for t in ("cola", "ag_news") for s in range(3)]
    measured = recommend("classification", 50, "time", write_results(tmp_path, runs))
    assert _ranked(measured) == ["lora", "full"]
    assert measured[0].reason.endswith(
        "would put Full Tuning first for low-resource data; these measurements say otherwise (paired by seed: "
        "ahead on ag_news (difference -9.9 [-10.2, -9.6], paired t p 0.000 (Holm 0.000), 3 seeds); "
        "ahead on cola (difference -9.9 [-10.2, -9.6], paired t p 0.000 (Holm 0.000), 3 seeds)).")


def test_a_method_measured_on_fewer_tasks_ranks_after_and_each_score_names_its_metric(tmp_path):
    runs = [make_result(method="full", task="ag_news", scale="low", seed=s, score=0.9) for s in range(3)]
    runs += [make_result(method="lora", task=t, scale="low", seed=s, score=0.6) for t in ("ag_news", "cola")
             for s in range(3)]
    for run in runs:
        if run["task"]["name"] == "cola":
            run["task"]["headline_metric"] = "mcc"
    measured = recommend("classification", 50, "performance", write_results(tmp_path, runs))
    assert _ranked(measured) == ["lora", "full"]  # full tuning's 0.9 is over AG News alone
    assert "0.60 accuracy on ag_news (low, 3 seeds)" in measured[0].reason
    assert "0.60 mcc on cola (low, 3 seeds)" in measured[0].reason
    assert measured[1].reason.startswith("Mean accuracy 0.9000.") and "on 1 of the 2" in measured[1].reason


def test_results_rank_memory_by_peak_then_trainable_parameters(tmp_path):
    measured = recommend("classification", 50, "memory", _measured(tmp_path))
    assert _ranked(measured) == [
        "ia3",
        "lora",
        "full",
    ]  # ia3 and lora tie on peak memory: fewer parameters win
    assert "peak 3.00 GiB, 933,888 trainable params" in measured[0].reason
    assert "Against LoRA: these measurements do not decide the order (paired by seed: undecided on cola" in (
        measured[0].reason)  # the paper's first choice at low scale is first: the runner-up is compared


def test_results_rank_performance_by_score(tmp_path):
    measured = recommend("classification", 5000, "performance", _measured(tmp_path))
    assert _ranked(measured) == ["lora", "ia3", "full"]
    assert "Mean accuracy 0.8100" in measured[0].reason


@pytest.mark.parametrize(
    ("examples", "scale"), [(50, "low"), (300, "low"), (400, "medium"), (50000, "medium")]
)
def test_results_use_the_closest_measured_scale(tmp_path, examples, scale):
    runs = [
        make_result(method="lora", task="cola", scale="low"),
        make_result(method="lora", task="cola", scale="medium"),
    ]
    measured = recommend("classification", examples, "time", write_results(tmp_path, runs))
    assert measured[0].evidence["scale"] == scale
    assert f"on cola ({scale}, 1 seed)" in measured[0].reason


def test_format_lists_ranks_reasons_and_exclusions():
    text = format_recommendations(recommend("generation", 500, "memory"))
    assert text.splitlines()[0] == (
        "memory-constrained generation with 500 examples (medium-resource), based on Pu et al. (2023) §3.2:"
    )
    assert "\n1. (IA)3 (ia3)\n" in text and "\nexcluded: Prompt Tune (prompt)\n" in text


def test_recommend_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "recommend",
            "--task-type",
            "classification",
            "--examples",
            "50",
            "--constraint",
            "time",
            "--results",
            str(_measured(tmp_path)),
        ]
    )
    assert args.func(args) == 0
    assert "1. LoRA (lora)" in capsys.readouterr().out


def _multi_scale(tmp_path):
    """Full tuning and LoRA on AG News at five sizes, three seeds, one epoch cap: full decidedly ahead up to
    50 examples, LoRA from 200 (test_datasize's set)."""
    from test_datasize import _multi_scale as runs

    return write_results(tmp_path, runs())


@pytest.mark.parametrize(("examples", "first", "verdict"), [
    (40, "full", "at 40 examples Full Tuning is ahead"), (120, None, "at 120 examples no method is decidedly ahead"),
    (300, "lora", "at 300 examples LoRA is ahead")])
def test_results_over_several_sizes_use_the_measured_crossover(tmp_path, examples, first, verdict):
    measured = recommend("classification", examples, "performance", _multi_scale(tmp_path))
    threshold = measured[0].evidence["threshold"]
    assert threshold["source"] == "measured crossover"
    assert threshold["crossovers"] == [{"model": "flan-t5-xl", "task": "ag_news", "method": "lora", "epochs": 5,
                                        "full_leads_at": [25, 50], "peft_leads_at": [200, 400]}]
    assert threshold["ahead"] == first and verdict in threshold["text"]
    if first is not None:
        assert _ranked(measured)[0] == first and "First by the measured crossover" in measured[0].reason
    text = format_recommendations(measured)
    assert ("Data-size threshold: the measured crossover (flan-t5-xl on ag_news, full tuning vs lora (5 epochs "
            "max): LoRA overtakes full tuning between 50 and 200 examples)") in " ".join(text.split())
    assert "Used instead of the paper's fixed data-size thresholds" in " ".join(text.split())


def test_results_at_named_scales_say_they_use_the_papers_thresholds(tmp_path):
    runs = [make_result(method=m, task="cola", scale="low", seed=s) for m in ("full", "lora") for s in (0, 1)]
    measured = recommend("classification", 50, "performance", write_results(tmp_path, runs))
    assert measured[0].evidence["threshold"]["source"] == "paper"
    assert "no measured crossover for classification tasks" in format_recommendations(measured)
