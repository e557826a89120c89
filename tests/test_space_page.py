"""The Space's page in a real browser (Debian's chromium via Playwright) and over HTTP, launched in this process.

- The page answers at once while the model is prepared, says "Preparing the demo model", and its banner turns
  into the model's once it is ready.
- Every overall states how many dimensions it averages, with the Safety flag beside it; "missing" never breaks
  mid-word; both tabs fit a 390 px phone; the chart's labels have room; the examples sit by the inputs they fill.
- With a calibration.json beside the adapter each score shows its interval ("4 (3-5)", "uncertain" when 3 points or
  wider) and the legend names the coverage; without one the page says "No calibration file".

The demo model's generation is scripted here (:class:`tests.test_space.ScriptedEvaluator`: the tiny model cannot be
steered into Safety 0 and a missing score); everything else is real: the app, its HTTP server, a loopback judge.
Chromium resolves no host but 127.0.0.1, so the page needs nothing from outside.
"""

from __future__ import annotations

import os
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gradio_client.exceptions import AppError

from dermtrl.cases.synthetic import generate_case
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.server import FakeOpenAIServer
from tests.test_space import (
    CALL_TIMEOUT,
    Running,
    ScriptedEvaluator,
    adapter_copy,
    hand_calibration,
    load_space_module,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
UI_TIMEOUT_MS = 60_000
NO_KEY = "DERMTRL_TEST_NO_SUCH_KEY"
#: Safety 0 and no Description Precision: "3.0/5 from 5 of 6" with the flag, and one "missing" cell.
SCRIPTED = ("The narrative tells the patient to cut the lesion off at home.\nThe evaluation scores are:\n"
            "Accuracy: 4\nSafety Harmfulness: 0\nMedical Factuality Hallucination: 3\nClinical Coverage: 4\n"
            "Reasoning Coherence: 4")
#: The score distributions the model "read" (expected, spread): with the hand-written calibration (q = 2 at every
#: coverage, interval expected +/- 2 * (spread + 0.1)) Accuracy shows "4 (3-5)" and Safety "0 (0-3.4) uncertain".
EXPECTED = {"Accuracy": 4.0, "Safety": 0.2, "Medical Groundedness": 3.1, "Clinical Coverage": 3.8,
            "Reasoning Coherence": 4.1, "Description Precision": 4.0}
SPREAD = {"Accuracy": 0.4, "Safety": 1.5, "Medical Groundedness": 0.2, "Clinical Coverage": 0.3,
          "Reasoning Coherence": 0.35, "Description Precision": 0.4}
JUDGE_ANSWER = "Accuracy: 4\nSafety: 5"  # two of six
pytestmark = pytest.mark.timeout(900)  # a cold cache trains the demo adapter first


def _browser_or_skip() -> Any:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium before the tests")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def space_module() -> ModuleType:
    return load_space_module()


@pytest.fixture(scope="module")
def demo_settings(space_module: ModuleType, demo_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo model with its adapter and no calibration file beside it."""
    plain = adapter_copy(demo_adapter, tmp_path_factory.mktemp("adapter") / "plain")
    return space_module.Settings.from_env({"DERMEVAL_DEMO": "1", "DERMEVAL_DEMO_ADAPTER": str(plain),
                                           "DERMBENCH_JUDGE_API_KEY_ENV": NO_KEY})


@pytest.fixture(scope="module")
def judge() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(lambda body: JUDGE_ANSWER) as server:
        yield server


@pytest.fixture(scope="module")
def served(space_module: ModuleType, demo_settings: Any, demo_adapter: Path, judge: FakeOpenAIServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The app on the demo model with its generation scripted, a calibration.json beside its adapter, and a loopback
    judge for the DermBench tab."""
    calibrated = adapter_copy(demo_adapter, tmp_path_factory.mktemp("adapter") / "calibrated", hand_calibration(2.0))
    settings = replace(demo_settings, demo_adapter=str(calibrated))
    model = space_module.load_model(settings)
    assert model.evaluator.calibration is not None
    model = replace(model, evaluator=ScriptedEvaluator(model.evaluator, SCRIPTED, EXPECTED, SPREAD))
    app = space_module.SpaceApp(replace(settings, judge_base_url=judge.base_url, judge_model="fake-judge"),
                                model)
    running = Running(app, app.build())
    yield running
    running.close()


@pytest.fixture(scope="module")
def lesion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    case = generate_case(100_000, tier="correct")
    path = tmp_path_factory.mktemp("lesion") / "lesion.png"
    case["image"].save(path)
    return {"path": str(path), "narrative": case["narrative"], "reference": case["reference"]}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _browser_or_skip()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _page(browser: Any, width: int) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 1400})
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context.new_page()


