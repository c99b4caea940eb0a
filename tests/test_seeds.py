"""Seed statistics: mean, sample sd and the 95% Student t interval, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from peftbench.analysis.stats import mean_ci
from peftbench.analysis.stats import t_quantile_975 as t95
from peftbench.config import load_sweep
from peftbench.running import results
from peftbench.running.summary import results_table

pytestmark = pytest.mark.unit


def test_mean_ci_of_three_seeds():
    # mean 0.72; squared deviations 0.0004 + 0 + 0.0004 over n - 1 = 2 → sd 0.02;
    # half-width t(0.975, 2) · sd / √3 = 4.3027 × 0.02 / 1.7320508 = 0.0496833
    mean, sd, half = mean_ci([0.70, 0.72, 0.74])
    assert mean == pytest.approx(0.72, abs=1e-12)
    assert sd == pytest.approx(0.02, abs=1e-12)
    assert half == pytest.approx(0.0496833, abs=1e-6)


def test_mean_ci_of_four_and_two_seeds():
    # 0.6..0.9: squared deviations 0.0225 + 0.0025 + 0.0025 + 0.0225 = 0.05, / 3 → sd 0.1290994;
    # half-width 3.1824 × 0.1290994 / 2 = 0.2054230
    assert mean_ci([0.6, 0.7, 0.8, 0.9]) == pytest.approx((0.75, 0.1290994, 0.2054230), abs=1e-6)
    # two seeds 1 and 3: sd √2, half-width 12.7062 × √2 / √2 = 12.7062
    assert mean_ci([1.0, 3.0]) == pytest.approx((2.0, 1.4142136, 12.7062), abs=1e-4)


def test_one_seed_has_no_spread_and_t_beyond_the_table_is_close_to_students():
    mean, sd, half = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(sd) and math.isnan(half)  # one seed: no spread to estimate
    assert t95(30) == pytest.approx(2.0423, abs=1e-4)
    assert t95(40) == pytest.approx(2.021, abs=0.003)  # Student's t(0.975, 40) = 2.0211


def _write(results_dir, run, score: float | None, status: str = "ok") -> None:
    payload = {"run_id": run.run_id(), "status": status, "config": run.to_dict(), "seed": run.seed}
    if status == "ok":
        payload.update(metrics={"score": score}, task={"metric": "accuracy"}, params={"trainable": 1234},
                       epochs=run.seed + 1, time={"total_s": 10.0 * (run.seed + 1)})
    results.atomic_write_json(results.result_path(results_dir, run.run_id()), payload)


def test_table_shows_mean_sd_and_ci_per_cell(tmp_path):
    sweep = load_sweep(None, ["models=[t5-tiny-random]", "methods=[lora,bitfit]", "tasks=[cola]",
                              "scales=[low]", "seeds=[0,1,2]", f"output_dir={tmp_path}"])
    runs = sweep.expand()
    scores = {"lora": [0.70, 0.72, 0.74], "bitfit": [0.6, 0.8, None]}
    for run in runs:
        score = scores[run.method][run.seed]
        _write(tmp_path, run, score, "ok" if score is not None else "failed")
    lines = results_table(runs, tmp_path).splitlines()
    assert lines[0].split() == ["model", "task", "scale", "method", "ablation", "seeds", "metric", "score",
                                "(mean", "±", "sd)", "95%", "CI", "trainable", "epochs", "time_s", "load_s",
                                "peak_MiB"]
    lora = next(line for line in lines if " lora " in line)
    assert "3/3" in lora and "0.7200 ± 0.0200" in lora and "[0.6703, 0.7697]" in lora
    # mean epochs (1, 2, 3) and mean seconds; no load time or peak memory in these results
    assert lora.split()[-5:] == ["1,234", "2", "20.0", "-", "-"]
    bitfit = next(line for line in lines if " bitfit " in line)
    # two ok seeds of three: 0.7 ± 0.1414214, half-width 12.706 × 0.1414214 / √2 = 1.2706
    assert "2/3" in bitfit and "0.7000 ± 0.1414" in bitfit and "[-0.5706, 1.9706]" in bitfit


def test_table_of_one_seed_shows_the_score_alone(tmp_path):
    sweep = load_sweep(None, ["models=[t5-tiny-random]", "methods=[lora]", "tasks=[cola]", "scales=[low]",
                              f"output_dir={tmp_path}"])
    (run,) = sweep.expand()
    _write(tmp_path, run, 0.8125)
    header, _, row = results_table([run], tmp_path).splitlines()
    assert "95% CI" not in header and "±" not in row
    assert row.split()[4:7] == ["1/1", "accuracy", "0.8125"]  # (the ablation column is empty)


def test_table_adds_the_mean_rank_accuracy_when_a_run_reports_one(tmp_path):
    sweep = load_sweep(None, ["models=[t5-tiny-random]", "methods=[lora,bitfit]", "tasks=[cola]",
                              "scales=[low]", "seeds=[0,1]", f"output_dir={tmp_path}"])
    for run in sweep.expand():
        _write(tmp_path, run, 0.5)
        if run.method == "lora":  # train.rank_classification=true: ranked label words beside exact match
            payload = results.read_result(results.result_path(tmp_path, run.run_id()))
            payload["metrics"]["test"] = {"accuracy": 0.5, "rank_accuracy": [0.6, 0.7][run.seed]}
            results.atomic_write_json(results.result_path(tmp_path, run.run_id()), payload)
    lines = results_table(sweep.expand(), tmp_path).splitlines()
    assert lines[0].split()[7:14] == ["score", "(mean", "±", "sd)", "95%", "CI", "rank"]
    lora = next(line for line in lines if " lora " in line).split()
    bitfit = next(line for line in lines if " bitfit " in line).split()
    assert lora[-6:-2] == ["0.6500", "1,234", "1.5", "15.0"]  # (then load_s and peak_MiB: none recorded)
    assert bitfit[-6:-2] == ["-", "1,234", "1.5", "15.0"]
