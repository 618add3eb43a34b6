"""``report.html``: self-contained, the Markdown report's numbers, and it renders in a real browser.

The browser is Debian's headless Chromium (``/usr/bin/chromium``) driven by Playwright (no
browser download: CI is offline); every request other than ``file:`` and ``data:`` is
blocked, so a page that needs the network shows it as a failed image or a console error.
Elsewhere than CI (``CI=true``) a missing browser skips these checks with the reason. The
study-level check (:func:`check_study_report`) runs on ``tests/test_study.py``'s planted study.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from monai_emotion.study.report import render_markdown, section, section_from_markdown, table
from monai_emotion.study.report_html import inline_markup, render_html

CHROMIUM = Path("/usr/bin/chromium")


def _browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure under ``CI=true``) saying what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = 'playwright not installed: pip install -e ".[test]"'
    else:
        if CHROMIUM.is_file():
            return sync_playwright
        reason = f"no browser at {CHROMIUM}: apt-get install chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true: the browser test is required (.ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def browser_facts(page_path: Path, screenshot: Path, sort_table: str = "headline", sort_column: int = 4
                  ) -> dict[str, Any]:
    """Open ``page_path`` offline in Chromium and report what a reader would see.

    Returns the console errors, the blocked requests, each image's ``naturalWidth``, the headline
    rows' cells, the viewers (iframes with a nilearn brainsprite), and the cells of column
    ``sort_column`` of ``sort_table``'s table after one click on its header and after a second.
    """
    sync_playwright = _browser_or_skip()
    facts: dict[str, Any] = {"console_errors": [], "blocked": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})

            def route(r: Any) -> None:
                if r.request.url.startswith(("file:", "data:", "about:")):
                    r.continue_()
                else:
                    facts["blocked"].append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: facts["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: facts["console_errors"].append(str(e)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            facts["images"] = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth])")
            facts["headline"] = page.eval_on_selector_all(
                "#headline table tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))")
            # each viewer: its canvases and sprite images, and whether every image decoded
            facts["viewers"] = [frame.evaluate("() => [document.querySelectorAll('canvas, img').length, "
                                               "Array.from(document.images).every(i => i.naturalWidth > 0)]")
                                for frame in page.frames if frame != page.main_frame]
            headers = page.query_selector_all(f"#{sort_table} table thead th")
            facts["sorted"] = []
            for _ in range(2 if len(headers) > sort_column else 0):  # ascending, then reversed
                headers[sort_column].click()
                facts["sorted"].append(page.eval_on_selector_all(
                    f"#{sort_table} table tbody tr", f"rs => rs.map(r => r.cells[{sort_column}].textContent.trim())"))
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return facts


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after ``## heading`` in Markdown ``text`` (``**`` and backticks removed)."""
    block = text.split(f"## {heading}\n", 1)[1]
    lines = [line for line in block.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    return [[re.sub(r"\*\*|`", "", c).strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]


def _numbers(cells: list[str]) -> list[float]:
    """The leading number of each filled cell (``-``: missing, sorted last by the page)."""
    return [float(re.match(r"-?\d+(\.\d+)?", c).group()) for c in cells if c != "-"]


def check_study_report(results: Path, data: Path, tmp_path: Path) -> dict[str, Any]:
    """Rebuild a finished study's reports with ``python -m monai_emotion report`` and check them in the browser.

    A copy of the study (no checkpoints) gets group saliency maps from the planted patterns
    (``data/ground_truth``), so that the viewers are checked without a saliency run.
    """
    from monai_emotion.cli import report

    study = tmp_path / "study"
    shutil.copytree(results, study, ignore=shutil.ignore_patterns("*.pt", "events.out.tfevents*", "report.*"))
    summary = json.loads((study / "summary.json").read_text())
    patterns = nib.load(data / "ground_truth" / "patterns_group.nii.gz")
    emotions = {}
    for k, emotion in enumerate(summary["classes"][:2]):
        name = f"desc-{emotion}_group.nii.gz"
        (study / "saliency").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(patterns.dataobj)[..., k].astype(np.float32), patterns.affine),
                 study / "saliency" / name)
        emotions[emotion] = {"file": name, "voxels": 1}
    summary["saliency"] = {"method": "integrated_gradients", "experiments": ["within"], "n_models": 3,
                           "subjects": ["01"], "kind": "descriptive", "emotions": emotions}
    # a section another stage hands in (appended in order, before the provenance)
    summary["sections"] = [{"id": "extra", "title": "An extra section", "paragraphs": ["from another stage"],
                            "tables": [], "figures": []}]
    (study / "summary.json").write_text(json.dumps(summary))
    models = {p: p.stat().st_mtime_ns for p in (study / "models").rglob("*") if p.is_file()}
    started = time.perf_counter()
    report(str(study))
    built = time.perf_counter() - started
    assert {p: p.stat().st_mtime_ns for p in (study / "models").rglob("*") if p.is_file()} == models  # no training
    page = study / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text, "a remote reference"
    facts = browser_facts(page, tmp_path / "report.png")
    assert not facts["console_errors"] and not facts["blocked"], facts
    assert len(facts["images"]) >= 8 and all(w for _, w in facts["images"]), facts["images"]
    md = (study / "report.md").read_text()
    assert md.index("## An extra section") < md.index("## Provenance") and '<section id="extra">' in text
    assert facts["headline"] == markdown_table(md, "Headline")  # one computation, two renderings
    assert len(facts["headline"]) == len(summary["headline"])  # one row per protocol and decoder
    assert {(r[1], r[3]) for r in facts["headline"]} == {(h["test_set"], h["decoder"]) for h in summary["headline"]}
    # provenance: one retraining command per CNN model; the tiny world's 60-volume runs are warned of
    commands = [line for line in md.splitlines() if line.endswith("--force |") and not line.startswith("| perm-")]
    assert len(commands) == summary["models_done"]["cnn"], commands
    warnings = md.split("## Warnings\n", 1)[1].split("\n## ", 1)[0]
    assert "is short" in warnings and "flagged" in warnings, warnings
    ascending, descending = (_numbers(cells) for cells in facts["sorted"])
    before = _numbers([r[4] for r in facts["headline"]])
    assert ascending == sorted(before) != before and descending == sorted(before, reverse=True), facts["sorted"]
    assert len(facts["viewers"]) == len(emotions) and all(n and ok for n, ok in facts["viewers"]), facts["viewers"]
    assert (tmp_path / "report.png").stat().st_size > 10_000
    return {"seconds": built, "bytes": page.stat().st_size, "screenshot": tmp_path / "report.png"}


