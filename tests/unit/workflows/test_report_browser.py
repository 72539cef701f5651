"""The report as a browser shows it: Debian's chromium renders it headless, offline (a file:// page, no
network); the screenshot must not be blank, the figures' colours must be on it, and the browser must log
no console message (the page has no script, so any message is an error). ``bash scripts/setup.sh --test``
installs chromium with apt-get; without /usr/bin/chromium the test is skipped and says why."""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest

from edgequant.workflows.report import write_report
from tests.unit.workflows.test_report import make_doc

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"Debian's chromium is not installed at {CHROMIUM} (bash scripts/setup.sh --test installs it "
    "with apt-get when run as root on Debian/Ubuntu)",
)
_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")
# matplotlib's first two series colours (tab:blue, tab:orange): only the figures use them
_FIGURE_COLOURS = ((31, 119, 180), (255, 127, 14))


def render(page: str, png: str, tmp: str, height: int = 3600) -> list[str]:
    """Screenshot ``page`` with headless chromium; the console messages it logged."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={os.path.join(tmp, 'profile')}",
        f"--window-size=1200,{height}",
        f"--screenshot={png}",
        "--enable-logging=stderr",
        "--v=0",
        f"file://{page}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert os.path.exists(png), (
        f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )
    return [m.group(1) for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]


def pixels(png: str) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_console_messages_are_caught(tmp_path):
    """The harness itself: a page that logs an error and throws is seen as such."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom'); nope();</script></body></html>")
    msgs = render(str(bad), str(tmp_path / "bad.png"), str(tmp_path), height=300)
    assert any("boom" in m for m in msgs), msgs
    assert any("nope is not defined" in m for m in msgs), msgs


def test_report_renders_with_figures_and_no_console_message(tmp_path):
    results, page, png = tmp_path / "r.json", tmp_path / "report.html", tmp_path / "report.png"
    results.write_text(json.dumps(make_doc()))
    write_report(str(results), str(page))
    msgs = render(str(page), str(png), str(tmp_path))
    assert msgs == []
    px = pixels(str(png))
    assert px.shape[1] == 1200
    grey = px.mean(axis=2)
    assert grey.std() > 20, "the screenshot is blank"
    assert (grey < 200).mean() > 0.02, "almost nothing is drawn"
    for colour in _FIGURE_COLOURS:  # the curves of the figures are drawn
        hits = (np.abs(px - np.array(colour)).max(axis=2) <= 12).sum()
        assert hits > 500, f"too few pixels of the figures' colour {colour}: {hits}"
    viridis = (np.abs(px - np.array((68, 1, 84))).max(axis=2) <= 30).sum()  # the heatmap's dark end
    assert viridis > 200, viridis
