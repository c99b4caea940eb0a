"""Safety: no pickles, no code the config did not ask for, no escape from the results directory, no secret in
what peftbench writes, and a damaged result file is reported and re-run, never trusted."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from report_fixtures import make_result, write_results
from result_helpers import fake_ok_result
from transformers import AutoModelForSeq2SeqLM

from peftbench.catalog.models import load_model, tiny_t5_config
from peftbench.cli import main
from peftbench.config import RunConfig, SweepConfig, TrainConfig, load_sweep
from peftbench.errors import UserError
from peftbench.recipe import train
from peftbench.running.redaction import redact, secret_values
from peftbench.running.results import read_result, result_path
from peftbench.running.sweep import run_sweep

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[1] / "src" / "peftbench"
TINY_RUN = ["run", "methods=[lora]", "tasks=[synthetic_classification]", "scales=[8]"]


class TouchOnLoad:
    """Unpickling this creates ``marker``: a stand-in for code hidden in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


IN_PROCESS = "isolate_runs=false"  # the runs stay in this process, where training is replaced


def fake_run_cell(run, run_dir, **_options) -> dict:
    """Training replaced by a constant result (these tests are about what is written, not learned)."""
    fake_run_cell.calls += 1
    return fake_ok_result(run)


@pytest.fixture
def fake_training(monkeypatch):
    fake_run_cell.calls = 0
    monkeypatch.setattr(train, "run_cell", fake_run_cell)
    return fake_run_cell


def saved_tiny_t5(directory: Path) -> Path:
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(tiny_t5_config()).save_pretrained(directory)
    return directory


# --- weights from safetensors only ---------------------------------------------------------------------

