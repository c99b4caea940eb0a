"""The committed findings (findings/smollm2-135m/first-grid, docs/findings.md): their report is what `peftbench report`
makes of their result files, and `peftbench claims` gives a verdict with numbers for every claim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftbench.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
FINDINGS = REPO / "findings" / "smollm2-135m" / "first-grid"
RERUN = REPO / "findings" / "smollm2-135m"
"""The grid under today's protocol (≥ 1,000 test examples, per-example outcomes), filled phase by phase
(docs/findings.md); ``patience-2/`` holds the same cells with early stopping's patience at 2."""
DATA_SIZE = RERUN / "data-size"
"""The AG News data-size curve (suite data-size-smollm2): four methods at 50, 100, 200 and 400 examples."""
MINILM = REPO / "findings" / "minilm-l6"
"""The same protocol with the MiniLM-L6 encoder classifier (AG News and CoLA low): what carries over."""
# Text the report writes the same for the same results. PNG pixels depend on the fonts installed (SVG text
# stays text), and the HTML page embeds PNGs and the time it was made.
TEXT_SUFFIXES = (".md", ".csv", ".tex", ".svg")


def _result_files() -> list[Path]:
    return sorted(FINDINGS.glob("*/result.json"))


def test_the_bundle_holds_result_files_and_no_weights():
    results = _result_files()
    assert len(results) >= 60
    statuses = {json.loads(p.read_text())["status"] for p in results}
    assert statuses == {"ok"}
    weights = [p for p in FINDINGS.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    assert weights == []
    assert sum(p.stat().st_size for p in FINDINGS.rglob("*") if p.is_file()) < 5 * 2**20
    assert max(p.stat().st_size for p in FINDINGS.rglob("*") if p.is_file()) < 2 * 2**20


@pytest.mark.parametrize("folder", [FINDINGS, RERUN, DATA_SIZE, MINILM], ids=lambda p: p.name)
def test_peftbench_report_regenerates_the_committed_report(folder, tmp_path, capsys):
    assert main(["report", str(folder), "--out", str(tmp_path)]) == 0
    committed = {p.relative_to(folder / "report") for p in (folder / "report").rglob("*") if p.is_file()}
    made = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert committed == made
    for relative in sorted(committed):
        if relative.suffix in TEXT_SUFFIXES:
            assert (tmp_path / relative).read_text() == (folder / "report" / relative).read_text(), relative


def _today_results(folder: Path) -> list[Path]:
    """The result files of ``folder`` and its subfolders under today's protocol (the first grid left out)."""
    return sorted(p for p in folder.rglob("result.json") if FINDINGS not in p.parents)


def _test_floor(result: dict, path: Path) -> int:
    """The fewest test examples a run under today's protocol has: 300 for generation, 1,000 for classification,
    and 500 on the data-size curve (16 runs a seed, each tested: 500 more AG News test examples cost about a
    minute a run here, 16 min on seed 0's 88)."""
    if result["task"]["type"] == "generation":
        return 300
    return 500 if DATA_SIZE in path.parents else 1000


@pytest.mark.parametrize("folder", [RERUN, MINILM], ids=lambda p: p.name)
def test_the_rerun_holds_result_files_with_outcomes_and_no_weights(folder):
    results = _today_results(folder)
    assert len(results) >= 30
    for path in results:
        result = json.loads(path.read_text())
        assert result["status"] == "ok", path
        assert result["hardware"]["instruction_set"], path  # which kind of machine ran it
        if result["config"]["train"]["run_test"] is False:  # an lr_search candidate: trained, validated, no test
            assert not result["metrics"]["test"] and result["outcomes"] is None and result["history"], path
            continue
        assert result["data"]["test_examples"] >= _test_floor(result, path), path
        assert (path.parent / result["outcomes"]["file"]).is_file(), path
        shared = result["outcomes"].get("references")  # version 2: the sample's references, once per folder
        assert shared is None or (path.parent / shared["file"]).is_file(), path
    assert [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")] == []
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 20 * 2**20


@pytest.mark.parametrize("folder", ["findings/smollm2-135m", "findings/minilm-l6"])
@pytest.mark.parametrize(("options", "page"), [([], "compare.md"), (["--metric", "accuracy"], "compare-accuracy.md")])
def test_peftbench_compare_regenerates_the_committed_patience_comparison(folder, options, page, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the committed page names the folders relative to the repository
    assert main(["compare", folder, f"{folder}/patience-2", *options]) == 0
    assert capsys.readouterr().out == (REPO / folder / "patience-2" / page).read_text()


def test_peftbench_claims_gives_every_claim_a_verdict_with_both_sides_numbers(capsys):
    assert main(["claims", str(FINDINGS)]) == 0
    out = capsys.readouterr().out
    verdicts = re.findall(r"^\[(holds|does not hold|inconclusive)\] ", out, flags=re.MULTILINE)
    assert len(verdicts) >= 7
    # every claim has comparisons but the one about searched learning rates, which this folder did not run
    assert out.count("no results to compare") == 1  # its line names the runs that would give it some
    tuned_lr = out.split("; peft-beats-full-low-tuned-lr)\n", 1)[1].split("\n[", 1)[0]
    assert tuned_lr.endswith("    no results to compare: needs full tuning, LoRA and BitFit at low scale with "
                             "lr_search=[0.1,0.3,1,3]")
    comparisons = re.findall(r"^    (holds|does not hold|inconclusive): .*\d.*(?:<|>|vs).*\d", out, flags=re.MULTILINE)
    assert len(comparisons) >= len(verdicts)


@pytest.mark.parametrize("document", ["docs/findings.md", "README.md"])
def test_the_findings_are_linked(document):
    text = (Path(__file__).resolve().parents[1] / document).read_text()
    assert "findings/smollm2-135m/first-grid" in text


METHOD_MEMORY_CLAIM = ("(IA)3 and BitFit need the least memory of their own: weights, gradients, optimiser state and "
                       "the activations saved for backward (memory.breakdown, without the runtime and the "
                       "allocator's overhead)")


@pytest.mark.parametrize(("folder", "refuted"), [
    (MINILM, ["PEFT (LoRA and BitFit) scores above full tuning at low scale",
              "PEFT (LoRA and BitFit) scores above full tuning at low scale, each at its searched learning rate "
              "(lr_search)", METHOD_MEMORY_CLAIM]),
    (MINILM / "patience-2", ["PEFT (LoRA and BitFit) scores above full tuning at low scale",
                             METHOD_MEMORY_CLAIM, "Prompt tuning scores lowest of the methods"]),
], ids=["patience-1", "patience-2"])
def test_the_minilm_findings_decide_what_docs_findings_says_they_decide(folder, refuted, capsys):
    assert main(["claims", str(folder)]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^\[does not hold\] (.*?) \(§", out, flags=re.MULTILINE) == refuted
    assert "[holds]" not in out
    # docs/findings.md quotes this comparison, decided at both patiences:
    assert ("bitfit score 0.2717 ± 0.0311 (3 seeds) < full score 0.8607 ± 0.0244 (3 seeds); "
            "difference -0.5890 [-0.6280, -0.5500], paired t p 0.000 (Holm 0.001)") in out
    assert ("does not hold: minilm-l6, cola, low: ia3 method's MiB 198 ± 9 (3 seeds) > lora method's MiB 165 ± 7 "
            "(3 seeds); difference +33 [+30, +35], paired t p 0.000 (Holm 0.002)") in out
    if folder == MINILM:  # and, with every side's learning rate searched (lr_search=[0.1,0.3,1,3]), this one
        assert ("bitfit+lr_search score 0.2690 ± 0.0366 (3 seeds) < full+lr_search score 0.8480 ± 0.0437 (3 seeds); "
                "difference -0.5790 [-0.6588, -0.4992], paired t p 0.001 (Holm 0.002)") in out


def test_the_smollm2_findings_decide_the_method_memory_claim_as_docs_findings_says(capsys):
    assert main(["claims", str(RERUN)]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^\[does not hold\] (.*?) \((?:§|not in)", out, flags=re.MULTILINE) == [
        METHOD_MEMORY_CLAIM, "LoRA, (IA)3 and BitFit forget less general text than full tuning (metrics.forgetting, "
        "on WikiText-2)"]
    assert "[holds]" not in out
    # docs/findings.md, "Verdicts", quotes these:
    for decided in ("cola, low: ia3 method's MiB 1214 ± 51 (3 seeds) > lora method's MiB 1173 ± 46 (3 seeds); "
                    "difference +41 [+36, +47], paired t p 0.001 (Holm 0.006)",
                    "ag_news, low: ia3 method's MiB 2138 ± 207 (3 seeds) > lora method's MiB 2003 ± 186 (3 seeds); "
                    "difference +135 [+115, +156], paired t p 0.001 (Holm 0.007)",
                    "cola, low: bitfit method's MiB 1091 ± 37 (3 seeds) < lora method's MiB 1173 ± 46 (3 seeds); "
                    "difference -82 [-91, -73], paired t p 0.001 (Holm 0.005)",
                    "cola, low: lora forgetting (nats/token) -0.001 ± 0.003 (3 seeds) > full forgetting (nats/token) "
                    "-0.009 ± 0.002 (3 seeds); difference +0.009 [+0.008, +0.009], paired t p 0.000 (Holm 0.002)"):
        assert decided in out
