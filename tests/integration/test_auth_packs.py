"""Behind a login: loops keep running with liusida/ComfyUI-Login and fofr/comfyui-basic-auth.

The packs are real, fetched from GitHub and never committed: put them in $CIB_AUTH_PACKS
(default ~/comfy/packs) as ComfyUI-Login/ and comfyui-basic-auth/, and install
ComfyUI-Login's requirements into ComfyUI's python (keeping its torch). Without them these
tests skip and say why. ComfyUI-Login keeps its PASSWORD next to ComfyUI's folder_paths.py,
so each server runs from a folder of links to the checkout (`shadow_checkout`): the test
sets a password of its own without touching the shared checkout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from integration.support import require_comfyui

from comfy_clientid_bridge.tools.demo import (
    loop_graph,
    prompts_saving,
    sample_images,
    wait_idle,
)
from comfy_clientid_bridge.tools.launcher import (
    NAIVE_PACK,
    REPO,
    Comfy,
    ComfyCell,
    Tab,
    find_comfyui,
    running_comfyui,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")
PACKS = Path(os.environ.get("CIB_AUTH_PACKS") or Path.home() / "comfy" / "packs")
LOGIN, BASIC = "ComfyUI-Login", "comfyui-basic-auth"
# What each pack needs to be there: a file of its own, and modules its code imports.
NEEDS = {
    LOGIN: ("password.py", "aiohttp_session, bcrypt, jinja2, cryptography"),
    BASIC: ("basic_auth.py", "base64"),
}
USER, PASSWORD = "tester", "pw-" + uuid.uuid4().hex[:12]
IMAGES = 5


@dataclass
class AuthServer:
    """A ComfyUI behind `pack`, and how an API client authenticates to it."""

    pack: str
    comfy: Comfy
    headers: dict[str, str]  # an API client's: Bearer token, or HTTP Basic
    secret: str  # the token or password: must never show in our log lines or status

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(headers=self.headers, **kwargs)


def require_pack(pack: str) -> Path:
    require_comfyui()
    folder = PACKS / pack
    marker, modules = NEEDS[pack]
    if not (folder / marker).is_file():
        pytest.skip(f"auth tier: no {pack} at {folder} (set CIB_AUTH_PACKS)")
    found = find_comfyui()
    assert not isinstance(found, str)
    check = subprocess.run([str(found[1]), "-c", f"import {modules}"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"auth tier: {pack}'s requirements are not installed in {found[1]}")
    return folder


def shadow_checkout(root: Path) -> tuple[Path, Path]:
    """The checkout as links, main.py copied (Python resolves a linked script's folder), so
    `os.path.dirname(folder_paths.__file__)`, where ComfyUI-Login keeps login/PASSWORD,
    is this folder."""
    found = find_comfyui()
    assert not isinstance(found, str)
    checkout, python = found
    shadow = root / "ComfyUI"
    shadow.mkdir()
    for entry in checkout.iterdir():
        if entry.name not in ("main.py", "login"):
            (shadow / entry.name).symlink_to(entry)
    shutil.copy2(checkout / "main.py", shadow / "main.py")
    return shadow, python


@contextmanager
def auth_server(
    root: Path, pack: str, *, env: dict[str, str] | None = None
) -> Iterator[AuthServer]:
    """ComfyUI with our package, the naive re-queue pack and `pack` (a copy: ComfyUI-Login
    writes its session key into its own folder)."""
    copy = shutil.copytree(require_pack(pack), root / "packs" / pack)
    shadow, python = shadow_checkout(root)
    pack_env = {"COMFYUI_USERNAME": USER, "COMFYUI_PASSWORD": PASSWORD} if pack == BASIC else {}
    with running_comfyui(
        root / "comfy",
        packs=[REPO, NAIVE_PACK, copy],
        env={**pack_env, **(env or {})},
        comfyui=(shadow, python),
    ) as comfy:
        if pack == LOGIN:
            in_own_thread(first_login(comfy.url))
            token = (shadow / "login" / "PASSWORD").read_text().splitlines()[0].strip()
            yield AuthServer(pack, comfy, {"Authorization": f"Bearer {token}"}, token)
        else:
            basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            yield AuthServer(pack, comfy, {"Authorization": f"Basic {basic}"}, PASSWORD)


def in_own_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs `coroutine` to its end from synchronous code, even while playwright's sync API
    (a browser fixture of this module) keeps an event loop running on this thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def first_login(url: str) -> None:
    """ComfyUI-Login's first visit: the form's password becomes the password (and the token
    its bcrypt hash, the first line of login/PASSWORD)."""
    async with aiohttp.ClientSession() as session:
        form = {"username": USER, "password": PASSWORD}
        async with session.post(f"{url}/login", data=form, allow_redirects=False) as response:
            assert response.status == 302, await response.text()


@pytest.fixture(scope="module", params=[LOGIN, BASIC])
def auth(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    comfyui_cell: ComfyCell,
) -> Iterator[AuthServer]:
    pack: str = request.param
    require_pack(pack)
    with auth_server(tmp_path_factory.mktemp(pack), pack) as server:
        yield server


def batch_graph(folder: Path, subfolder: str) -> dict[str, Any]:
    graph = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    graph["1"]["inputs"]["folder"] = str(folder)
    graph["2"]["inputs"]["subfolder"] = subfolder
    return graph


@dataclass
class Run:
    tab: Tab
    history: dict[str, Any]


async def run_as_api_client(
    server: AuthServer, graph: dict[str, Any], *, params: dict[str, str] | None = None
) -> Run:
    """A tab-like websocket client and its /prompt, both authenticated, until ComfyUI idles.

    With `params` (ComfyUI-Login's ?token=) the prompt carries the token in its URL instead
    of a header."""
    headers = {} if params else server.headers
    async with server.session() as session:
        tab = await Tab(session, server.comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        body = {"prompt": graph, "client_id": tab.client_id}
        url = f"{server.comfy.url}/api/prompt"
        async with aiohttp.ClientSession(headers=headers) as poster:
            async with poster.post(url, json=body, params=params) as response:
                assert response.status == 200, await response.text()
        await wait_idle(session, server.comfy.url, timeout=180)
        async with session.get(f"{server.comfy.url}/history?max_items=100") as response:
            history = await response.json()
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    return Run(tab, history)


def saved_by(tab: Tab, node: str) -> list[str]:
    return [
        image["filename"]
        for event in tab.of_type("executed")
        if event["node"] == node
        for image in event["output"].get("images", [])
    ]


async def test_api_client_runs_our_batch(
    auth: AuthServer, tmp_path: Path, own_subfolder: str
) -> None:
    folder = sample_images(tmp_path / "in", IMAGES)
    subfolder = f"api_{auth.pack}_{own_subfolder}"
    run = await run_as_api_client(auth, batch_graph(folder, subfolder))
    saved = sorted(p.name for p in (auth.comfy.output / subfolder).glob("*.png"))
    assert saved == [f"sample{n}_out.png" for n in range(1, IMAGES + 1)]
    assert sorted(saved_by(run.tab, "2")) == saved  # and the tab saw every one


async def test_api_client_runs_the_naive_pack(auth: AuthServer) -> None:
    prefix = f"naive_{auth.pack}"
    params = {"token": auth.secret} if auth.pack == LOGIN else None  # ?token= for Login
    run = await run_as_api_client(auth, loop_graph("uuid4", prefix, IMAGES), params=params)
    assert len(prompts_saving(run.history, prefix)) == IMAGES  # every iteration ran
    assert len(saved_by(run.tab, "2")) == IMAGES  # and reached the tab that started it
    assert len(run.tab.of_type("execution_success")) == IMAGES


async def test_a_requeue_from_a_timer_thread_keeps_the_loop_going(auth: AuthServer) -> None:
    """The timer acts for the prompt that started it (docs/threads.md), which has finished
    by the time it fires: it gets that prompt's credentials, and its tab gets the events."""
    prefix = f"timer_{auth.pack}"
    run = await run_as_api_client(auth, loop_graph("timer", prefix, IMAGES))
    assert len(prompts_saving(run.history, prefix)) == IMAGES  # every iteration ran
    assert len(saved_by(run.tab, "2")) == IMAGES  # and reached the tab that started it
    assert "HTTP Error 401" not in auth.comfy.log_text()


@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
@pytest.mark.parametrize("credentials", ["none", "wrong"])
async def test_outside_script_is_still_refused(
    auth: AuthServer, path: str, credentials: str
) -> None:
    headers = {"Authorization": "Bearer wrong" if auth.pack == LOGIN else "Basic d3Jvbmc6d3Jvbmc="}
    async with aiohttp.ClientSession(headers=headers if credentials == "wrong" else {}) as session:
        body = {"prompt": loop_graph("uuid4", "refused", 1)}
        async with session.post(auth.comfy.url + path, json=body) as response:
            assert response.status == 401
        async with session.get(f"{auth.comfy.url}/queue") as response:
            assert response.status == 401


async def test_no_credentials_in_our_log_lines_or_status(auth: AuthServer) -> None:
    async with auth.session() as session:
        async with session.get(f"{auth.comfy.url}/api/clientid_bridge/status") as response:
            status = await response.text()
    assert auth.secret not in status
    ours = [line for line in auth.comfy.log_text().splitlines() if "clientid_bridge" in line]
    assert ours and not [line for line in ours if auth.secret in line]
    assert "comfy_clientid_bridge/" not in auth.comfy.log_text()  # no traceback through us


def test_batch_next_behind_a_login_with_the_bridge_off(tmp_path: Path) -> None:
    """COMFY_CLIENTID_BRIDGE=0 leaves the credentials part on: our loop still runs."""
    folder = sample_images(tmp_path / "in", IMAGES)
    with auth_server(tmp_path, LOGIN, env={"COMFY_CLIENTID_BRIDGE": "0"}) as server:
        run = in_own_thread(run_as_api_client(server, batch_graph(folder, "bridge_off")))
        saved = sorted(p.name for p in (server.comfy.output / "bridge_off").glob("*.png"))
        assert "clientid_bridge: off" in server.comfy.log_text()
    assert len(saved) == IMAGES
    assert len(saved_by(run.tab, "2")) == IMAGES  # Batch Next names its tab itself


@pytest.fixture(scope="module")
def browser(auth: AuthServer) -> Iterator[Any]:
    """Headless Chromium as test_browser.py drives it; imported here, so that without
    playwright only the browser tests skip."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="no playwright")
    from integration.test_browser import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tier: no Chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def logged_in_tab(browser: Any, server: AuthServer) -> Any:
    """A person's tab: ComfyUI-Login's form (it redirects there), or the browser's own
    HTTP Basic prompt for comfyui-basic-auth (answered with the user's name and password)."""
    options: dict[str, Any] = {"viewport": {"width": 1400, "height": 900}}
    if server.pack == BASIC:
        options["http_credentials"] = {"username": USER, "password": PASSWORD}
    page = browser.new_context(**options).new_page()
    page.goto(server.comfy.url)
    if server.pack == LOGIN:
        page.wait_for_url("**/login")
        page.fill("#password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(server.comfy.url + "/")
    page.request.post(f"{server.comfy.url}/api/settings/Comfy.TutorialCompleted", data="true")
    page.reload()
    page.wait_for_function(
        "window.app && window.app.graph && window.app.vueAppReady", timeout=60_000
    )
    return page


def test_person_logged_in_runs_our_batch(
    auth: AuthServer, browser: Any, tmp_path: Path, own_subfolder: str
) -> None:
    from integration.test_browser import load_example, record, watch

    folder = sample_images(tmp_path / "in", IMAGES)
    subfolder = f"browser_{auth.pack}_{own_subfolder}"
    page = logged_in_tab(browser, auth)
    load_example(page, folder, subfolder=subfolder)
    record(page)
    page.get_by_role("button", name="Run").first.click()
    seen = watch(page, lambda state: (state["badge"] or "").startswith("done"), timeout=180)
    saved = sorted(p.name for p in (auth.comfy.output / subfolder).glob("*.png"))
    assert saved == [f"sample{n}_out.png" for n in range(1, IMAGES + 1)]
    assert seen[-1]["badge"] == f"done: {IMAGES} saved, 0 skipped"
    page.context.close()


# The tab queues the naive pack's graph as the frontend queues any: its session's cookie
# (or Basic header) and its own client id; the page counts what reaches it.
QUEUE_NAIVE = """async ([graph, prefix]) => {
  window.__naive = [];
  window.app.api.addEventListener('executed', e => {
    for (const i of (e.detail.output.images || []))
      if (i.filename.startsWith(prefix)) window.__naive.push(i.filename);
  });
  const response = await fetch('/api/prompt', {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({prompt: graph, client_id: window.app.api.clientId})});
  return response.status;
}"""


def test_person_logged_in_runs_the_naive_pack(auth: AuthServer, browser: Any) -> None:
    prefix = f"naive_browser_{auth.pack}"
    page = logged_in_tab(browser, auth)
    assert page.evaluate(QUEUE_NAIVE, [loop_graph("uuid4", prefix, IMAGES), prefix]) == 200
    page.wait_for_function(f"window.__naive.length >= {IMAGES}", timeout=120_000)
    page.wait_for_timeout(1000)  # nothing more arrives
    assert len(page.evaluate("() => window.__naive")) == IMAGES
    assert len(list(auth.comfy.output.glob(f"{prefix}_*.png"))) == IMAGES
    page.context.close()


def test_the_flowing_runner_takes_each_servers_credentials_from_a_file(
    auth: AuthServer, tmp_path: Path, own_subfolder: str
) -> None:
    """Every route the runner uses, behind the pack (upload, prompt, websocket, history,
    view, our uploads route); the secret is in neither the command line, nor its output, nor
    the report, nor the ledger: the file names an environment variable."""
    folder = sample_images(tmp_path / "in", IMAGES)
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps(batch_graph(folder, f"runner_{auth.pack}_{own_subfolder}")))
    secret = {"token": "env:CIB_SECRET"} if auth.pack == LOGIN else {"password": "env:CIB_SECRET"}
    entry = secret if auth.pack == LOGIN else {"user": USER, **secret}
    (tmp_path / "credentials.json").write_text(json.dumps({auth.comfy.url: entry}))
    args = [sys.executable, "-m", "comfy_clientid_bridge", "batch", "--json"]
    args += ["--workflow", str(flow), "--folder", str(folder), "--server", auth.comfy.url]
    args += ["--ledger", str(tmp_path / "state" / "l.sqlite"), "--report", str(tmp_path / "r")]
    args += ["--upload", "--download", str(tmp_path / "local")]
    env = {**os.environ, "CIB_SECRET": auth.secret}
    refused = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "refused our credentials (401)" in refused.stderr

    args += ["--credentials", str(tmp_path / "credentials.json")]
    answer = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert answer.returncode == 0, answer.stderr
    got = sorted(path.name for path in (tmp_path / "local").glob("*.png"))
    assert got == [f"sample{n}_out.png" for n in range(1, IMAGES + 1)]
    for text in (" ".join(args), answer.stdout, answer.stderr, (tmp_path / "r").read_text()):
        assert auth.secret not in text
    for path in (tmp_path / "state").iterdir():  # the ledger, its WAL and lock files
        assert auth.secret.encode() not in path.read_bytes(), path
