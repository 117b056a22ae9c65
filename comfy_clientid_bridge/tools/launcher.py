"""Finds, starts and talks to a real ComfyUI: for the demo and the integration tier."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..internals import READY_LOG_LINE

REPO = Path(__file__).resolve().parents[2]
# What other packs do: re-queue the next iteration by POSTing /prompt from node code.
NAIVE_PACK = REPO / "examples" / "naive_requeue_pack"
BOOT_TIMEOUT = 120.0


def find_comfyui() -> tuple[Path, Path] | str:
    """(checkout, python) from $COMFYUI_PATH / $COMFYUI_PYTHON or comfy-cli's default; else why not."""
    checkout = Path(os.environ.get("COMFYUI_PATH") or Path.home() / "comfy" / "ComfyUI")
    if not (checkout / "main.py").is_file():
        return f"no ComfyUI checkout at {checkout} (set COMFYUI_PATH)"
    python = Path(os.environ.get("COMFYUI_PYTHON") or checkout / ".venv" / "bin" / "python")
    if not python.is_file():
        return f"no python for ComfyUI at {python} (set COMFYUI_PYTHON)"
    return checkout, python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Comfy:
    url: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def output(self) -> Path:
        return self.root / "output"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_comfyui(
    root: Path,
    *,
    packs: list[Path],
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Comfy]:
    """ComfyUI on a free loopback port with its own folders and the given custom node packs."""
    found = find_comfyui()
    if isinstance(found, str):
        raise RuntimeError(found)
    checkout, python = found
    nodes = root / "custom_nodes"
    for name in ("input", "output", "user", "custom_nodes"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for pack in packs:
        link = nodes / pack.name
        if not link.is_symlink():  # a restart on the same root keeps its links
            link.symlink_to(pack, target_is_directory=True)
    config = root / "extra_model_paths.yaml"
    config.write_text(f"tests:\n  custom_nodes: {nodes}\n")
    port = free_port()
    log = root / "comfyui.log"
    command = [
        str(python),
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--output-directory",
        str(root / "output"),
        "--input-directory",
        str(root / "input"),
        "--user-directory",
        str(root / "user"),
        # ComfyUI empties <temp>/temp at start and exit: not the checkout's shared one.
        "--temp-directory",
        str(root),
        "--extra-model-paths-config",
        str(config),
        "--database-url",
        f"sqlite:///{root / 'comfyui.db'}",
        *extra_args,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=checkout,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    comfy = Comfy(f"http://127.0.0.1:{port}", root, log, process)
    try:
        wait_until_up(comfy)
        yield comfy
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_up(comfy: Comfy) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if comfy.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited:\n{comfy.log_text()[-3000:]}")
        if READY_LOG_LINE in comfy.log_text():
            return
        time.sleep(0.2)
    raise RuntimeError(f"ComfyUI did not start in {BOOT_TIMEOUT} s:\n{comfy.log_text()[-3000:]}")


class Tab:
    """A websocket client as a browser tab opens it: /ws?clientId=<id>, events recorded."""

    def __init__(self, session: aiohttp.ClientSession, url: str, client_id: str) -> None:
        self.session, self.url, self.client_id = session, url, client_id
        self.events: list[dict[str, Any]] = []
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None

    async def open(self) -> Tab:
        ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}")
        self._ws = ws
        first = await ws.receive_json(timeout=10)
        if first.get("type") != "status":
            raise RuntimeError(f"unexpected first websocket message: {first!r}")
        return self

    async def listen(self) -> None:
        if self._ws is None:
            raise RuntimeError("open() the tab first")
        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(message.data))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event["data"] for event in self.events if event["type"] == kind]

    def prompt_ids(self, kinds: frozenset[str] | None = None) -> set[str]:
        """Prompts this tab heard of, in events of `kinds` (all kinds when None)."""
        return {
            event["data"]["prompt_id"]
            for event in self.events
            if (kinds is None or event["type"] in kinds) and "prompt_id" in event.get("data", {})
        }


# Events core ComfyUI sends to the prompt's client only (execution.py, main.py). Core
# broadcasts progress/progress_state of prompts that have no client_id to every tab.
ROUTED = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "executed",
        "execution_success",
        "execution_error",
    }
)
