"""Bad input ends with one line on stderr naming the problem and where it is, exit status 2, and no training.

Every case goes through ``peftbench.cli.main`` exactly as a user's command line would. Cases that need a task
use a user task YAML with ``data_files`` in tmp_path, or ``data_dir=`` pointing at a tmp copy of a few lines
of a real task's data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from task_helpers import tiny_task_yaml

from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import load_task_data
from peftbench.cli import main
from peftbench.config import load_sweep
from peftbench.recipe.preflight import check_sweep

pytestmark = pytest.mark.integration

TASK_YAML = tiny_task_yaml()
GOOD_ROWS = [{"text": f"example number {i}", "label": i % 2} for i in range(8)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def user_task(tmp_path: Path, yaml_text: str = TASK_YAML, **split_text: str) -> Path:
    """A user task: the YAML plus three good JSONL files; ``split_text`` replaces a split's file text."""
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", GOOD_ROWS)
        if split in split_text:
            (tmp_path / f"{split}.jsonl").write_text(split_text[split], encoding="utf-8")
    path = tmp_path / "task.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


def run_args(tmp_path: Path, *extra: str, task: str = "synthetic_classification") -> list[str]:
    """A tiny one-cell sweep that would train if the input were good."""
    return ["run", "models=[t5-tiny-random]", "methods=[lora]", f"tasks=[{task}]", "scales=[8]",
            f"output_dir={tmp_path / 'out'}", *extra]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def cola_copy(tmp_path: Path, bad_validation_line: str | None = None) -> Path:
    """data_dir with the first 6 lines of each real CoLA file; optionally validation line 3 replaced."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cola"
    if not shared.is_dir():
        pytest.skip(f"real task data not found at {shared}")
    (tmp_path / "data" / "cola").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        lines = (shared / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:6]
        if split == "validation" and bad_validation_line is not None:
            lines[2] = bad_validation_line
        write(tmp_path / "data" / "cola" / f"{split}.jsonl", "\n".join(lines) + "\n")
    return tmp_path / "data"


# Each case: tmp_path → (argv, substrings the one error line must contain: the problem and where it is).
Case = Callable[[Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {
    # --- command line and config files -------------------------------------------------------------
    "unknown command": lambda t: (["rnu"], ["invalid choice: 'rnu'", "did you mean 'run'"]),
    "unknown suite": lambda t: (["run", "quickstrat"], ["unknown suite 'quickstrat'", "did you mean 'quickstart'"]),
    "config file missing": lambda t: (["run", str(t / "nope.yaml")], ["config file not found", "nope.yaml"]),
    "override without =": lambda t: (run_args(t, "train.max_epochs"), ["'train.max_epochs'", "key=value"]),
    "malformed yaml": lambda t: (["run", str(write(t / "s.yaml", "name: x\nmodels: [a, b\nseeds: [0]\n"))],
                                 ["s.yaml:", "not valid YAML"]),
    "yaml top level a list": lambda t: (["run", str(write(t / "s.yaml", "- models\n- methods\n"))],
                                        ["s.yaml", "top level must be a mapping", "list"]),
    "unknown yaml key": lambda t: (["run", str(write(t / "s.yaml", "modles: [t5-tiny-random]\n"))],
                                   ["s.yaml", "unknown key 'modles'", "did you mean 'models'"]),
    "unknown nested yaml key": lambda t: (["run", str(write(t / "s.yaml", "train:\n  max_epoch: 2\n"))],
                                          ["s.yaml", "train", "unknown key 'max_epoch'", "did you mean 'max_epochs'"]),
    "unknown override key": lambda t: (run_args(t, "train.lr_peek=0.1"),
                                       ["command line", "unknown key 'lr_peek'", "did you mean 'lr_peak'"]),
    "wrong value type": lambda t: (run_args(t, "train.batch_size=big"), ["batch_size", "expected int", "'big'"]),
    "section not a mapping": lambda t: (run_args(t, "train=5"), ["command line: train", "expected a mapping, got int"]),
    "bad precision": lambda t: (run_args(t, "train.precision=bf61"), ["train.precision", "did you mean 'bf16'"]),
    "zero batch size": lambda t: (run_args(t, "train.batch_size=0"), ["train.batch_size must be at least 1", "0"]),
    "warm-up out of range": lambda t: (run_args(t, "train.warmup_fraction=1.5"), ["train.warmup_fraction", "1.5"]),
    "bad executor": lambda t: (run_args(t, "executor=rya"), ["executor", "'rya'", "did you mean 'ray'"]),
    "both singular and plural": lambda t: (
        ["run", str(write(t / "s.yaml", "model: t5-tiny-random\nmodels: [t5-tiny-random]\n"))],
        ["give either model or models"]),
    "negative scale": lambda t: (run_args(t, "scales=[-5]"), ["scales", "at least 1", "-5"]),
    # --- names: method, task, model, suite, ablation, scale, selection ---------------------------------
    "unknown method": lambda t: (run_args(t, "methods=[lroa]"), ["unknown method 'lroa'", "did you mean 'lora'"]),
    "unknown task": lambda t: (run_args(t, task="synthetic_clasification"),
                               ["unknown task 'synthetic_clasification'", "did you mean 'synthetic_classification'"]),
    "unknown model": lambda t: (run_args(t, "models=[t5-tiny-randon]"),
                                ["unknown model 't5-tiny-randon'", "did you mean 't5-tiny-random'"]),
    "unknown ablation": lambda t: (run_args(t, "ablations=[early_layer]"),
                                   ["unknown ablation 'early_layer'", "did you mean 'early_layers'"]),
    "unknown scale": lambda t: (run_args(t, "scales=[lowe]"), ["unknown scale 'lowe'", "did you mean 'low'"]),
    "unknown module role": lambda t: (run_args(t, "modules=[self_atention]"),
                                      ["unknown module role 'self_atention'", "did you mean 'self_attention'"]),
    "unknown layer selection": lambda t: (run_args(t, "layers=eraly"), ["layer selection 'eraly'", "'early'"]),
    "ablation and layers": lambda t: (run_args(t, "ablations=[early_layers]", "layers=later"),
                                      ["ablation early_layers already chooses layers"]),
    "selection on prompt tuning": lambda t: (run_args(t, "methods=[prompt]", "layers=early"),
                                             ["method prompt adapts no per-layer modules"]),
    "method_ablations for a method not run": lambda t: (
        run_args(t, "method_ablations={ia3: [early_layers]}"), ["method in method_ablations 'ia3'"]),
    "unknown method option": lambda t: (run_args(t, "method_options={lora: {rank: 2}}"),
                                        ["model t5-tiny-random, method lora", "method option 'rank'", "LoraConfig"]),
    "layer index out of range": lambda t: (run_args(t, "layers=[0, 5]"),
                                           ["model t5-tiny-random, method lora", "layers: [5] out of range"]),
    "hub model not available": lambda t: (run_args(t, "models=[peftbench-test/no-such-model]"),
                                          ["model 'peftbench-test/no-such-model'", "the Hugging Face Hub is unreachable"]),
    "model dir without config": lambda t: (run_args(t, f"models=[{(t / 'm').mkdir() or t / 'm'}]"),
                                           ["model directory", "has no config.json"]),
    # --- empty sweeps -----------------------------------------------------------------------------------
    "empty methods": lambda t: (run_args(t, "methods=[]"), ["methods is empty"]),
    "empty seeds": lambda t: (run_args(t, "seeds=[]"), ["seeds is empty"]),
    # --- task files -------------------------------------------------------------------------------------
    "task file missing": lambda t: (run_args(t, task=str(t / "none.yaml")), ["task file", "none.yaml"]),
    "task file unknown key": lambda t: (
        run_args(t, task=str(user_task(t, TASK_YAML + "label_word: {0: no}\n"))),
        ["task.yaml", "unknown key 'label_word'", "did you mean 'label_words'"]),
    "task file bad type": lambda t: (
        run_args(t, task=str(user_task(t, TASK_YAML.replace("type: classification", "type: regression")))),
        ["task.yaml", "type must be one of", "'regression'"]),
    "task file unknown split": lambda t: (
        run_args(t, task=str(user_task(t, TASK_YAML.replace("validation: validation.jsonl", "dev: dev.jsonl")))),
        ["task.yaml", "unknown split(s) ['dev']"]),
    "template field missing from data": lambda t: (
        run_args(t, task=str(user_task(t, TASK_YAML.replace("{text}", "{txt}")))),
        ["tiny_yes_no", "template uses field 'txt'"]),
    # --- data files -------------------------------------------------------------------------------------
    "data file missing": lambda t: (
        run_args(t, task=str(user_task(t, TASK_YAML.replace("test: test.jsonl", "test: gone.jsonl")))),
        ["data file not found", "gone.jsonl"]),
    "data file empty": lambda t: (run_args(t, task=str(user_task(t, train=""))), ["train.jsonl", "has no rows"]),
    "data file not JSONL": lambda t: (run_args(t, task=str(user_task(t, train="text,label\nhello,1\n"))),
                                      ["train.jsonl:1", "not a JSON object"]),
    "data line does not parse": lambda t: (
        run_args(t, task=str(user_task(t, validation='{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'
                                                     '{"text": "c", "lab\n'))),
        ["validation.jsonl:3", "not a JSON object"]),
    "data line not an object": lambda t: (run_args(t, task=str(user_task(t, test='{"text": "a", "label": 0}\n[1, 2]\n'))),
                                          ["test.jsonl:2", "expected a JSON object", "list"]),
    "data line lacks a field": lambda t: (
        run_args(t, task=str(user_task(t, train='{"text": "a", "label": 0}\n{"text": "b"}\n'))),
        ["train.jsonl:2", "missing field(s) label"]),
    "label outside the label set": lambda t: (
        run_args(t, task=str(user_task(t, train='{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n'
                                                '{"text": "c", "label": 1}\n{"text": "d", "label": 7}\n'))),
        ["train.jsonl:4", "label 7 is outside the label set"]),
    "data_dir missing": lambda t: (run_args(t, f"data_dir={t / 'nodata'}", task="cola"),
                                   ["task cola", "data file not found", "nodata/cola/train.jsonl"]),
    "real data, label outside the set": lambda t: (
        run_args(t, f"data_dir={cola_copy(t, json.dumps({'sentence': 'Fine.', 'label': 2}))}", task="cola"),
        ["cola/validation.jsonl:3", "label 2 is outside the label set"]),
    "real data, line does not parse": lambda t: (
        run_args(t, "data_dir=" + str(cola_copy(t, '{"sentence": "cut off')), task="cola"),
        ["cola/validation.jsonl:3", "not a JSON object"]),
    # --- results directories -----------------------------------------------------------------------------
    "output_dir is a file": lambda t: (run_args(t, f"output_dir={write(t / 'f', 'x')}"),
                                       ["output_dir", "exists and is not a directory"]),
    "output_dir under a file": lambda t: (run_args(t, f"output_dir={write(t / 'f', 'x') / 'sub'}"),
                                          ["output_dir", "a parent of it is a file"]),
    "report: missing directory": lambda t: (["report", str(t / "none")], ["results directory not found", "none"]),
    "report: a file": lambda t: (["report", str(write(t / "f", "x"))], ["results directory is a file", "f"]),
    "report: no results": lambda t: (["report", str(t)], ["no result files", str(t)]),
    "recommend: --results missing": lambda t: (
        ["recommend", "--task-type", "classification", "--examples", "50", "--constraint", "time",
         "--results", str(t / "none")], ["results directory not found"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    argv, expected = CASES[case](tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("peftbench: error: ")
    for text in expected:
        assert text in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not list(tmp_path.rglob("result.json"))  # nothing ran


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_the_good_user_task_passes_every_check(tmp_path):
    """The cases above break one thing each in an otherwise valid sweep: the valid one passes."""
    sweep = load_sweep(None, run_args(tmp_path, task=str(user_task(tmp_path)))[1:])
    assert check_sweep(sweep) == []
    assert (tmp_path / "out").is_dir()


def test_a_scale_larger_than_the_data_is_said_and_recorded(tmp_path, capsys):
    """Not an error: the scale is an upper bound; the note goes to stderr and into the result's data."""
    task_path = str(user_task(tmp_path))
    sweep = load_sweep(None, run_args(tmp_path, task=task_path)[1:])
    sweep.scales = [20, 4]
    notes = check_sweep(sweep)
    assert notes == ["task tiny_yes_no: scale 20 asks for 20 training examples but the data has 8; all 8 are used "
                     "(recorded as data.note in each result)"]
    data = load_task_data(get_task(task_path), None, 20, seed=0)
    assert len(data.train) == 8
    assert data.info["requested_train_examples"] == 20
    assert data.info["note"] == "scale 20 asks for 20 training examples; the data has 8, all used"
    assert "note" not in load_task_data(get_task(task_path), None, 4, seed=0).info


def test_a_scale_larger_than_the_data_goes_on(tmp_path, capsys, monkeypatch):
    """The CLI says so in one note line and carries on to the sweep (stopped here before any training)."""
    import peftbench.running.sweep

    def no_training(sweep, progress=True):
        raise KeyboardInterrupt  # the sweep was reached: preflight let the note through

    monkeypatch.setattr(peftbench.running.sweep, "run_sweep", no_training)
    code = main(run_args(tmp_path, "scales=[20]", task=str(user_task(tmp_path))))
    err = capsys.readouterr().err.splitlines()
    assert code == 130
    assert err[0] == ("peftbench: note: task tiny_yes_no: scale 20 asks for 20 training examples but the data "
                      "has 8; all 8 are used (recorded as data.note in each result)")
