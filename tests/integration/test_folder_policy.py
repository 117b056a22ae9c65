"""On a real ComfyUI: the batch nodes' folders on a loopback server and on one reachable
beyond it (`--listen 0.0.0.0`; requests go to 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfy_clientid_bridge.batch.folders import ROOTS_ENV
from comfy_clientid_bridge.tools.demo import post, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, Comfy, ComfyCell, running_comfyui

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "batch_folder.api.json"
PRIVATE = "private"  # beside ComfyUI's folders, in none of them


@pytest.fixture(scope="module", params=["127.0.0.1", "0.0.0.0"], ids=["loopback", "reachable"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    comfyui_cell: ComfyCell,
) -> Iterator[tuple[Comfy, bool]]:
    """A ComfyUI with our package listening on the address, and whether that reaches
    beyond loopback."""
    root = tmp_path_factory.mktemp("policy")
    with running_comfyui(root, packs=[REPO], extra_args=("--listen", request.param)) as running:
        yield running, request.param != "127.0.0.1"


# (id, loader folder, saver output_folder, the setting refused on a reachable server)
CASES: list[tuple[str, str, str, str | None]] = [
    ("inside", "{id}", "", None),
    ("inside-trailing-slash", "{id}/", "", None),
    ("absolute-inside", "{root}/input/{id}", "", None),
    ("dotdot-out", "../private/{id}", "", "folder"),
    ("symlink-pointing-out", "{id}-link", "", "folder"),
    ("absolute-outside", "{root}/private/{id}", "", "folder"),
    ("absolute-outside-trailing-slash", "{root}/private/{id}/", "", "folder"),
    ("case-variant", "{root}/INPUT/{id}", "", "folder"),  # Linux: another folder
    ("saver-outside", "{id}", "{root}/private/{id}-out", "output_folder"),
    ("saver-dotdot-out", "{id}", "{root}/output/../private/{id}-out", "output_folder"),
    ("saver-inside", "{id}", "{root}/output/{id}-out", None),
]


def prepare(comfy: Comfy, case: str) -> None:
    """One image for the case in input, one in the private folder, and a link in input
    pointing at the private one."""
    for folder in (comfy.root / "input" / case, comfy.root / PRIVATE / case):
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / f"{case}.png")
    (comfy.root / "input" / f"{case}-link").symlink_to(comfy.root / PRIVATE / case)


async def run_case(comfy: Comfy, folder: str, output_folder: str) -> dict[str, Any]:
    """Queues loader -> saver -> next once and waits until the queue is idle; the first
    prompt's history entry."""
    graph = json.loads(EXAMPLE.read_text())
    graph["1"]["inputs"]["folder"] = folder
    graph["2"]["inputs"]["output_folder"] = output_folder
    async with aiohttp.ClientSession() as session:
        prompt_id = await post(session, comfy.url, {"prompt": graph, "client_id": uuid.uuid4().hex})
        await wait_idle(session, comfy.url)
        async with session.get(f"{comfy.url}/history/{prompt_id}") as response:
            history: dict[str, Any] = (await response.json())[prompt_id]
    return history


def node_error(history: dict[str, Any]) -> str | None:
    for kind, data in history["status"]["messages"]:
        if kind == "execution_error":
            return str(data["exception_message"])
    return None


@pytest.mark.parametrize(
    ("folder", "output_folder", "refused"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_batch_folders(
    server: tuple[Comfy, bool], folder: str, output_folder: str, refused: str | None
) -> None:
    comfy, reachable = server
    case = uuid.uuid4().hex[:8]
    prepare(comfy, case)
    folder, output_folder = (
        typed.format(root=comfy.root, id=case) for typed in (folder, output_folder)
    )
    history = await asyncio.wait_for(run_case(comfy, folder, output_folder), timeout=300)
    error = node_error(history)
    saved = list(Path(output_folder or comfy.output).rglob(f"{case}_out.png"))
    if reachable and refused:
        assert error is not None and error.startswith(f"{refused} '"), history["status"]
        assert ROOTS_ENV in error and "roots.txt" in error  # the setting that would allow it
        assert saved == []  # nothing written
        assert not (comfy.root / PRIVATE / f"{case}-out").exists()
        return
    if "INPUT" in folder:  # no such folder on a case-sensitive file system: core's error
        assert error is not None and ROOTS_ENV not in error
        return
    assert error is None, error
    assert len(saved) == 1
