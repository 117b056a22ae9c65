"""The naive re-queue loop on a real ComfyUI, watched by a tab, with and without the bridge."""

from __future__ import annotations

import asyncio
import configparser
import json
import logging
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .cli import run_batch as run_cli_batch
from .install_comfyui import (
    DECLINED,
    default_workspace,
    install,
    install_steps,
    question,
    wants_install,
)
from .launcher import (
    NAIVE_PACK,
    REPO,
    Comfy,
    Tab,
    checkout_and_python,
    running_comfyui,
    venv_python,
)

logger = logging.getLogger(__name__)

ITERATIONS = 4
WORKFLOW = {"last_node_id": 3, "nodes": [], "links": [], "extra": {"marker": "tab-a-ui"}}


def loop_graph(mode: str, prefix: str, iterations: int = ITERATIONS) -> dict[str, Any]:
    """EmptyImage -> core SaveImage, and the naive pack's node re-queueing the next colour."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        "3": {
            "class_type": "ClientIdBridgeExampleNaiveRequeue",
            "inputs": {
                "images": ["1", 0],
                "index": 0,
                "total": iterations,
                "mode": mode,
                "color_node": "1",
            },
        },
    }


def single_graph(prefix: str) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(f"{url}/api/prompt", json=body) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"ComfyUI refused the prompt: {answer}")
        return str(answer["prompt_id"])


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 90) -> None:
    """Queue empty three polls in a row (longer than the timer mode's 0.2 s delay)."""
    loop = asyncio.get_running_loop()
    quiet, deadline = 0, loop.time() + timeout
    while quiet < 3:
        if loop.time() > deadline:
            raise TimeoutError("ComfyUI's queue never went idle")
        async with session.get(f"{url}/queue") as response:
            queue = await response.json()
        quiet = 0 if queue["queue_running"] or queue["queue_pending"] else quiet + 1
        await asyncio.sleep(0.3)


def prompts_saving(entries: dict[str, Any], prefix: str) -> dict[str, Any]:
    """History entries whose SaveImage (node "2") used `prefix`."""
    return {
        prompt_id: entry
        for prompt_id, entry in entries.items()
        if entry["prompt"][2].get("2", {}).get("inputs", {}).get("filename_prefix") == prefix
    }


@dataclass
class BatchRun:
    tab_a: Tab
    tab_b: Tab
    outside_prompt_id: str
    batch: dict[str, Any]  # prompt id -> history entry, for every iteration that ran
    prefix: str


async def run_batch(comfy: Comfy, mode: str) -> BatchRun:
    """Tab A starts a batch, tab B idles, an outside script queues its own prompt midway."""
    prefix = f"A_{mode}_{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        tab_a = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        tab_b = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (tab_a, tab_b)]
        extra = {"extra_pnginfo": {"workflow": WORKFLOW}, "api_key_comfy_org": "secret"}
        body = {
            "prompt": loop_graph(mode, prefix),
            "client_id": tab_a.client_id,
            "extra_data": extra,
        }
        await post(session, comfy.url, body)
        await asyncio.sleep(0.1)
        outside = await post(session, comfy.url, {"prompt": single_graph(f"OUT_{prefix}")})
        entries = await _settled_history(session, comfy.url, prefix)
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return BatchRun(tab_a, tab_b, outside, prompts_saving(entries, prefix), prefix)


async def _settled_history(
    session: aiohttp.ClientSession, url: str, prefix: str, timeout: float = 90
) -> dict[str, Any]:
    """History once the loop has run all its iterations: an idle queue is not enough, a
    timer-mode re-queue leaves it empty for 0.2 s between iterations."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        await wait_idle(session, url)
        async with session.get(f"{url}/history?max_items=200") as response:
            entries: dict[str, Any] = await response.json()
        if len(prompts_saving(entries, prefix)) >= ITERATIONS:
            return entries
        if asyncio.get_running_loop().time() > deadline:
            return entries  # the caller's assertions say what is missing
        await asyncio.sleep(0.3)


def images_seen(run: BatchRun) -> int:
    return len([e for e in run.tab_a.of_type("executed") if e["node"] == "2"])


def sample_images(folder: Path, count: int = 8) -> Path:
    """Small gradient pictures to run the example batch on."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:256, 0:320]
    for number in range(count):
        pixels = np.stack([(x + 30 * number) % 256, y, (x + y) // 2 % 256], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"sample{number + 1}.png")
    return folder


# ------------------------------------------------------------ where a user's ComfyUI is


@dataclass(frozen=True)
class Place:
    """Somewhere a ComfyUI may be: what pointed there, the checkout, its python if known."""

    source: str
    checkout: Path
    python: Path | None = None


def comfy_cli_config(home: Path, system: str) -> Path:
    """comfy-cli's config.ini (comfy_cli/constants.py DEFAULT_CONFIG, per OS)."""
    folder = {
        "win32": home / "AppData" / "Local" / "comfy-cli",
        "darwin": home / "Library" / "Application Support" / "comfy-cli",
    }.get(system, home / ".config" / "comfy-cli")
    return folder / "config.ini"


def comfy_cli_places(config: Path) -> list[Place]:
    """The workspaces comfy-cli remembers: `default_workspace` (comfy set-default) and
    `recent_workspace`, in its [DEFAULT] section. A workspace is the checkout itself
    (comfy-cli 1.x) or holds it as ComfyUI/ (older releases)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(config, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return []
    places = []
    for key in ("default_workspace", "recent_workspace"):
        value = parser["DEFAULT"].get(key, "").strip()
        if value:
            workspace = Path(value).expanduser()
            if not (workspace / "main.py").is_file() and (workspace / "ComfyUI").is_dir():
                workspace = workspace / "ComfyUI"
            places.append(Place(f"comfy-cli {key} ({config})", workspace))
    return places


def desktop_places(home: Path, environ: Mapping[str, str], system: str) -> list[Place]:
    """ComfyUI Desktop: the code sits in the app's resources/ComfyUI, the venv in the base
    path chosen at install (`basePath` in the app's config.json, Comfy-Org/desktop
    src/store/desktopSettings.ts). Desktop ships for Windows and macOS."""
    if system == "win32":
        appdata = Path(environ.get("APPDATA") or home / "AppData" / "Roaming")
        programs = Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "Programs"
        config = appdata / "ComfyUI" / "config.json"
        apps = [
            programs / name / "resources"
            for name in ("@comfyorgcomfyui-electron", "comfyui-electron")
        ]
    elif system == "darwin":
        config = home / "Library" / "Application Support" / "ComfyUI" / "config.json"
        apps = [
            root / "ComfyUI.app" / "Contents" / "Resources"
            for root in (Path("/Applications"), home / "Applications")
        ]
    else:
        return []
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("basePath")
    except (OSError, ValueError, AttributeError):
        base = None
    python = venv_python(Path(base)) if isinstance(base, str) and base else None
    return [Place(f"ComfyUI Desktop ({config})", app / "ComfyUI", python) for app in apps]


def portable_places(home: Path, environ: Mapping[str, str], system: str) -> list[Place]:
    """The Windows portable build, unzipped where people unzip things: its ComfyUI/ next to
    the python_embeded/ it runs with."""
    roots = [home, home / "Desktop", home / "Downloads", home / "Documents"]
    if system == "win32":
        roots.append(Path(environ.get("SystemDrive", "C:") + "\\"))
    places = []
    for root in roots:
        portable = root / "ComfyUI_windows_portable"
        python = portable / "python_embeded" / "python.exe"
        places.append(Place("ComfyUI portable", portable / "ComfyUI", python))
    return places


def comfyui_places(
    explicit: Path | None,
    environ: Mapping[str, str] = os.environ,
    home: Path | None = None,
    system: str = sys.platform,
) -> list[Place]:
    """Where to look, in order. `--comfyui PATH` alone when given: never another ComfyUI
    than the one asked for."""
    python = Path(environ["COMFYUI_PYTHON"]) if environ.get("COMFYUI_PYTHON") else None
    if explicit is not None:
        return [Place("--comfyui", explicit.expanduser(), python)]
    home = home or Path.home()
    places = []
    if environ.get("COMFYUI_PATH"):
        places.append(Place("$COMFYUI_PATH", Path(environ["COMFYUI_PATH"]), python))
    places.append(Place("comfy-cli's default workspace", home / "comfy" / "ComfyUI", python))
    places += comfy_cli_places(comfy_cli_config(home, system))
    places += desktop_places(home, environ, system)
    places += portable_places(home, environ, system)
    return places


def missing_configs(
    environ: Mapping[str, str] = os.environ, home: Path | None = None, system: str = sys.platform
) -> list[str]:
    """The tools' config files that were looked for and are not there: worth saying, since
    a missing one explains why its ComfyUI was not found."""
    home = home or Path.home()
    configs = {"comfy-cli config": comfy_cli_config(home, system)}
    if system == "win32":
        appdata = Path(environ.get("APPDATA") or home / "AppData" / "Roaming")
        configs["ComfyUI Desktop config"] = appdata / "ComfyUI" / "config.json"
    elif system == "darwin":
        configs["ComfyUI Desktop config"] = (
            home / "Library" / "Application Support" / "ComfyUI" / "config.json"
        )
    return [f"{name}: none at {path}" for name, path in configs.items() if not path.is_file()]


def locate_comfyui(places: list[Place]) -> tuple[tuple[Path, Path] | None, list[str]]:
    """The first place with a checkout and its python, and what each place looked at was."""
    looked: list[str] = []
    for place in places:
        found = checkout_and_python(place.checkout, place.python)
        if isinstance(found, tuple):
            return found, looked
        looked.append(f"{place.source}: {found.split(' (set ')[0]}")
    return None, looked


PYTHON_CHECK_TIMEOUT = 300.0  # a cold torch import from a slow disk takes a while


def python_problem(python: Path, timeout: float = PYTHON_CHECK_TIMEOUT) -> str | None:
    """Why this python cannot run ComfyUI (torch or aiohttp missing), or None."""
    try:
        done = subprocess.run(
            [str(python), "-c", "import torch, aiohttp"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python} could not be run: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        return f"{python} cannot import torch and aiohttp ({last})"
    return None


GET_COMFYUI = """To get a ComfyUI (CPU only): run the demo again with --install, or with comfy-cli:
  pipx install comfy-cli      # or: python3 -m pip install --user comfy-cli
  comfy --skip-prompt --workspace ~/comfy/ComfyUI install --cpu --version 0.8.0
  python -m comfy_clientid_bridge demo --comfyui ~/comfy/ComfyUI
If comfy-cli installed ComfyUI's packages into another Python than ~/comfy/ComfyUI/.venv,
point COMFYUI_PYTHON at that python."""


def not_found(looked: list[str]) -> str:
    lines = "\n".join(f"  {entry}" for entry in looked)
    return f"demo: no ComfyUI found. Looked at:\n{lines}\n{GET_COMFYUI}"


def ready_comfyui(
    explicit: Path | None,
    *,
    install_wanted: bool = False,
    interactive: bool = False,
    ask: Callable[[str], str] = input,
) -> tuple[Path, Path] | str:
    """The ComfyUI to run the demo on, checked; else what to tell the user. With none found,
    one is installed where it is looked for first (`--comfyui`, else comfy-cli's default),
    when --install says so or the user, asked on a terminal, does."""
    found, looked = locate_comfyui(comfyui_places(explicit))
    if found is None:
        message = not_found(looked + ([] if explicit else missing_configs()))
        target = explicit.expanduser() if explicit else default_workspace()
        if not wants_install(install_wanted, interactive, ask, question(target)):
            return f"{message}\n{DECLINED}" if interactive else message
        failure = install(target, install_steps(target))
        if failure is not None:
            return f"demo: installing ComfyUI failed: {failure}\n{message}"
        found, looked = locate_comfyui(comfyui_places(explicit))
        if found is None:
            return not_found(looked)
    problem = python_problem(found[1])
    if problem:
        return f"demo: ComfyUI at {found[0]}, but {problem}.\n{GET_COMFYUI}"
    return found


async def _demo(compare: bool, comfyui: tuple[Path, Path]) -> int:
    found = comfyui
    root = Path(tempfile.mkdtemp(prefix="clientid-bridge-demo-"))
    folder = sample_images(root / "samples")
    workflow = json.loads((REPO / "examples" / "batch_folder.api.json").read_text())
    logger.info("ComfyUI %s, starting with comfy_clientid_bridge ...", found[0])
    with running_comfyui(root / "comfy", packs=[REPO, NAIVE_PACK], comfyui=found) as comfy:
        logger.info("Batch: examples/batch_folder.api.json over %s", folder)
        status = await run_cli_batch(comfy.url, workflow, folder, out=sys.stdout)
        logger.info("outputs: %s", comfy.output / "batch")
        run = await run_batch(comfy, "uuid4")
        logger.info(
            "A pack re-queueing the naive way (fresh uuid4 client_id): "
            "the tab that started it saw %d of %d images",
            images_seen(run),
            len(run.batch),
        )
    if compare:
        with running_comfyui(root / "plain", packs=[NAIVE_PACK], comfyui=found) as comfy:
            run = await run_batch(comfy, "uuid4")
            logger.info(
                "The same without comfy_clientid_bridge: %d of %d", images_seen(run), len(run.batch)
            )
    logger.info("ComfyUI shut down.")
    return status


def demo(
    compare: bool = False,
    comfyui: Path | None = None,
    *,
    install_wanted: bool = False,
    interactive: bool = False,
    ask: Callable[[str], str] = input,
) -> int:
    """Exit status: the batch's; 2 when no ComfyUI that can run is found or installed (and
    says where it looked and how to get one)."""
    found = ready_comfyui(comfyui, install_wanted=install_wanted, interactive=interactive, ask=ask)
    if isinstance(found, str):
        logger.error("%s", found)
        return 2
    return asyncio.run(_demo(compare, found))
