"""``report.html`` in a real browser (headless Chromium): no console errors, every figure loads; and the
script that refreshes ``docs/images/report_screenshot.png`` from a (smoke) demo folder."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from mri_anomaly.evaluation.browser import find_chromium, open_in_chromium

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "refresh_report_screenshot.py"

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium binary (Debian: apt-get install chromium); the check needs a browser",
)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory) -> Path:
    """A smoke demo folder (one method, 2 steps; the numbers mean nothing) with its report."""
    from mri_anomaly.pipeline import DEMO_RUNS, run_demo

    out = tmp_path_factory.mktemp("browser") / "demo"
    runs = tuple(r for r in DEMO_RUNS if r.name == "latent-norm-ae-2d")
    run_demo(out, runs=runs, smoke=True, progress=False, log=lambda _: None)
    return out


def test_report_opens_without_console_errors_and_figures_load(smoke_demo, tmp_path):
    report = smoke_demo / "report" / "report.html"
    check = open_in_chromium(report, screenshot=tmp_path / "shot.png", width=1024, height=1500)
    assert check.console_errors == []
    assert len(check.images) == report.read_text().count("<img ") and len(check.images) >= 5
    assert check.broken_images == [] and all(im["width"] > 100 and im["height"] > 100 for im in check.images)
    assert check.title.startswith("mri-anomaly demo")
    assert _png_size(tmp_path / "shot.png") == (1024, 1500)

    # the check can fail: a missing figure is reported as a broken image and a console error naming it
    figure = smoke_demo / "report" / check.images[0]["src"]
    saved = figure.read_bytes()
    figure.unlink()
    try:
        broken = open_in_chromium(report)
    finally:
        figure.write_bytes(saved)
    assert broken.broken_images == [check.images[0]["src"]]
    assert any(figure.name in line for line in broken.console_errors), broken.console_errors


def test_screenshot_script_refreshes_from_a_demo(smoke_demo, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    out = tmp_path / "report_screenshot.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--demo", str(smoke_demo), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "0 console error(s)" in done.stdout and _png_size(out) == (1280, 2000)

    # a report whose figure is missing: the script fails and writes nothing
    figures = sorted((smoke_demo / "report" / "figures").glob("*.png"))
    saved = figures[0].read_bytes()
    figures[0].unlink()
    try:
        failed = subprocess.run(
            [sys.executable, str(SCRIPT), "--demo", str(smoke_demo), "--out", str(tmp_path / "x.png")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        figures[0].write_bytes(saved)
    assert failed.returncode == 1 and figures[0].name in failed.stderr and not (tmp_path / "x.png").exists()
