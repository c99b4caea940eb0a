"""The report's ``index.html``: self-contained, and rendered by headless Chromium without console errors."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_fixtures import make_result, paper_grid, write_results

from peftbench.analysis.report import build_report

pytestmark = pytest.mark.unit

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, list[Path]]:
    runs = paper_grid()
    runs += [
        make_result(method="lora", task="samsum", scale="medium", seed=s, score=0.4 + 0.01 * s)
        for s in range(3)
    ]
    runs += [make_result(method="full", task="samsum", scale="medium", status="failed")]
    runs += [make_result(method="lora", scale="medium", ablation="later_layers", trainable=1769472)]
    return build_report(write_results(tmp_path_factory.mktemp("html") / "results", runs))


def _page(report) -> str:
    return report["html"][0].read_text(encoding="utf-8")


def test_page_holds_every_table_figure_and_run(report):
    page = _page(report)
    for number in (1, 2, 3, 4, 5, 6, 8):  # Table 7 (serving cost) only where runs were served
        assert f'id="table{number}"' in page
    assert 'id="table7"' not in page
    pngs = [p for p in report["figures"] if p.suffix == ".png"]
    assert (
        page.count('src="data:image/png;base64,') == len(pngs) == 8
    )  # Figure 1, 4 loss curves, 3 trade-offs
    assert page.count('<table class="sortable"') == 8  # seven tables (one model each) + the runs
    assert page.count("<details>") == 13  # one per run: config, versions, hardware
    text = html.unescape(page)
    assert '"accelerator": "Test CPU"' in text and '"torch": "test"' in text and '"method": "lora"' in text


def test_page_makes_no_external_request(report):
    page = _page(report)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page


def _run_chromium(url: str, tmp_path: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and every console message the page produced (Chromium logs them as CONSOLE)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1400,3000",
        "--dump-dom",
    ]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    done = subprocess.run(command + [url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return done.stdout, console


@pytest.mark.browser
@needs_chromium
def test_console_check_catches_errors(tmp_path):
    """The check below is only worth something if a broken page fails it."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = _run_chromium(broken.as_uri(), tmp_path)
    assert any("Uncaught ReferenceError" in line for line in console)


@pytest.mark.browser
@needs_chromium
def test_page_renders_in_chromium_without_console_errors(report, tmp_path):
    screenshot = tmp_path / "report_screenshot.png"
    dom, console = _run_chromium(report["html"][0].as_uri(), tmp_path, screenshot)
    assert console == []
    # The page's script records what rendered: every table made sortable, every image decoded.
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-sortable-tables="8"' in body
    assert 'data-images="8/8"' in body
    assert dom.count("<table") == 8 and dom.count("<img") == 8
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    if os.environ.get("PEFTBENCH_SCREENSHOT_DIR"):
        target = Path(os.environ["PEFTBENCH_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / "report_screenshot.png")
