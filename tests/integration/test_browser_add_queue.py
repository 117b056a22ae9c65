"""The `impact-add-queue` convention in the real frontend, two browser contexts on one ComfyUI.

Tab A runs a workflow whose node sends `impact-add-queue` (as the Impact Pack's "Queue
Trigger (Countdown)" does) and a web extension answers it with `app.queuePrompt(0, 1)`, as
the Impact Pack's does (tests/integration/packs/add_queue_pack). Tab B idles with another
workflow loaded. With our package only tab A queues its next runs; without it, tab B queues
one run of its own workflow per message too.

Prompts are counted in /history by each tab's client id (`window.app.api.clientId`); the
page is read through `window.app` and the Run button found by role and name.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.support import browser_comfy_fixture, require_comfyui

from comfy_clientid_bridge.tools.launcher import REPO, Comfy

pytestmark = pytest.mark.integration
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PACK = Path(__file__).parent / "packs" / "add_queue_pack"
RUNS = 3  # the countdown's total: tab A's first run asks for RUNS - 1 more


def require_comfyui_and_chromium() -> None:
    require_comfyui()
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")


with_package = browser_comfy_fixture(REPO, PACK, check=require_comfyui_and_chromium)
without_package = browser_comfy_fixture(PACK, check=require_comfyui_and_chromium)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def ui_workflow(node_type: str, widgets: list[Any]) -> dict[str, Any]:
    """A one-node workflow in the frontend's format (what app.loadGraphData takes)."""
    node = {"id": 1, "type": node_type, "pos": [200, 200], "size": [320, 100], "flags": {}}
    node.update(order=0, mode=0, inputs=[], outputs=[], properties={}, widgets_values=widgets)
    return {"last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4}


# Counts the tab's queuePrompt calls (the extension's and the Run button's) and the
# `impact-add-queue` messages it receives; returns the tab's client id.
INSTRUMENT = """() => {
  const app = window.app, original = app.queuePrompt.bind(app);
  window.__cibQueue = {called: 0, settled: 0, messages: 0};
  app.api.addEventListener('impact-add-queue', () => window.__cibQueue.messages++);
  app.queuePrompt = async (...args) => {
    window.__cibQueue.called++;
    try { return await original(...args); } finally { window.__cibQueue.settled++; }
  };
  return app.api.clientId;
}"""


@dataclass
class Tab:
    page: Any
    client_id: str

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.page.evaluate("() => window.__cibQueue")
        return counters


def open_tab(browser: Any, url: str, workflow: dict[str, Any]) -> Tab:
    """A new browser context (a user of its own) with `workflow` loaded and instrumented."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.request.post(f"{url}/api/settings/Comfy.TutorialCompleted", data="true")
    page.goto(url)
    page.wait_for_function(
        "window.app && window.app.graph && window.app.vueAppReady", timeout=60_000
    )
    page.evaluate("workflow => window.app.loadGraphData(workflow)", workflow)
    page.wait_for_function("() => window.app.graph.getNodeById(1) !== null")
    return Tab(page, page.evaluate(INSTRUMENT))


def history(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/history?max_items=200", timeout=10) as response:
        entries: dict[str, Any] = json.load(response)
    return list(entries.values())


def queue_empty(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/queue", timeout=10) as response:
        queue = json.load(response)
    return not queue["queue_running"] and not queue["queue_pending"]


def prompts_of(entries: list[dict[str, Any]], tab: Tab) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["prompt"][3].get("client_id") == tab.client_id]


def settled(url: str, tabs: tuple[Tab, Tab]) -> bool:
    """Tab A's countdown ran out, the queue is empty and every queuePrompt call of each tab
    is in the history (a state, not a sleep)."""
    entries = history(url)
    if len(prompts_of(entries, tabs[0])) < RUNS or not queue_empty(url):
        return False
    for tab in tabs:
        counters = tab.counters()
        if counters["called"] != counters["settled"]:
            return False
        if len(prompts_of(entries, tab)) != counters["called"]:
            return False
    return True


@dataclass
class Outcome:
    tab_a: list[dict[str, Any]]  # history entries of the prompts each tab queued
    tab_b: list[dict[str, Any]]
    messages_a: int  # impact-add-queue messages each tab received
    messages_b: int

    def counts(self) -> list[int]:
        """The countdown's `count` input of tab A's runs, in run order."""
        runs = sorted(self.tab_a, key=lambda entry: entry["prompt"][0])
        return [int(entry["prompt"][2]["1"]["inputs"]["count"]) for entry in runs]


def run_countdown(comfy: Comfy, browser: Any, timeout: float = 120) -> Outcome:
    """Tab A clicks Run on the countdown workflow; tab B idles with another workflow loaded."""
    tab_a = open_tab(browser, comfy.url, ui_workflow("CIBAddQueueCountdown", [0, RUNS]))
    tab_b = open_tab(browser, comfy.url, ui_workflow("CIBAddQueueMark", ["tab-b"]))
    try:
        tab_a.page.get_by_role("button", name="Run").first.click()
        deadline = time.monotonic() + timeout
        while not settled(comfy.url, (tab_a, tab_b)):
            if time.monotonic() > deadline:
                state = [tab.counters() for tab in (tab_a, tab_b)]
                raise AssertionError(f"not settled in {timeout} s: {state}")
            time.sleep(0.3)
        entries = history(comfy.url)
        return Outcome(
            prompts_of(entries, tab_a),
            prompts_of(entries, tab_b),
            tab_a.counters()["messages"],
            tab_b.counters()["messages"],
        )
    finally:
        for tab in (tab_a, tab_b):
            tab.page.context.close()


def test_with_the_package_only_tab_a_queues_its_next_runs(
    with_package: Comfy, browser: Any
) -> None:
    outcome = run_countdown(with_package, browser)
    assert outcome.counts() == list(range(RUNS))  # the loop ran to its end, in tab A
    assert outcome.messages_a == RUNS - 1
    assert outcome.tab_b == [] and outcome.messages_b == 0


def test_control_without_the_package_tab_b_queues_too(without_package: Comfy, browser: Any) -> None:
    outcome = run_countdown(without_package, browser)
    assert outcome.counts() == list(range(RUNS))
    assert outcome.messages_b == RUNS - 1
    assert len(outcome.tab_b) == RUNS - 1  # one run of its own workflow per message
    assert {entry["prompt"][2]["1"]["class_type"] for entry in outcome.tab_b} == {"CIBAddQueueMark"}
