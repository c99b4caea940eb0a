"""Every test declares its lane (tests/conftest.py): a module without one stops collection, naming itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFTEST = Path(__file__).with_name("conftest.py")


def _collect(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(body)
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)


def test_a_module_without_a_lane_stops_collection_naming_it(tmp_path):
    done = _collect(tmp_path, "def test_nothing():\n    assert True\n")
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert "tests without a lane" in done.stderr and "test_x.py" in done.stderr


@pytest.mark.parametrize("lane", ["unit", "integration", "gpu"])
def test_a_module_with_a_lane_collects(tmp_path, lane):
    done = _collect(tmp_path, f"import pytest\npytestmark = pytest.mark.{lane}\n\n"
                              "def test_nothing():\n    assert True\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 test collected" in done.stdout
