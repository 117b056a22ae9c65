"""The real ComfyUI frontend in headless Chromium: a tab runs the example batch and sees it.

Once per ComfyUI x frontend of the matrix (tests/integration/conftest.py). Nothing here
names a CSS class or a component library's markup: the page is read through the frontend's
public API (`window.app`) and found by role and text, so the same test holds on 1.27, 1.35
and 1.58 (1.58 replaced PrimeVue's toast, whose `.p-toast-message` an earlier version used).
"""

from __future__ import annotations

import atexit
import io
import itertools
import json
import os
import shutil
import tempfile
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


# The pack under the folder name a user's clone gets, so the frontend's pack badge (and so
# the docs' pictures) names it as users see it, whatever this checkout's folder is called.
PACK = Path(tempfile.mkdtemp(prefix="cib-browser-")) / "comfy-clientid-bridge"
PACK.symlink_to(REPO, target_is_directory=True)
atexit.register(shutil.rmtree, PACK.parent, ignore_errors=True)  # removes the link, not REPO
comfy = browser_comfy_fixture(PACK, check=require_comfyui_and_chromium)


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


def open_tab(browser: Any, url: str, **settings: Any) -> Any:
    """A tab of the frontend, after the user settings given (read once as the page loads)."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    # A new user gets the template gallery over the canvas; a returning one does not.
    page.request.post(f"{url}/api/settings/Comfy.TutorialCompleted", data="true")
    for name, value in settings.items():
        page.request.post(f"{url}/api/settings/{name}", data=json.dumps(value))
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
    # Room above the loader's title for its badge (the canvas puts the graph at the top).
    page.evaluate(
        "() => { const ds = window.app.canvas.ds; ds.offset[0] += 40; ds.offset[1] += 60;"
        " window.app.canvas.setDirty(true, true); }"
    )
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
    # The toast's detail: the innermost element holding both lines (Batch Next shows the
    # same text on the node).
    detail = tab_a.get_by_text(f"done: {IMAGES} saved, 0 skipped", exact=True)
    assert tab_a.locator("*", has=toast_title).filter(has=detail).last.is_visible()
    assert not any("_out" in name for s in other for name in s["all"])  # B never shows A's
    # nor its nodes' text (core's progress_text, which core itself sends to every tab)
    texts_b = "() => window.app.graph._nodes.flatMap(n => (n.widgets || []).map(w => w.value))"
    assert not [text for text in tab_b.evaluate(texts_b) if f"/{IMAGES} " in str(text)]
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


NODES_2 = "Comfy.VueNodes.Enabled"  # "Modern Node Design (Nodes 2.0)" in the settings

# Where the batch's state shows, in page pixels ([left, top, width, height]), for the nodes
# given ({node id: the text it should show}), and what it must not cover: the node's title
# and its input labels. Nodes 2.0 renders nodes as elements with `data-node-id`: their boxes
# are measured. The classic canvas draws them: their boxes come from the node's geometry
# (LiteGraph's title height, getConnectionPos) through the canvas transform. Either way the
# text is an element (core's progress-text widget), found by its exact text inside the node's
# box, never inside a toast (an ARIA alert/status/live region).
LAYOUT = """(texts) => {
  const app = window.app, ds = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
  const where = app.canvas.canvas.getBoundingClientRect();
  const graphBox = (x, y, w, h) => {
    const p = ds.convertOffsetToCanvas([x, y]);
    return [where.left + p[0], where.top + p[1], w * ds.scale, h * ds.scale];
  };
  const boxOf = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
  const leaves = (root, text) => [...root.querySelectorAll("*")].filter(e =>
    e.childElementCount === 0 && e.textContent.trim() === text && e.checkVisibility()
    && !e.closest("[role=alert],[role=status],[aria-live]"));
  const inside = (b, n) => b[2] > 0 && b[3] > 0 && b[0] >= n[0] - 1 && b[1] >= n[1] - 1
    && b[0] + b[2] <= n[0] + n[2] + 1 && b[1] + b[3] <= n[1] + n[3] + 1;
  const layout = {};
  for (const [id, text] of Object.entries(texts)) {
    const node = app.graph.getNodeById(Number(id));
    const element = document.querySelector(`[data-node-id="${id}"]`);
    const names = (node.inputs || []).map(i => i.label || i.localized_name || i.name);
    const box = element ? boxOf(element)
      : graphBox(node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title);
    const heading = element ? leaves(element, node.title).map(boxOf)
      : [graphBox(node.pos[0], node.pos[1] - title, node.size[0], title)];
    const labels = element ? names.flatMap(name => leaves(element, name).map(boxOf))
      : (node.inputs || []).map((input, i) => {
          const [x, y] = node.getConnectionPos(true, i);
          return graphBox(x, y - 8, node.pos[0] + node.size[0] / 2 - x, 16);
        });
    const shown = leaves(document.body, text).map(boxOf).filter(b => inside(b, box));
    layout[id] = { box, heading, labels, shown, vue: !!element };
  }
  return layout;
}"""

# The classic canvas's pixels of a colour around a node's title bar: where the badge is drawn.
BADGE_PIXELS = """([id, rgb]) => {
  const app = window.app, ds = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
  app.canvas.draw(true, true);
  const canvas = app.canvas.canvas, where = canvas.getBoundingClientRect();
  const ratio = canvas.width / where.width, node = app.graph.getNodeById(id);
  const [left, top] = ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title - 40]);
  const width = node.size[0] * ds.scale, height = (title + 40) * ds.scale;
  const data = canvas.getContext("2d").getImageData(
    left * ratio, top * ratio, width * ratio, height * ratio).data;
  let count = 0, lowest = -1;
  for (let i = 0; i < data.length; i += 4) {
    if (Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]) > 24) continue;
    count += 1;
    lowest = Math.max(lowest, Math.floor(i / 4 / (width * ratio)) / ratio);
  }
  return { count, bottom: where.top + top + lowest, titleTop: where.top + top + 40 * ds.scale };
}"""
DONE_GREEN = [0x2E, 0x7D, 0x32]  # the badge's colour once a batch is done (web extension)


def overlap(a: list[float], b: list[float]) -> bool:
    """Whether two [left, top, width, height] boxes share more than a pixel's edge."""
    return (a[0] + 1 < b[0] + b[2] and b[0] + 1 < a[0] + a[2] and a[1] + 1 < b[1] + b[3]) and b[
        1
    ] + 1 < a[1] + a[3]