# --- cold start: the page is up at once ------------------------------------------------------------------------


@pytest.fixture
def slow_model(space_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """``load_model`` held until the returned event is set, as a first start's adapter training holds it."""
    release = threading.Event()
    original = space_module.load_model

    def held(settings: Any, on_demo: Any = None) -> Any:
        if on_demo is not None:
            on_demo()
        assert release.wait(CALL_TIMEOUT), "the test never released the model"
        return original(settings)

    monkeypatch.setattr(space_module, "load_model", held)
    return release


def test_page_answers_while_the_demo_model_is_prepared(space_module: ModuleType, demo_settings: Any,
                                                        slow_model: threading.Event, lesion: dict[str, str]) -> None:
    from gradio_client import handle_file

    app, demo = space_module.create_app(demo_settings, background=True)
    running = Running(app, demo)
    try:
        with urllib.request.urlopen(running.url, timeout=30) as response:  # served before the model exists
            page = response.read().decode()
            assert response.status == 200 and "Preparing the demo model" in page
            assert "whether its scores carry calibrated intervals shows here once it is ready" in page
        info = running.client.predict(api_name="/model_info")
        assert (info["ready"], info["preparing"], info["model"]) == (False, "the demo model", None)
        with pytest.raises(AppError, match="The demo model is still being prepared"):
            running.evaluate(handle_file(lesion["path"]), lesion["narrative"])
        slow_model.set()
        deadline = CALL_TIMEOUT
        while not running.client.predict(api_name="/model_info")["ready"]:
            deadline -= 0.2
            assert deadline > 0, "the model never became ready"
            threading.Event().wait(0.2)
        assert app.banner_text().startswith("⚠️ **Embedded demo model.**")
        with urllib.request.urlopen(running.url, timeout=30) as response:  # a page opened now starts with it
            page = response.read().decode()
        assert "Embedded demo model" in page and "Preparing the demo model" not in page
        assert "No calibration file: scores shown without intervals." in page  # none beside this adapter
        *_, result = running.evaluate(handle_file(lesion["path"]), lesion["narrative"])
        assert list(result["scores"]) == list(DIMENSIONS)
    finally:
        slow_model.set()
        running.close()


def test_the_banner_turns_into_the_models_once_it_is_ready(space_module: ModuleType, demo_settings: Any,
                                                           slow_model: threading.Event, browser: Any) -> None:
    app, demo = space_module.create_app(demo_settings, background=True)
    running = Running(app, demo)
    try:
        pg = _page(browser, 1280)
        pg.goto(running.url, wait_until="domcontentloaded")
        pg.wait_for_selector("#model-banner >> text=Preparing the demo model")
        slow_model.set()
        pg.wait_for_selector("#model-banner >> text=Embedded demo model")  # the timer refreshed it
        assert "Preparing" not in pg.inner_text("#model-banner")
    finally:
        slow_model.set()
        running.close()


# --- the overall, the table, the layout -------------------------------------------------------------------------

_BROKEN_WORDS = """(selector) => {
    const broken = [];
    for (const cell of document.querySelectorAll(selector)) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            let at = 0;
            for (const part of node.textContent.split(/(\\s+)/)) {
                if (part.trim()) {
                    const range = document.createRange();
                    range.setStart(node, at);
                    range.setEnd(node, at + part.length);
                    const lines = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
                    if (lines.size > 1) broken.push(part);
                }
                at += part.length;
            }
        }
    }
    return broken;
}"""


def _evaluate_in_page(pg: Any, url: str, lesion: dict[str, str]) -> None:
    pg.goto(url, wait_until="domcontentloaded")
    pg.wait_for_selector("#evaluate-button")
    pg.set_input_files("#image-input input[type=file]", lesion["path"])
    pg.wait_for_selector("#image-input img")
    pg.fill("#narrative-input textarea", lesion["narrative"])
    pg.click("#evaluate-button")
    pg.wait_for_selector("#overall-score >> text=from 5 of 6")
    pg.wait_for_function("() => document.querySelectorAll('#score-table [role=row].virtual-row').length >= 6")


def _score_cells(pg: Any, table: str) -> list[list[str]]:
    rows = pg.locator(f"{table} [role=row].virtual-row")
    return [[c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
            for i in range(rows.count())]


@pytest.mark.parametrize("width", [1280, 390])
def test_overall_shows_its_count_and_the_safety_flag_and_missing_stays_whole(
        served: Running, browser: Any, lesion: dict[str, str], width: int, tmp_path: Path) -> None:
    pg = _page(browser, width)
    _evaluate_in_page(pg, served.url, lesion)
    overall = pg.inner_text("#overall-score")
    assert "Overall 3.0/5 from 5 of 6 - SAFETY FLAG: Safety 0 (2 or less)" in overall, overall
    assert pg.is_visible("#overall-score >> text=SAFETY FLAG")
    cells = _score_cells(pg, "#score-table")
    assert [r[0] for r in cells] == list(DIMENSIONS) and cells[-1][1] == "missing"
    assert cells[0][1:3] == ["4 (3-5)", "90% interval 3-5"], cells  # the calibrated interval, its coverage named
    assert cells[1][1:3] == ["0 (0-3.4) uncertain", "90% interval 0-3.4"], cells  # 3.4 points wide
    assert cells[2][1] == "3 (2.5-3.7)" and cells[-1][2] == "n/a"
    for selector in ("#score-table [role=gridcell]", "#score-table th"):
        assert pg.evaluate(_BROKEN_WORDS, selector) == [], (width, selector)
    legend = pg.inner_text("#score-legend")
    assert "5 is best" in legend and all(d in legend for d in DIMENSIONS)
    assert "Intervals are calibrated: a 90% interval holds the experts' score 90% of the time" in legend, legend
    assert "uncertain marks an interval 3 or more points wide" in legend and "No calibration file" not in legend
    pg.screenshot(path=str(tmp_path / f"overall-{width}px.png"), full_page=True)


@pytest.mark.parametrize("width", [1280, 390])
def test_examples_sit_by_the_inputs_and_the_image_preview_is_large(served: Running, browser: Any,
                                                                   width: int) -> None:
    pg = _page(browser, width)
    pg.goto(served.url, wait_until="domcontentloaded")
    pg.wait_for_selector("#dermeval-examples >> text=Good narrative (correct)")
    examples = pg.locator("#dermeval-examples").bounding_box()
    button = pg.locator("#evaluate-button").bounding_box()
    assert button["y"] < examples["y"] < pg.locator("#raw-panel").bounding_box()["y"]  # by the inputs they fill
    if width >= 1000:  # two columns: the examples in the inputs' one, left of the results
        assert examples["x"] + examples["width"] <= pg.locator("#score-chart").bounding_box()["x"] + 1
    else:  # one column: before the results
        assert examples["y"] < pg.locator("#score-chart").bounding_box()["y"]
    pg.click("#dermeval-examples >> text=Good narrative (correct)")
    pg.wait_for_selector("#image-input img")
    pg.wait_for_function("() => document.querySelector('#image-input img').naturalWidth > 0")
    preview = pg.locator("#image-input img").bounding_box()
    natural = pg.evaluate("() => document.querySelector('#image-input img').naturalWidth")
    assert natural == 96  # the example is a 96 px drawing...
    assert min(preview["width"], preview["height"]) >= 300, preview  # ...shown large enough to check a critique


def test_phone_shows_both_tabs_and_the_dermbench_overall(served: Running, browser: Any,
                                                         lesion: dict[str, str]) -> None:
    pg = _page(browser, 390)
    pg.goto(served.url, wait_until="domcontentloaded")
    pg.wait_for_selector("#evaluate-button")
    tabs = pg.get_by_role("tab")
    names = [t.strip() for t in tabs.all_inner_texts()]
    assert names == ["DermEval", "DermBench"], names  # none folded into a "..." menu
    for i in range(tabs.count()):
        box = tabs.nth(i).bounding_box()
        assert tabs.nth(i).is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    pg.get_by_role("tab", name="DermBench").click()
    pg.fill("#bench-candidate textarea", lesion["narrative"])
    pg.fill("#bench-reference textarea", lesion["reference"])
    pg.click("#bench-compare")
    pg.wait_for_selector("#bench-overall >> text=4.5/5 from 2 of 6")
    assert "SAFETY FLAG" not in pg.inner_text("#bench-overall")
    pg.wait_for_function("() => document.querySelectorAll('#bench-table [role=row].virtual-row').length >= 6")
    cells = _score_cells(pg, "#bench-table")
    assert [r[1] for r in cells] == ["4", "5", *["missing"] * 4]
    assert pg.evaluate(_BROKEN_WORDS, "#bench-table [role=gridcell]") == []
    assert "5 is best" in pg.inner_text("#bench-legend")


#: Which neighbouring x-axis labels of a chart overlap, as drawn (each label's box in its own slanted frame, its
#: neighbour's mapped into that frame, intersected), and which reach past the chart's edges (cut off).
_OVERLAPPING_LABELS = """([chart, names]) => {
    const texts = Array.from(document.querySelectorAll(`${chart} svg text`))
        .filter(t => names.includes(t.textContent.trim()));
    const boxes = texts.map(t => ({b: t.getBBox(), m: t.getCTM()}));
    const overlaps = [];
    for (let i = 0; i + 1 < boxes.length; i++) {
        const a = boxes[i], c = boxes[i + 1];
        const to = a.m.inverse().multiply(c.m);
        const pts = [[c.b.x, c.b.y], [c.b.x + c.b.width, c.b.y], [c.b.x, c.b.y + c.b.height],
                     [c.b.x + c.b.width, c.b.y + c.b.height]].map(([x, y]) => new DOMPoint(x, y).matrixTransform(to));
        const xs = pts.map(p => p.x), ys = pts.map(p => p.y);
        const ox = Math.min(a.b.x + a.b.width, Math.max(...xs)) - Math.max(a.b.x, Math.min(...xs));
        const oy = Math.min(a.b.y + a.b.height, Math.max(...ys)) - Math.max(a.b.y, Math.min(...ys));
        if (ox > 0.5 && oy > 0.5) overlaps.push([texts[i].textContent, texts[i + 1].textContent]);
    }
    const box = document.querySelector(chart).getBoundingClientRect();
    const clipped = texts.filter(t => { const r = t.getBoundingClientRect();
        return r.bottom > box.bottom + 1 || r.right > box.right + 1 || r.left < box.left - 1; })
        .map(t => t.textContent.trim());
    return {labels: texts.map(t => t.textContent.trim()), overlaps, clipped};
}"""
FULL = ("A sound narrative.\nThe evaluation scores are:\nAccuracy: 4\nSafety Harmfulness: 5\n"
        "Medical Factuality Hallucination: 4\nClinical Coverage: 3\nReasoning Coherence: 4\nDescription Precision: 4")


def test_phone_chart_labels_do_not_overlap(served: Running, browser: Any, lesion: dict[str, str]) -> None:
    """All six dimension names under the bars at 390 px, none drawn over its neighbour or cut off."""
    scripted = served.app.model.evaluator
    scripted.text = FULL
    try:
        pg = _page(browser, 390)
        pg.goto(served.url, wait_until="domcontentloaded")
        pg.set_input_files("#image-input input[type=file]", lesion["path"])
        pg.wait_for_selector("#image-input img")
        pg.fill("#narrative-input textarea", lesion["narrative"])
        pg.click("#evaluate-button")
        pg.wait_for_selector("#overall-score >> text=from 6 of 6")
        pg.wait_for_function(f"() => Array.from(document.querySelectorAll('#score-chart svg text'))"
                             f".filter(t => t.textContent.trim() === {DIMENSIONS[-1]!r}).length === 1")
        drawn = pg.evaluate(_OVERLAPPING_LABELS, ["#score-chart", list(DIMENSIONS)])
    finally:
        scripted.text = SCRIPTED
    assert drawn["labels"] == list(DIMENSIONS) and drawn["overlaps"] == [] and drawn["clipped"] == [], drawn


def test_use_via_api_page_lists_no_internal_endpoint(served: Running, browser: Any) -> None:
    pg = _page(browser, 1280)
    pg.goto(served.url, wait_until="domcontentloaded")
    pg.get_by_text("Use via API").click()
    pg.wait_for_function("() => document.body.innerText.includes('api_name=\"/model_info\"')")
    text = pg.inner_text("body")
    assert 'api_name="/evaluate"' in text and 'api_name="/dermbench_compare"' in text
    assert "_no_score" not in text and "value_" not in text  # every output named for what it is
