"""The command line keeps every command: one whose module fails to import says which import failed."""

from __future__ import annotations

import pytest

from peftbench import cli

pytestmark = pytest.mark.unit


def test_a_command_whose_module_fails_to_import_names_the_failed_import(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMAND_MODULES, "peftbench.no_such_module", ("ghost",))
    assert cli.main(["ghost", "anything", "--flag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("peftbench: error: `peftbench ghost` is unavailable: importing peftbench.no_such_module failed: "
                   "No module named 'peftbench.no_such_module' (reinstall peftbench: pip install -e .)")


def test_every_command_module_imports_and_adds_its_commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for module, commands in cli.COMMAND_MODULES.items():
        for command in commands:
            assert command in sub.choices, f"{module} did not add {command}"
            assert "unavailable" not in (sub.choices[command].description or ""), command
    assert all(not (h.help or "").startswith("unavailable") for h in sub._choices_actions)


def test_a_flag_may_stand_among_the_overrides_of_a_command_that_takes_them():
    args = cli.parse_arguments(["run", "findings-smollm2", "seeds=[0]", "--dry-run", "tasks=[cola]", "-q"])
    assert (args.config, args.overrides, args.dry_run, args.quiet) == (
        "findings-smollm2", ["seeds=[0]", "tasks=[cola]"], True, True)
    args = cli.parse_arguments(["run", "--dry-run", "tasks=[cola]", "seeds=[0]"])
    assert (args.config, args.overrides) == ("tasks=[cola]", ["seeds=[0]"])  # cmd_run reads it as an override


def test_an_unknown_flag_is_still_a_one_line_error():
    with pytest.raises(cli.UserError, match=r"unrecognized arguments: --dry-rn tasks=\[cola\]"):
        cli.parse_arguments(["run", "quickstart", "--dry-rn", "tasks=[cola]"])
    with pytest.raises(cli.UserError, match="unrecognized arguments: extra"):
        cli.parse_arguments(["list", "methods", "extra"])


@pytest.mark.slow  # child processes: over 10 s
def test_importing_peftbench_leaves_the_environment_and_the_command_caps_openmp_spinning():
    import json
    import os
    import subprocess
    import sys

    code = ("import json, os, peftbench, peftbench.cli; before = os.environ.get('GOMP_SPINCOUNT'); "
            "peftbench.cli.main(['list', 'suites']); print(json.dumps([before, os.environ.get('GOMP_SPINCOUNT')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()[-1]
    assert json.loads(out) == [None, "10000"]
    env["GOMP_SPINCOUNT"] = "5"  # a user's own setting is left alone
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()[-1]
    assert json.loads(out) == ["5", "5"]


def test_the_analysis_commands_load_without_the_training_stack():
    """`peftbench claims`, `report`, `compare`, `decide --help`, ... read result files: building the parser and
    importing their modules must not import torch, transformers or PEFT (seconds each)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from peftbench.cli import build_parser, COMMAND_MODULES; build_parser(); "
            "[__import__(m) for m in COMMAND_MODULES]; import peftbench.analysis.report.claims; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout.splitlines()[-1]
    assert json.loads(out) == []
