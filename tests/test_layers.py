"""The package's layers import one way (pyproject.toml's import-linter contract): analysis, running, recipe,
speed-ups, config, catalog, each importing only the layers after it. A new import against the direction fails
here; the ones that remain are listed in the contract's ignore_imports, each a move still to make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["peftbench.analysis", "peftbench.running", "peftbench.recipe", "peftbench.speedups", "peftbench.config",
          "peftbench.catalog", "peftbench.registry", "peftbench.errors | peftbench.constants | peftbench.outcomes"]


def _contract() -> dict:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == "peftbench"
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract


def _lint(tmp_path: Path, contract: dict) -> subprocess.CompletedProcess:
    """lint-imports on the source tree with ``contract`` alone."""
    lines = ['[tool.importlinter]', 'root_package = "peftbench"', '[[tool.importlinter.contracts]]',
             f'name = {json.dumps(contract["name"])}', 'type = "layers"', f'layers = {json.dumps(contract["layers"])}',
             f'ignore_imports = {json.dumps(contract.get("ignore_imports", []))}']
    config = tmp_path / "layers.toml"
    config.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", str(config), "--no-cache"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_contract_is_declared_in_order():
    assert _contract()["layers"] == LAYERS


def test_the_package_keeps_its_layers(tmp_path):
    done = _lint(tmp_path, _contract())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_an_import_against_the_direction_breaks_the_contract(tmp_path):
    contract = _contract()
    ignored = contract.pop("ignore_imports")
    assert "peftbench.running.summary -> peftbench.analysis.stats" in ignored
    done = _lint(tmp_path, contract)
    assert done.returncode != 0
    assert "peftbench.running is not allowed to import peftbench.analysis" in done.stdout
    assert "peftbench.running.summary -> peftbench.analysis.stats" in done.stdout
