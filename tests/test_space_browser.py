"""The Space in a real browser: Debian's chromium driven by Playwright, against ``python space/app.py`` on 127.0.0.1.

The app runs as a subprocess exactly as a person starts it (offline, so on the embedded demo model). Chromium's
resolver maps every host but 127.0.0.1 to NOTFOUND, and the test records every request, so passing proves the
page needs nothing from outside. Never ``playwright install``: ``.ci/run`` installs Debian's chromium.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dermtrl.cases.synthetic import generate_case
from dermtrl.dimensions import DIMENSIONS
from tests.test_space_page import _BROKEN_WORDS  # the one check that no word breaks across lines

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# Cold start trains the demo adapter once (about 45 s on 2 cores; cached under DERMTRL_CACHE afterwards).
START_TIMEOUT = 240.0
UI_TIMEOUT_MS = 60_000

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium before the tests")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.timeout(900)  # a cold cache trains the demo adapter first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python space/app.py`` on a free loopback port; its log is shown if it fails to start."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("space") / "app.log"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DERMBENCH_JUDGE_API_KEY_ENV": "DERMTRL_TEST_NO_SUCH_KEY", "PYTHONUNBUFFERED": "1"}
    env.pop("DERMBENCH_JUDGE_BASE_URL", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py")], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"space/app.py exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"space/app.py did not serve within {START_TIMEOUT:.0f} s:\n"
                            f"{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        # the page serves at once; the model is prepared meanwhile (a cold cache trains the demo adapter)
        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False)
        try:
            while not client.predict(api_name="/model_info")["ready"]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"space/app.py did not prepare its model:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.5)
        finally:
            client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


_NUMBER = r"\d(?:\.\d+)?"


def assert_intervals_or_none(cells: list[list[str]], legend: str) -> None:
    """The app runs the demo adapter as shipped, with or without its calibration.json: either every score shows its
    calibrated interval ("4 (3-5)", the coverage named beside it) and the legend says they are calibrated, or none
    does and the legend says plainly that there is no calibration file."""
    if "Intervals are calibrated" in legend:
        coverage = re.search(r"a (\d+%) interval holds the experts' score", legend)
        assert coverage, legend
        for _, score, interval, *_ in cells:
            shown = re.fullmatch(rf"{_NUMBER} \(({_NUMBER}-{_NUMBER})\)( uncertain)?", score)
            assert shown and interval == f"{coverage.group(1)} interval {shown.group(1)}", (score, interval)
    else:
        assert "No calibration file: scores shown without intervals." in legend, legend
        assert all(re.fullmatch(_NUMBER, r[1]) and r[2] == "not calibrated" for r in cells), cells
    assert "5 is best" in legend and all(d in legend for d in DIMENSIONS)


@pytest.fixture
def page(app_url: str) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A chromium page; with every URL it requested and every request that failed."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1300})
            context.set_default_timeout(UI_TIMEOUT_MS)
            pg = context.new_page()
            requested: list[str] = []
            failed: list[str] = []
            pg.on("request", lambda r: requested.append(r.url))
            pg.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            yield pg, requested, failed
        finally:
            browser.close()


def test_upload_type_evaluate_shows_six_scores_and_a_critique(
    page: tuple[Any, list[str], list[str]], app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg, requested, failed = page
    case = generate_case(100_000, tier="correct")
    image = tmp_path / "lesion.png"
    case["image"].save(image)

    pg.goto(app_url, wait_until="domcontentloaded")
    pg.wait_for_selector("#evaluate-button")
    assert "Embedded demo model" in pg.inner_text("#model-banner")
    pg.set_input_files("#image-input input[type=file]", str(image))  # the hidden file input of gr.Image
    pg.wait_for_selector("#image-input img")  # the upload preview
    pg.fill("#narrative-input textarea", case["narrative"])
    pg.click("#evaluate-button")
    pg.wait_for_function("() => (document.querySelector('#critique textarea') || {}).value", polling=100)

    # gr.Dataframe draws its body as ARIA grid rows (a virtual table), not as <tr> elements
    pg.wait_for_function("() => document.querySelectorAll('#score-table [role=row].virtual-row').length >= 6")
    rows = pg.locator("#score-table [role=row].virtual-row")
    assert rows.count() == 6
    cells = [[c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()] for i in range(6)]
    assert [r[0] for r in cells] == list(DIMENSIONS)
    scores = [float(r[1].split()[0]) for r in cells]
    assert all(0 <= s <= 5 for s in scores), cells  # six scores, none missing
    assert_intervals_or_none(cells, pg.inner_text("#score-legend"))
    assert pg.input_value("#critique textarea").strip()
    overall = re.search(r"Overall (\d\.\d)/5 from (\d) of 6", pg.inner_text("#overall-score"))
    assert overall and overall.group(2) == "6", pg.inner_text("#overall-score")  # says what it averages
    assert float(overall.group(1)) == pytest.approx(sum(scores) / 6, abs=0.05)
    pg.wait_for_selector("#score-chart canvas, #score-chart svg")  # the chart rendered, offline
    assert not pg.is_visible("#raw-output")  # the raw output stays in its collapsed panel

    screenshot = tmp_path / "dermeval-space.png"
    pg.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nDermEval Space screenshot: {screenshot}")

    outside = sorted({u for u in requested if not u.startswith(("http://127.0.0.1", "data:", "blob:"))})
    assert not outside, f"the page requested outside resources: {outside}"
    # the queue's and the upload's event streams are closed by the page itself once the result (or the upload) is
    # in (net::ERR_ABORTED); any other failed request is a fault
    broken = [f for f in failed if not ("/gradio_api/queue/data" in f
                                        or ("/gradio_api/upload_progress" in f and "ERR_ABORTED" in f))]
    assert not broken, f"requests failed: {broken}"


@pytest.fixture
def phone(app_url: str) -> Iterator[Any]:
    """A chromium page 390 px wide, a phone's screen."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 390, "height": 1400})
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def test_phone_layout_metadata_empty_score_and_notes_cleared_after_an_error(phone: Any, app_url: str,
                                                                             tmp_path: Path) -> None:
    pg = phone
    case = generate_case(100_000, tier="correct")
    image = tmp_path / "lesion.png"
    case["image"].save(image)
    pg.goto(app_url, wait_until="domcontentloaded")
    pg.wait_for_selector("#evaluate-button")
    assert pg.title() == "DermEval"
    description = pg.get_attribute("meta[name=description]", "content")
    assert description and "DermBench" in description and pg.locator("meta[property='og:description']").count()
    pg.wait_for_selector("#overall-score", state="attached")
    assert pg.inner_text("#overall-score").strip() == ""  # before a run: empty, not 0
    labels = pg.locator("text=Unsafe narrative (unsafe)")  # example rows named by quality tier
    assert labels.count() >= 1

    pg.set_input_files("#image-input input[type=file]", str(image))
    pg.wait_for_selector("#image-input img")
    pg.fill("#narrative-input textarea", case["narrative"] + " <s> tokens </s>")
    pg.click("#evaluate-button")
    pg.wait_for_function("() => (document.querySelector('#critique textarea') || {}).value", polling=100)
    notes = pg.inner_text("#evaluate-notes")
    assert "<s>" in notes and "</s>" in notes  # shown as text...
    assert pg.locator("#evaluate-notes s").count() == 0  # ...never as a strike-through element
    pg.wait_for_function("() => document.querySelectorAll('#score-table th').length >= 5")
    pg.wait_for_function("() => document.querySelectorAll('#score-table [role=row].virtual-row').length >= 6")
    for selector in ("#score-table th", "#score-table [role=gridcell]"):  # no word (nor "3-5") broken at 390 px
        assert pg.evaluate(_BROKEN_WORDS, selector) == [], selector
    clipped = pg.evaluate("() => Array.from(document.querySelectorAll('#score-table th .header'))"
                          ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
    assert clipped == []  # nor is cut off (the table scrolls sideways instead)
    pg.screenshot(path=str(tmp_path / "dermeval-space-390px.png"), full_page=True)

    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image\n" * 10)
    pg.set_input_files("#image-input input[type=file]", str(text_file))
    pg.click("#evaluate-button")
    pg.wait_for_selector("text=not an image this app can read")
    pg.wait_for_function("() => !(document.querySelector('#critique textarea') || {}).value", polling=100)
    assert "control tokens" not in pg.inner_text("#evaluate-notes")  # the last run's note is gone
    pg.wait_for_function("() => !document.querySelector('#overall-score [data-testid=markdown]').textContent.trim()",
                         polling=100)
