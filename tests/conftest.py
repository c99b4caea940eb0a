"""Shared test setup: offline, quiet, and a cache directory of the test session's own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peftbench import limit_openmp_spinning

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's test command runs one worker per core) each worker gets its share of the
# cores, before torch is imported: two workers of two threads each on two cores would oversubscribe them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
limit_openmp_spinning()  # as the command line does, before any test imports torch (a shared machine's cores)

LANES = ("unit", "integration", "gpu")
"""The lanes a test module declares with a module-level ``pytestmark`` (``slow`` and ``browser`` come on top of
one): every test has one, so ``pytest -m "not slow"`` stays the quick lane as the suite grows."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test with no lane, naming its module and the line that gives it one."""
    unlaned = sorted({item.nodeid.split("::")[0] for item in items
                      if not any(item.get_closest_marker(lane) for lane in LANES)})
    if unlaned:
        raise pytest.UsageError(f"tests without a lane (add `pytestmark = pytest.mark.unit`, `.integration` or "
                                f"`.gpu` to the module): {', '.join(unlaned)}")


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real task data beside the repository (../shared/data); tests needing it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real task data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def results_follow_the_schema(tmp_path_factory):
    """After the session: every result.json a run wrote under the session's temporary directories (a run's
    directory holds its config.json beside it; hand-made report fixtures do not) validates against
    ``peftbench/result.schema.json``."""
    yield
    from jsonschema import Draft202012Validator

    from peftbench.running.results import SCHEMA_FILE

    validator = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    invalid = []
    for path in sorted(tmp_path_factory.getbasetemp().rglob("result.json")):
        if not (path.parent / "config.json").is_file():
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a deliberately damaged file (tests of corrupt results)
        invalid += [f"{path}: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                    for e in validator.iter_errors(result)]
    assert not invalid, "result files that do not follow result.schema.json:\n" + "\n".join(invalid[:20])

