"""The real ComfyUI frontend in headless Chromium: a tab runs the example batch and sees it.

Once per ComfyUI x frontend of the matrix (tests/integration/conftest.py). Nothing here
names a CSS class or a component library's markup: the page is read through the frontend's
public API (`window.app`) and found by role and text, so the same test holds on 1.27, 1.35
and 1.58 (1.58 replaced PrimeVue's toast, whose `.p-toast-message` an earlier version used).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from integration.support import browser_comfy_fixture, require_comfyui
from PIL import Image

from comfy_clientid_bridge.tools.launcher import REPO, Comfy

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The README's screenshots come from this test: CIB_UPDATE_SCREENSHOTS=1 writes them to docs/.
UPDATE_SCREENSHOTS = os.environ.get("CIB_UPDATE_SCREENSHOTS") == "1"
IMAGES = 6


def require_comfyui_and_chromium() -> None:
    require_comfyui()
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")


comfy = browser_comfy_fixture(REPO, check=require_comfyui_and_chromium)


@pytest.fixture(scope="module")
def browser(comfy: Comfy) -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def photos(folder: Path, count: int, size: int = 700) -> Path:
    """Noise PNGs, so each iteration takes long enough to watch."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for number in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{number}.png", compress_level=0)
    return folder


def open_tab(browser: Any, url: str) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    # A new user gets the template gallery over the canvas; a returning one does not.
    page.request.post(f"{url}/api/settings/Comfy.TutorialCompleted", data="true")
    page.goto(url)
    page.wait_for_function(
        "window.app && window.app.graph && window.app.vueAppReady", timeout=60_000
    )
    return page


def load_example(page: Any, folder: Path, **saver: Any) -> None:
    workflow = json.loads((REPO / "examples" / "batch_folder.json").read_text())
    workflow["nodes"][0]["widgets_values"][0] = str(folder)
    values = workflow["nodes"][1]["widgets_values"]
    for name, value in saver.items():
        values[
            [
                "format",
                "quality",
                "compress_level",
                "prefix",
                "suffix",
                "subfolder",
                "existing",
                "output_folder",
            ].index(name)
        ] = value
    page.evaluate("workflow => window.app.loadGraphData(workflow)", workflow)
    page.wait_for_timeout(500)


SNAPSHOT = """() => {
  const node = id => window.app.graph.getNodeById(id);
  const images = (window.app.nodeOutputs["2"] || {}).images || [];
  return {
    saver: images.map(i => i.subfolder + "/" + i.filename),
    badge: node(1) ? node(1).cibBadge || null : null,
    all: Object.values(window.app.nodeOutputs || {})
      .flatMap(o => ((o && o.images) || []).map(i => i.filename)),
  };
}"""

# Records every change of what the page shows, every 5 ms, inside the page itself.
RECORD = "() => { window.__cibSeen = []; let last = ''; setInterval(() => {"
RECORD += " const now = (" + SNAPSHOT + ")(); const key = JSON.stringify(now);"
RECORD += " if (key !== last) { last = key; window.__cibSeen.push(now); } }, 5);"
# Every image the saver node was given, as the frontend's own `executed` handler applies it
# (a 5 ms sample could miss one shown for less, when events arrive in a burst).
RECORD += " window.__cibSaver = []; window.app.api.addEventListener('executed', e => {"
RECORD += " if (String(e.detail.node) === '2') for (const i of e.detail.output.images || [])"
RECORD += " window.__cibSaver.push(i.subfolder + '/' + i.filename); });"
# Every execution event this tab received, in order: what a failure message shows.
RECORD += " window.__cibEvents = []; for (const type of ['execution_start', 'executing',"
RECORD += " 'executed', 'execution_cached', 'execution_success', 'execution_error']) {"
RECORD += " window.app.api.addEventListener(type, e => { const d = e.detail;"
RECORD += " window.__cibEvents.push([type, d && d.prompt_id ? d.prompt_id.slice(0, 8) : null,"
RECORD += " d && typeof d === 'object' ? d.node ?? null : d,"
RECORD += " d && d.output ? JSON.stringify(d.output).slice(0, 120) : null]); }); }"
RECORD += " return (" + SNAPSHOT + ")(); }"  # fails the call at once if the snapshot throws


