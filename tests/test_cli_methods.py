"""Every PEFT method name the CLI accepts either trains on the tiny models or is refused before training
with one line and exit status 2, never a traceback or a failed run; and the commands issue 19 fixed."""

from __future__ import annotations

import json
import sys

import peft
import pytest
from sweep_helpers import tiny_overrides

from peftbench.cli import main
from peftbench.running.progress import PlainProgress, progress_bar, sweep_title
from peftbench.running.results import iter_results

pytestmark = pytest.mark.integration

PEFT_NAMES = sorted(t.value.lower() for t in peft.PeftType)


@pytest.mark.parametrize("model", ["t5-tiny-random", "llama-tiny-random"])
@pytest.mark.parametrize("method", PEFT_NAMES)
def test_every_peft_method_trains_or_is_refused_in_one_line(model, method, tmp_path, capsys):
    # In this process (isolate_runs=false): the test is about methods, not worker processes (test_isolation.py),
    # and 88 worker starts would cost minutes.
    overrides = tiny_overrides(tmp_path / "out", models=(model,), methods=(method,), epochs=1,
                               extra=("train.val_metric_examples=0", "isolate_runs=false"))
    status = main(["run", "-q", *overrides])
    err = capsys.readouterr().err
    if status == 2:
        ours = [line for line in err.splitlines() if line.startswith("peftbench: ")]  # PEFT may draw a bar
        assert len(ours) == 1 and ours[0].startswith("peftbench: error: ") and "Traceback" not in err, err
        assert not list(iter_results(tmp_path / "out", warn=False)), "refused means before any run"
        return
    assert status == 0, err
    (result,) = iter_results(tmp_path / "out")
    assert result["status"] == "ok" and result["params"]["trainable"] > 0


def test_prompt_learning_methods_default_to_the_papers_100_virtual_tokens(tmp_path, capsys):
    assert main(["params", "t5-tiny-random", "--method", "prefix_tuning", "--method", "p_tuning", "--json"]) == 0
    rows = {row["method"]: row["trainable"] for row in json.loads(capsys.readouterr().out)["rows"]}
    # prefix tuning: 100 tokens × a key and a value × PEFT's num_layers (the config's 2) × d_model 32
    assert rows["prefix_tuning"] == 100 * 2 * 2 * 32
    # p-tuning: 100 token embeddings for the encoder and 100 for the decoder (PEFT's default on seq2seq)
    # and its MLP prompt encoder (three 32 × 32 linears with biases)
    assert rows["p_tuning"] == 2 * 100 * 32 + 3 * (32 * 32 + 32)


def test_adalora_reallocates_its_budget_after_every_optimiser_step(tmp_path, monkeypatch):
    calls = []
    original = peft.tuners.adalora.AdaLoraModel.update_and_allocate
    monkeypatch.setattr(peft.tuners.adalora.AdaLoraModel, "update_and_allocate",
                        lambda self, step: (calls.append(step), original(self, step))[1])
    # In this process: the patched hook must be the one the run calls.
    assert main(["run", "-q", *tiny_overrides(tmp_path, methods=("adalora",), epochs=2,
                                              extra=("isolate_runs=false",))]) == 0
    (result,) = iter_results(tmp_path)
    assert calls == list(range(result["optimizer"]["steps_done"])) == [0, 1, 2, 3]  # 8 examples / 4, 2 epochs


def test_params_with_one_method_skips_the_ablations_it_does_not_take(capsys):
    assert main(["params", "flan-t5-xl", "--method", "lora"]) == 0
    out = capsys.readouterr().out
    assert "LoRA (drop enc/dec-attention)" in out and " 2,359,296 " in out
    assert "Skipped LoRA (drop attention): not among the paper's lora ablations" in out


def test_an_encoder_only_model_on_a_generation_task_is_refused_before_training(tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    capsys.readouterr()  # save_pretrained's progress bar
    overrides = tiny_overrides(tmp_path / "out", models=(str(tmp_path / "bert"),),
                               extra=("tasks=[synthetic_data_to_text]",))
    assert main(["run", "-q", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bert is an encoder-only classifier; it cannot generate text" in err


@pytest.mark.slow  # child processes: over 10 s
def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capfd):
    # capfd: the epochs are reported by the run's worker process, on the stderr it inherits.
    assert main(["run", *tiny_overrides(tmp_path, methods=("lora",), epochs=2)]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    epochs = [line for line in err.splitlines() if line.startswith("lora/synthetic_classification: epoch")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"] and "val_loss=" in epochs[-1]
    assert "sweep: run 1/1 last=lora/synthetic_classification ok" in err and "sweep sweep" not in err
    assert main(["run", "-q", *tiny_overrides(tmp_path / "q", methods=("lora",), epochs=1)]) == 0
    assert "epoch" not in capfd.readouterr().err


def test_progress_bar_kinds():
    assert isinstance(progress_bar(3, "x", "run", stream=sys.stderr), PlainProgress)  # pytest captures stderr
    assert sweep_title("sweep") == "sweep" and sweep_title("quickstart") == "sweep quickstart"


def test_dry_run_lists_the_grid_what_is_done_and_an_estimate(tmp_path, capsys):
    done = tiny_overrides(tmp_path, methods=("lora",), epochs=1)
    assert main(["run", "-q", *done]) == 0
    capsys.readouterr()
    grid = tiny_overrides(tmp_path, methods=("lora", "bitfit"), epochs=1,
                          extra=("tasks=[synthetic_classification,synthetic_data_to_text]",))
    assert main(["run", "--dry-run", *grid]) == 0
    out = capsys.readouterr().out
    (earlier,) = iter_results(tmp_path)
    lines = out.splitlines()
    assert sum("done (ok)" in line for line in lines) == 1
    assert any(line.startswith("t5_tiny_random-lora-synthetic_data_to_text") and "(same method, 1 run(s))" in line
               for line in lines)
    assert sum("(no earlier run)" in line for line in lines) == 2  # bitfit has no earlier result
    assert lines[-1].startswith("4 run(s) in the grid, 1 done, 3 to run; estimated ")
    assert len(list(iter_results(tmp_path))) == 1 and earlier["status"] == "ok"  # nothing ran