def frontend_version(page: Any) -> tuple[int, ...]:
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || '0'")
    return tuple(int(part) for part in str(version).split(".")[:3] if part.isdigit())


def shoot_nodes(tab: Any, layout: dict[str, Any], path: Path) -> None:
    """The docs' picture: the loader, progress and next nodes with their badge and texts,
    once the toast that covers the top right has gone."""
    tab.get_by_text("Batch done", exact=True).wait_for(state="hidden", timeout=20_000)
    boxes = [part["box"] for part in layout.values()] + [*layout["1"]["shown"]]
    left, top = max(0, min(b[0] for b in boxes) - 10), max(0, min(b[1] for b in boxes) - 30)
    right, bottom = max(b[0] + b[2] for b in boxes) + 10, max(b[1] + b[3] for b in boxes) + 10
    clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
    shot = Image.open(io.BytesIO(tab.screenshot(clip=clip)))
    shot.quantize(colors=128).save(path, optimize=True)  # a third of the size, same look


@pytest.mark.parametrize("nodes_2", [False, True], ids=["classic", "nodes-2"])
def test_badge_and_node_texts_show_and_cover_no_title_or_label(
    comfy: Comfy, browser: Any, tmp_path: Path, own_subfolder: str, nodes_2: bool
) -> None:
    folder = photos(tmp_path / "layout", 3, size=64)
    tab = open_tab(browser, comfy.url, **{NODES_2: nodes_2})
    try:
        if nodes_2 and frontend_version(tab) < (1, 35):
            pytest.skip("frontend 1.27's Nodes 2.0 preview shows no node badges nor node text")
        assert (
            tab.evaluate(f"() => window.app.extensionManager.setting.get('{NODES_2}')") is nodes_2
        )
        load_example(tab, folder, subfolder=own_subfolder)
        record(tab)
        tab.get_by_role("button", name="Run").first.click()
        watch(tab, lambda s: (s["badge"] or "").startswith("done"), timeout=60)
        done = "done: 3 saved, 0 skipped"
        # The progress node ran beside the saver: before it saved the last image or after.
        last_progress = "() => (window.app.graph.getNodeById(3).widgets || [])"
        last_progress += ".map(w => String(w.value)).find(v => /^[23]\\/3 /.test(v))"
        wait_until(tab, last_progress)
        texts = {"1": done, "3": tab.evaluate(last_progress), "4": done}
        tab.wait_for_timeout(500)  # the widgets' elements follow the values a frame later
        layout = tab.evaluate(LAYOUT, texts)
        shot_name = "nodes-2.png" if nodes_2 else "nodes-classic.png"
        if UPDATE_SCREENSHOTS and frontend_version(tab) >= (1, 58):
            shoot_nodes(tab, layout, REPO / "docs" / shot_name)
    finally:
        tab.request.post(f"{comfy.url}/api/settings/{NODES_2}", data="false")
    assert all(part["vue"] is nodes_2 for part in layout.values()), layout
    for node_id in ("3", "4") if not nodes_2 else ("1", "3", "4"):
        part = layout[node_id]
        assert part["shown"], f"node {node_id} shows no {texts[node_id]!r}: {layout}"
        for covered in part["heading"] + part["labels"]:
            assert not overlap(part["shown"][0], covered), (node_id, covered, layout)
    if not nodes_2:  # the canvas draws the badge: its pixels, above the title bar
        pixels = tab.evaluate(BADGE_PIXELS, [1, DONE_GREEN])
        assert pixels["count"] > 100, pixels
        assert pixels["bottom"] <= pixels["titleTop"], pixels
    nodes = [layout[id]["box"] for id in ("1", "3", "4")]
    assert not any(overlap(a, b) for a, b in itertools.combinations(nodes, 2)), layout
    if nodes_2:  # the Stop button is an element here: a person's click reaches the extension
        tab.get_by_role("button", name="Stop batch").click()
        tab.get_by_text("Batch stopped", exact=True).wait_for(timeout=10_000)
        stopped = {"1": "stopped: 3/3"}  # and the badge row shows the new text
        wait_until(tab, f"() => ({LAYOUT})({json.dumps(stopped)})['1'].shown.length === 1")
