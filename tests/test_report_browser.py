"""The report in a real browser: headless Chromium draws every chart without a JavaScript error.

Needs the Debian `chromium` package (`apt-get install -y chromium`); skipped with that hint otherwise.
The page itself records `data-charts-drawn` and `data-js-errors` on <body>; `--dump-dom` returns them
after a virtual-time budget. A screenshot is kept in tests/artifacts/report.png (git-ignored).
"""

from __future__ import annotations

import re
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports.html import build_report, write_report
from reports.validation import validate
from simulator.config import Workload
from simulator.loading import load_hardware, load_model
from simulator.request import request_latencies
from tests.test_validation import make_tiny_bundle, sample_bundles, tiny_hardware
from traces.bundle import read_bundle

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not installed at /usr/bin/chromium (apt-get install -y chromium)",
)


class ChartScan(HTMLParser):
    """Body data attributes, and per chart div whether an svg.main-svg was drawn inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.charts: dict[str, bool] = {}
        self._stack: list[str | None] = []  # open divs: chart id or None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "div":
            cid = a.get("id") if "chart" in a.get("class", "").split() else None
            if cid:
                self.charts[cid] = False
            self._stack.append(cid)
        elif tag == "svg" and "main-svg" in a.get("class", "").split():
            for cid in reversed(self._stack):
                if cid:
                    self.charts[cid] = True
                    break

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._stack:
            self._stack.pop()


def test_report_draws_in_chromium(tmp_path: Path) -> None:
    started = time.monotonic()
    paths = sample_bundles()
    if paths:
        bundles = [read_bundle(p) for p in paths]
        validations = [validate(b) for b in bundles]
    else:
        bundles = [read_bundle(make_tiny_bundle(tmp_path / "tiny"))]
        validations = [validate(bundles[0], hardware=tiny_hardware())]
    hw = load_hardware("h100-sxm")
    request = request_latencies(
        [load_model("h100-sample-moe"), load_model("h100-sample-umv2")],
        [hw, hw],
        Workload(batch=[1, 8, 64]),
        1024,
        64,
    )
    text = build_report(
        None,
        bundles,
        validations,
        "browser check",
        command="pytest tests/test_report_browser.py",
        request=request,
    )
    page = write_report(tmp_path / "report.html", text)
    expected = re.findall(r'<div class="chart" id="([^"]+)"', text)
    assert len(expected) >= 10 and {"chart-request-latency", "chart-request-tradeoff"} <= set(expected)

    ARTIFACTS.mkdir(exist_ok=True)  # git-ignored (.gitignore: tests/artifacts/)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    cmd = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--window-size=1280,2400",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--dump-dom",
        page.as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stderr[-2000:]
    scan = ChartScan()
    scan.feed(run.stdout)
    assert scan.body, "no <body> in the dumped DOM"
    assert scan.body.get("data-js-errors", "") == "", scan.body.get("data-js-errors")
    assert scan.body.get("data-charts-expected") == str(len(expected))
    assert scan.body.get("data-charts-drawn") == str(len(expected))
    assert list(scan.charts) == expected
    assert all(scan.charts.values()), [c for c, ok in scan.charts.items() if not ok]
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert time.monotonic() - started < 60


def _dump(page: Path, profile: Path) -> ChartScan:
    cmd = [
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stderr[-2000:]
    scan = ChartScan()
    scan.feed(run.stdout)
    return scan


def test_page_reports_javascript_errors(tmp_path: Path) -> None:
    """Negative control: an error thrown on the page shows up in data-js-errors."""
    text = build_report(None, [], [], "error check", command="x")
    text = text.replace("</main>", '</main><script>throw new Error("boom from the test")</script>')
    scan = _dump(write_report(tmp_path / "broken.html", text), tmp_path / "profile")
    assert "boom from the test" in scan.body.get("data-js-errors", "")
    assert scan.body.get("data-charts-drawn") == "0"