def test_a_model_directory_with_only_pickle_weights_is_refused_unread(tmp_path, capsys):
    model_dir = saved_tiny_t5(tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(TouchOnLoad(marker)))
    capsys.readouterr()

    code = main([*TINY_RUN, f"models=[{model_dir}]", f"output_dir={tmp_path / 'out'}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line == (f"peftbench: error: model directory {model_dir} has only pickle weights (pytorch_model.bin), "
                    f"which peftbench never loads (unpickling can run code); convert them to safetensors in a "
                    f"trusted environment: model.save_pretrained(dir, safe_serialization=True)")
    with pytest.raises(UserError, match="only pickle weights"):
        load_model(str(model_dir))
    assert not marker.exists()


def test_no_code_path_unpickles_or_loads_yaml_unsafely():
    """Every torch.load passes weights_only=True; no pickle module, no unsafe YAML loader, no eval/exec."""
    unsafe = re.compile(r"^\s*(import|from) pickle\b|pickle\.loads?\(|\byaml\.(load|unsafe_load|full_load)\(|"
                        r"Loader=|(?<![.\w])eval\(|(?<![.\w])exec\(|torch\.load\((?![^)]*weights_only=True)")
    for bad in ("torch.load(path)", "torch.load(p, map_location='cpu')", "import pickle", "yaml.load(text)",
                "yaml.load(text, Loader=yaml.Loader)", "eval(expr)"):
        assert unsafe.search(bad), bad
    for fine in ("torch.load(p, map_location='cpu', weights_only=True)", "yaml.safe_load(text)", "model.eval()"):
        assert not unsafe.search(fine), fine
    found = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
             for path in sorted(SRC.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if unsafe.search(line) and not line.lstrip().startswith("#")]
    assert found == []


# --- trust_remote_code -----------------------------------------------------------------------------------

def test_trust_remote_code_is_off_unless_the_config_turns_it_on(tmp_path):
    assert SweepConfig().trust_remote_code is False
    assert RunConfig("m", "lora", "t", "low").trust_remote_code is False
    assert all(run.trust_remote_code is False for run in load_sweep(None, []).expand())
    for suite in sorted((SRC / "suites").glob("*.yaml")):
        assert all(run.trust_remote_code is False for run in load_sweep(suite, []).expand()), suite.name
    assert all(run.to_dict()["trust_remote_code"] is True  # recorded in each run's config, hence its result
               for run in load_sweep(None, ["trust_remote_code=true"]).expand())


def model_with_own_code(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A safetensors model whose config.json names code of its own that would create a marker file."""
    model_dir = saved_tiny_t5(tmp_path / "model")
    marker = tmp_path / "remote_code_ran"
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "own_code.OwnConfig",
                                                   "AutoModelForSeq2SeqLM": "own_code.OwnModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "own_code.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return model_dir, marker


def test_code_shipped_with_an_unknown_model_type_is_refused_without_trust(tmp_path, capsys):
    model_dir, marker = model_with_own_code(tmp_path, "own_arch")
    capsys.readouterr()
    code = main([*TINY_RUN, f"models=[{model_dir}]", f"output_dir={tmp_path / 'out'}"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert line == (f"peftbench: error: model {model_dir}: {model_dir / 'config.json'} needs its own code "
                    f"(auto_map, model_type 'own_arch'), which peftbench runs only with trust_remote_code: true")
    with pytest.raises(UserError, match="cannot load model"):
        load_model(str(model_dir))
    assert not marker.exists()


@pytest.mark.slow  # child processes: over 10 s
def test_code_shipped_with_a_known_model_type_is_not_run_and_a_note_says_so(tmp_path, fake_training, capsys):
    model_dir, marker = model_with_own_code(tmp_path, "t5")
    capsys.readouterr()
    assert main([*TINY_RUN, f"models=[{model_dir}]", f"output_dir={tmp_path / 'out'}", "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"peftbench: note: model {model_dir}: the code named by auto_map in "
                      f"{model_dir / 'config.json'} is not run (trust_remote_code is off); the built-in t5 class "
                      f"is used")
    loaded = load_model(str(model_dir))  # what the run would load: transformers' own T5
    assert type(loaded.model).__module__.startswith("transformers.models.t5")
    assert not marker.exists()


# --- YAML ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["sweep", "task"])
def test_yaml_is_read_with_a_safe_loader(tmp_path, capsys, where):
    marker = tmp_path / "yaml_code_ran"
    payload = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path [{str(marker)!r}]]"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: {payload}\n" if where == "sweep" else f"name: x\nversion: {payload}\n")
    argv = ["run", str(path)] if where == "sweep" else [*TINY_RUN[:1], f"tasks=[{path}]"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "evil.yaml" in line and "not valid YAML" in line and "python/object/apply" in line
    assert not marker.exists()


# --- run ids and paths ---------------------------------------------------------------------------------

NASTY = ["../../escape", "/etc/passwd", "..", "a/../../b", "..\\..\\c", "x\x00y", "~root", " ", "."]


def test_run_ids_are_one_safe_path_component():
    for nasty in NASTY:
        run = RunConfig(model=nasty, method=nasty, task=nasty, scale=nasty, ablation=nasty)
        run_id = run.run_id()
        assert re.fullmatch(r"[A-Za-z0-9._-]+", run_id), run_id
        assert not run_id.startswith(".") and "/" not in run_id and ".." not in run_id.split("-")


def test_a_path_traversal_run_name_stays_in_the_results_directory(tmp_path, monkeypatch, fake_training):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    sweep = SweepConfig(name="../../../escaped", models=["../../m"], methods=["../x"], tasks=["/etc/passwd"],
                        scales=["../../s"], ablations=[None], isolate_runs=False, train=TrainConfig())
    assert sweep.results_dir == Path("results") / "escaped"
    outcome = run_sweep(sweep, progress=False)
    assert len(outcome.ran) == 1 and fake_training.calls == 1
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to((work / "results" / "escaped").resolve()) for p in written)


# --- secrets ---------------------------------------------------------------------------------------------

SECRETS = {"HF_TOKEN": "hf_aBcDeFgHiJkLmNoPqRsT", "OPENAI_API_KEY": "sk-test-1234567890abcdef",
           "MY_SERVICE_SECRET": "s3cr3t-value-42", "GITHUB_TOKEN": "ghp_0123456789abcdefABCDEF"}


def test_secret_values_are_found_by_variable_name():
    env = {**SECRETS, "SHORT_TOKEN": "1234", "TOKENIZERS_PARALLELISM": "false-but-long-enough",
           "PATH": "/usr/bin:/bin", "HOME": "/root"}
    assert set(secret_values(env).values()) == set(SECRETS)
    secrets = secret_values(env)
    assert redact({"a": [f"x {SECRETS['HF_TOKEN']} y", 3.5, None], "b": ("1234",)}, secrets) == {
        "a": ["x [redacted $HF_TOKEN] y", 3.5, None], "b": ("1234",)}


def test_secrets_never_reach_result_files_or_messages(tmp_path, monkeypatch, capsys):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    def leaky_run_cell(run, run_dir, **_options):
        raise ConnectionError(f"GET https://hub.example/api?token={SECRETS['HF_TOKEN']} failed "
                              f"(Authorization: Bearer {SECRETS['OPENAI_API_KEY']})")

    monkeypatch.setattr(train, "run_cell", leaky_run_cell)
    data_dir = tmp_path / SECRETS["MY_SERVICE_SECRET"]
    out = tmp_path / "out"
    assert main([*TINY_RUN, "models=[t5-tiny-random]", f"data_dir={data_dir}", f"output_dir={out}", IN_PROCESS,
                 "-q"]) == 1
    assert main([*TINY_RUN[:1], "models=[t5-tiny-random]", "tasks=[cola]", f"data_dir={data_dir}",
                 f"output_dir={out}"]) == 2  # an error message naming the secret path
    captured = capsys.readouterr()

    (result_file,) = out.glob("*/result.json")
    result = read_result(result_file)
    assert result["status"] == "failed" and "[redacted $HF_TOKEN]" in result["error"]["message"]
    assert result["config"]["data_dir"] == str(tmp_path / "[redacted $MY_SERVICE_SECRET]")
    assert "[redacted $MY_SERVICE_SECRET]" in captured.err
    assert (f"peftbench: failed: {result_file.parent.name}: ConnectionError: GET https://hub.example/api?"
            f"token=[redacted $HF_TOKEN] failed (Authorization: Bearer [redacted $OPENAI_API_KEY])") in captured.err
    texts = [captured.out, captured.err] + [p.read_text() for p in out.rglob("*") if p.is_file()]
    for value in SECRETS.values():
        assert not any(value in text for text in texts)


# --- damaged result files ------------------------------------------------------------------------------

def test_report_reports_and_skips_a_truncated_result(tmp_path, capsys):
    results_dir = write_results(tmp_path / "results", [make_result(method=m) for m in ("lora", "ia3", "full")])
    damaged = result_path(results_dir, make_result(method="ia3")["run_id"])
    damaged.write_bytes(damaged.read_bytes()[:100])  # cut short, as by a full disk
    assert main(["report", str(results_dir), "--out", str(tmp_path / "report")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"peftbench: warning: skipping corrupt result: {damaged}: cannot be read as JSON")
    assert (tmp_path / "report" / "index.html").is_file()


def test_run_reports_and_reruns_a_truncated_result(tmp_path, fake_training, capsys):
    argv = [*TINY_RUN, "models=[t5-tiny-random]", f"output_dir={tmp_path / 'out'}", IN_PROCESS, "-q"]
    assert main(argv) == 0
    (result_file,) = (tmp_path / "out").glob("*/result.json")
    result_file.write_text(result_file.read_text()[:40])
    capsys.readouterr()

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert fake_training.calls == 2  # ran again, not skipped
    assert read_result(result_file)["status"] == "ok"
    # The broken file is set aside, not lost, and the run runs again.
    (kept,) = result_file.parent.glob("result.json.corrupt-*")
    assert len(kept.read_text()) == 40  # the truncated bytes, as they were
    assert f"peftbench: warning: {result_file.parent.name}: corrupt result kept as {kept}; the run runs again" in err
