"""The report in a real browser: headless Chromium draws every figure without a JavaScript error.

Driven with Playwright's Python API against the system's Chromium (Debian's ``chromium``; no
browser download). Skipped only where no Chromium is installed. Full-page screenshots go to
``reports/test-artifacts/`` (or ``$DRX_TEST_ARTIFACTS``) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from drx.report.commands import run_report
from drx.testing.synthetic import write_synthetic_experiment

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DRX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("DRX_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "reports" / "test-artifacts")

# Per figure div: its size, how many SVG layers plotly made, and how many drawn elements they hold.
FIGURE_STATE = """() => [...document.querySelectorAll('figure.fig .js-plotly-plot')].map(d => {
    const r = d.getBoundingClientRect();
    return {id: d.id, svgs: d.querySelectorAll('.main-svg').length, width: r.width, height: r.height,
            drawn: d.querySelectorAll('.main-svg path, .main-svg image, .main-svg rect.nums, .main-svg .point, .main-svg .bars path').length,
            traces: (d.data || []).length, menus: ((d.layout || {}).updatemenus || []).length};
})"""

# Press every menu button of every figure through plotly's own API (what a click does).
PRESS_MENUS = """async () => {
    let pressed = 0;
    for (const gd of document.querySelectorAll('figure.fig .js-plotly-plot')) {
        for (const menu of (gd.layout.updatemenus || [])) {
            for (const b of menu.buttons) { await Plotly[b.method](gd, ...b.args); pressed += 1; }
        }
    }
    return pressed;
}"""

if CHROMIUM is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium); the report's browser test needs one",
                allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402  (after the skip: only needed with a browser)


def _quiet(*_args, **_kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _open(browser, report: Path, shot: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(report.resolve().as_uri(), wait_until="load")
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.fig .js-plotly-plot')].every(d => d.querySelector('.main-svg'))",
        timeout=90_000,
    )
    state = page.evaluate(FIGURE_STATE)
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)  # as a reader first sees it
    print(f"\nscreenshot of {report}: {shot}")
    pressed = page.evaluate(PRESS_MENUS)
    page.wait_for_timeout(200)
    return page, errors, state, pressed


def _check_figures(state, expected: list[str]) -> None:
    assert sorted(s["id"] for s in state) == sorted(f"fig-{n}" for n in expected)
    for s in state:
        assert s["svgs"] >= 1, s
        assert s["traces"] >= 1, s
        assert s["width"] > 400 and s["height"] > 200, s  # sized, not collapsed
        assert s["drawn"] >= 5, s  # marks on the SVG, not an empty frame


def test_ablation_report_renders_in_chromium(browser, tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=5, n_splits=6, n_epochs=5, n_benchmarks=3, seed=2, n_images=30)
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    page, errors, state, pressed = _open(browser, out / "report.html", ARTIFACTS / "report.png")
    try:
        _check_figures(state, ["forest", "paired-splits", "learning-curves", "expert-weights", "attention-maps"])
        assert pressed >= 2 + len(syn.variants)  # metric menu, expert menu (and band buttons) all pressed
        # The expert menu really switched the maps: its last button shows the last prompt.
        title = page.evaluate("() => document.getElementById('fig-attention-maps').layout.annotations[1].text")
        assert title == "prior: uncompleted"  # the paper preset's last DA-CLIP prompt
        assert page.locator("table.abl").count() == 2  # values and Δ
        assert page.locator("td.partial").count() >= 3  # the cells missing a failed/diverged/missing split say so
        assert page.locator("nav.toc a").count() >= 8
        assert errors == []
    finally:
        page.close()


def test_tune_report_renders_in_chromium(browser, tmp_path):
    syn = write_synthetic_experiment(tmp_path / "exp", n_variants=14, n_splits=3, n_epochs=4, kind="tune", seed=1, n_images=12)
    out = tmp_path / "report"
    assert run_report(syn.path, out, say=_quiet) == 0
    page, errors, state, pressed = _open(browser, out / "report.html", ARTIFACTS / "report-tune.png")
    try:
        _check_figures(state, ["optuna-history", "optuna-importances", "optuna-parallel", "optuna-slices", "search-curves",
                               "confirm-learning-curves", "expert-weights", "attention-maps"])
        assert pressed >= 2
        assert errors == []
    finally:
        page.close()
