"""The result file is defined once, by peftbench/result.schema.json: the committed results follow it, the docs name
every field it lists, a newer version is refused, and the suite validates every result its runs write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from peftbench.running import results

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads(results.SCHEMA_FILE.read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
BASE = {"schema_version": 1, "run_id": "t5_tiny_random-lora-cola-low-s0-0123456789",
        "config": {"model": "t5-tiny-random", "method": "lora", "task": "cola", "scale": "low", "seed": 0}, "seed": 0}


def _errors(result: dict) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(result)]


def test_the_schema_is_a_valid_json_schema_of_the_current_version_and_ships_with_the_package():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["x-schema-version"] == results.SCHEMA_VERSION, \
        "SCHEMA_VERSION was raised: describe the new version in result.schema.json and raise its x-schema-version"
    assert "result.schema.json" in (REPO / "pyproject.toml").read_text()


def test_every_committed_result_follows_the_schema():
    paths = sorted((REPO / "findings").rglob("result.json"))
    assert len(paths) >= 60
    invalid = {str(p): _errors(json.loads(p.read_text())) for p in paths}
    assert {p: e for p, e in invalid.items() if e} == {}


def test_a_result_that_is_not_ok_needs_its_error_and_an_ok_one_its_fields():
    assert _errors({**BASE, "status": "running", "error": None, "started_at": 1.0}) == []
    assert _errors({**BASE, "status": "failed", "error": {"type": "UserError", "message": "bad"}}) == []
    assert _errors({**BASE, "status": "diverged", "error": {"type": "Diverged", "message": "nan", "step": 3}}) == []
    assert _errors({**BASE, "status": "failed"}) == ["'error' is a required property"]
    assert "'metrics' is a required property" in _errors({**BASE, "status": "ok", "error": None})
    assert _errors({**BASE, "status": "done"}) == ["'done' is not one of ['ok', 'failed', 'diverged', "
                                                   "'interrupted', 'running']"]


def test_sub_objects_take_fields_added_later():
    path = next((REPO / "findings").rglob("result.json"))
    result = json.loads(path.read_text())
    result["forgetting"] = {"any": 1}
    result["metrics"]["test"]["mcc"] = 0.1
    result["memory"]["breakdown"] = {"weights": 1}
    assert _errors(result) == []


def test_a_newer_schema_version_is_refused_and_the_current_one_read(tmp_path):
    path = tmp_path / "run" / "result.json"
    results.atomic_write_json(path, {**BASE, "status": "running", "error": None})
    assert results.read_result(path)["status"] == "running"
    results.atomic_write_json(path, {**BASE, "schema_version": results.SCHEMA_VERSION + 1, "status": "running"})
    with pytest.raises(results.CorruptResult, match="newer than this peftbench reads"):
        results.read_result(path)


def test_docs_describe_every_field_the_schema_lists():
    text = (REPO / "docs" / "results.md").read_text()
    missing = [name for name in SCHEMA["properties"] if f"`{name}`" not in text]
    assert missing == []


def test_the_suite_fails_on_a_result_a_run_wrote_that_does_not_follow_the_schema(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(
        "import json, pytest\npytestmark = pytest.mark.unit\n\n"
        "def test_writes(tmp_path):\n"
        "    (tmp_path / 'config.json').write_text('{}')\n"
        "    (tmp_path / 'result.json').write_text(json.dumps({'status': 'ok'}))\n")
    with tempfile.TemporaryDirectory() as basetemp:  # outside this session's own, which it validates too
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
                               "--rootdir", str(tmp_path), "--basetemp", basetemp, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-3000:]
    assert "result files that do not follow result.schema.json" in done.stdout
    assert "'run_id' is a required property" in done.stdout


BEGIN, END = "<!-- fields: generated from result.schema.json -->", "<!-- end of fields -->"


def fields_table(schema: dict) -> str:
    """docs/results.md's table of fields: each top-level property, when it is required, and its description."""
    always = set(schema["required"])
    when_ok = set(next(rule["then"]["required"] for rule in schema["allOf"] if rule["if"]["properties"]["status"]
                       .get("const") == "ok"))
    rows = ["| field | present | meaning |", "| --- | --- | --- |"]
    for name, spec in schema["properties"].items():
        present = "always" if name in always else "ok runs" if name in when_ok else "where it applies"
        rows.append(f"| `{name}` | {present} | {spec['description']} |")
    return "\n".join([BEGIN, *rows, END])


def test_the_docs_table_of_fields_is_the_schemas():
    text = (REPO / "docs" / "results.md").read_text()
    table = text[text.index(BEGIN): text.index(END) + len(END)]
    assert table == fields_table(SCHEMA), "regenerate it: python tests/test_result_schema.py"


if __name__ == "__main__":  # rewrite docs/results.md's table of fields from the schema
    doc = REPO / "docs" / "results.md"
    text = doc.read_text()
    doc.write_text(text[: text.index(BEGIN)] + fields_table(SCHEMA) + text[text.index(END) + len(END):])