def record(page: Any) -> None:
    page.evaluate(RECORD)


def watch(page: Any, until: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """Every state the page showed (see `record`) until `until(state)` holds."""
    deadline, checked = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        seen: list[dict[str, Any]] = page.evaluate("() => window.__cibSeen")
        if any(until(state) for state in seen[checked:]):
            return seen
        checked = len(seen)
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out at {page.url}; recorded {seen!r:.300}; {story(page)}")


def story(page: Any) -> str:
    """What the page shows now, and every execution event it received (for failure messages)."""
    now = page.evaluate(SNAPSHOT)
    events = page.evaluate("() => window.__cibEvents || []")
    given = page.evaluate("() => window.__cibSaver || []")
    return f"now {now}; saver given {given}; events {json.dumps(events)}"


def wait_until(page: Any, condition: str, timeout: float = 30) -> None:
    """Wait for a JS condition; on timeout, fail with the page's story, not a bare timeout."""
    try:
        page.wait_for_function(condition, timeout=timeout * 1000)
    except playwright_api.TimeoutError:
        raise AssertionError(f"not met in {timeout} s: {condition}; {story(page)}") from None


def test_tab_sees_every_iteration_and_another_user_sees_none(
    comfy: Comfy, browser: Any, tmp_path: Path, own_subfolder: str
) -> None:
    folder = photos(tmp_path / "watched", IMAGES)
    shots = REPO / "docs" if UPDATE_SCREENSHOTS else tmp_path
    tab_a, tab_b = open_tab(browser, comfy.url), open_tab(browser, comfy.url)
    subfolder = "browser" if UPDATE_SCREENSHOTS else own_subfolder  # the README shows "browser"
    load_example(tab_a, folder, subfolder=subfolder, compress_level=9)
    tab_b.evaluate("() => window.app.loadGraphData()")  # B: the default workflow, same node ids
    record(tab_a)
    record(tab_b)
    # The saver names files its worker may not have written yet: every one the tab asks
    # for must be there when it asks (GET /view waits for a save in flight).
    views: list[tuple[str, int]] = []
    tab_a.on(
        "response",
        lambda r: (
            views.append((r.url, r.status)) if "/view?" in r.url and "_out" in r.url else None
        ),
    )
    tab_a.get_by_role("button", name="Run").first.click()

    shot_taken = False

    def mid_run(snapshot: dict[str, Any]) -> bool:
        nonlocal shot_taken
        badge = snapshot["badge"] or ""
        # Mid-run: an image shown and the badge past 1/. Not "at 2/" exactly: on a loaded
        # machine the 5 ms sampler can see the badge go 1/ -> 3/ (ComfyUI 0.3.64, 1.35.9).
        if (
            not shot_taken
            and snapshot["saver"]
            and badge[:1].isdigit()
            and int(badge.split("/")[0]) >= 2
        ):
            tab_a.screenshot(path=str(shots / "batch-running.png"))
            shot_taken = True
        return (snapshot["badge"] or "").startswith("done")

    seen = watch(tab_a, mid_run)
    tab_a.wait_for_timeout(300)
    tab_a.screenshot(path=str(shots / "batch-done.png"))
    other = tab_b.evaluate("() => window.__cibSeen")

    given = tab_a.evaluate("() => window.__cibSaver")
    expected = [f"{subfolder}/p{n}_out.png" for n in range(IMAGES)]
    assert given == expected  # every iteration's image went to the saver node, in turn
    assert seen[-1]["saver"] == [expected[-1]]  # and the last one is shown at the end
    badges = [s["badge"] for s in seen if s["badge"]]
    counts = [int(b.split("/")[0]) for b in badges if not b.startswith("done")]
    assert counts == sorted(counts) and len(set(counts)) >= 3  # the badge counts up
    assert badges[-1] == f"done: {IMAGES} saved, 0 skipped"
    toast_title = tab_a.get_by_text("Batch done", exact=True)  # what a person reads
    toast_title.wait_for(timeout=10_000)
    assert toast_title.count() == 1
    assert tab_a.get_by_text(f"done: {IMAGES} saved, 0 skipped", exact=True).is_visible()
    assert not any("_out" in name for s in other for name in s["all"])  # B never shows A's
    assert shot_taken
    assert views and all(status == 200 for _, status in views), views


def test_outputs_stay_on_their_workflow_across_workflow_tabs(
    comfy: Comfy, browser: Any, tmp_path: Path, own_subfolder: str
) -> None:
    folder = photos(tmp_path / "tabs", 3, size=64)
    tab = open_tab(browser, comfy.url)
    load_example(tab, folder, subfolder=own_subfolder)
    record(tab)
    tab.get_by_role("button", name="Run").first.click()
    watch(tab, lambda s: (s["badge"] or "").startswith("done"), timeout=60)
    # The saver's last image came with the prompt before the "done" one; read through a
    # wait, so that a failure prints every event the tab received.
    last = json.dumps([f"{own_subfolder}/p2_out.png"])
    wait_until(tab, f"() => JSON.stringify(({SNAPSHOT})().saver) === {json.dumps(last)}")
    before = tab.evaluate(SNAPSHOT)["saver"]
    assert before == [f"{own_subfolder}/p2_out.png"]
    path = "() => window.app.extensionManager.workflow.activeWorkflow.path"
    original = tab.evaluate(path)
    tab.evaluate("() => window.app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    tab.wait_for_function(f"({path})() !== {json.dumps(original)}")
    tab.wait_for_timeout(300)
    assert tab.evaluate(SNAPSHOT)["saver"] == []
    tab.evaluate(
        "() => window.app.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')"
    )
    tab.wait_for_function(f"({path})() === {json.dumps(original)}")
    tab.wait_for_timeout(300)
    # The last image, from a re-queued iteration; without the extension this would be the
    # first image, the only one of a prompt this tab queued itself.
    assert tab.evaluate(SNAPSHOT)["saver"] == before


# Where the loader's "Stop batch" button is drawn, in page pixels: the node's position plus
# the widget's offset, through the canvas transform (LiteGraph's DragAndScale).
STOP_BUTTON = """() => {
  const node = window.app.graph.getNodeById(1);
  const widget = node.widgets.find(w => w.name === 'Stop batch');
  const y = widget.last_y ?? widget.y;
  const point = window.app.canvas.ds.convertOffsetToCanvas(
    [node.pos[0] + node.size[0] / 2, node.pos[1] + y + 10]);
  const box = window.app.canvas.canvas.getBoundingClientRect();
  return [box.left + point[0], box.top + point[1]];
}"""


def test_stop_button_stops_the_batch(
    comfy: Comfy, browser: Any, tmp_path: Path, own_subfolder: str
) -> None:
    folder = photos(tmp_path / "stopped", 20, size=900)
    tab = open_tab(browser, comfy.url)
    load_example(tab, folder, subfolder=own_subfolder, compress_level=9)
    record(tab)
    tab.get_by_role("button", name="Run").first.click()
    watch(tab, lambda s: s["saver"] and (s["badge"] or "").split("/")[0] in ("2", "3", "4"))
    x, y = tab.evaluate(STOP_BUTTON)
    tab.mouse.click(x, y)  # a real click on the canvas, where the button is drawn
    tab.wait_for_timeout(3000)
    out = comfy.output / own_subfolder
    saved = sorted(p.name for p in out.glob("*.png"))
    tab.wait_for_timeout(2000)
    assert sorted(p.name for p in out.glob("*.png")) == saved
    assert 2 <= len(saved) < 20
    assert tab.evaluate(SNAPSHOT)["badge"].startswith("stopped")