def test_markdown_sections_and_extra_sections_render_both_ways(tmp_path: Path) -> None:
    lines = ["## Seen vs unseen", "", "Text with **bold** and `code`.", "", "| a | b |", "|---|---|", "| 1 | x |",
             "| - | - |", "", "![a figure](figures/none.png)", ""]
    parsed = section_from_markdown("align", lines)
    assert parsed["title"] == "Seen vs unseen" and parsed["tables"][0]["rows"] == [["1", "x"], ["-", "-"]]
    assert parsed["figures"] == [{"path": "figures/none.png", "caption": "a figure"}]
    # the shape other stages hand in through summary["sections"]: no viewers, no notes
    extra = {"id": "extra", "title": "Extra <b>", "paragraphs": ["- one\n- <two>"],
             "tables": [{"columns": ["k", "v"], "rows": [["3", "0.5"]], "sortable": True}], "figures": []}
    md = render_markdown("T", [parsed, extra])
    assert "| 1 | x |" in md and "## Extra <b>" in md and "| 3 | 0.5 |" in md
    page = render_html("T", [parsed, extra], tmp_path)
    assert "<strong>bold</strong>" in page and "<code>code</code>" in page and "Extra &lt;b&gt;" in page
    assert "<li>&lt;two&gt;</li>" in page and "missing file figures/none.png" in page
    assert inline_markup("a **b**") == "<p>a <strong>b</strong></p>"


def test_report_command_names_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    from monai_emotion.errors import MonaiEmotionError
    from monai_emotion.study.report import rebuild_report

    with pytest.raises(MonaiEmotionError, match="not a finished study") as caught:
        rebuild_report(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_page_renders_offline_in_chromium(tmp_path: Path) -> None:
    """A small page (a sortable table, a figure, a viewer) in the browser, without a study."""
    from monai_emotion.study.figures import new_figure, save
    from monai_emotion.study.report_html import write_html

    fig = new_figure(2, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    save(fig, tmp_path / "figures" / "f.png")
    (tmp_path / "saliency").mkdir()
    values = np.random.default_rng(0).normal(size=(10, 12, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(values, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "saliency" / "m.nii.gz")
    rows = [["b", "x", "y", "z", "0.50"], ["a", "x", "y", "z", "-"], ["c", "x", "y", "z", "0.25"]]
    page = write_html("T", [section("headline", "Headline", tables=[table(["k", "1", "2", "3", "v"], rows)],
                                    figures=[{"path": "figures/f.png", "caption": "a line"}],
                                    viewers=[{"path": "saliency/m.nii.gz", "title": "a map"}])], tmp_path)
    facts = browser_facts(page, tmp_path / "page.png")
    assert not facts["console_errors"] and not facts["blocked"], facts
    assert facts["images"] == [["a line", 200]] and facts["viewers"] == [[4, True]], facts
    assert facts["sorted"] == [["0.25", "0.50", "-"], ["0.50", "0.25", "-"]]  # missing last both ways
    assert (tmp_path / "page.png").stat().st_size > 5_000
