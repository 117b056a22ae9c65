"""Finds, starts and talks to a real ComfyUI: for the demo and the integration tier."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..internals import READY_LOG_LINE
from .install_comfyui import unfinished_marker

REPO = Path(__file__).resolve().parents[2]
# What other packs do: re-queue the next iteration by POSTing /prompt from node code.
NAIVE_PACK = REPO / "examples" / "naive_requeue_pack"
# Boot waits on the ready line, and fails at once if ComfyUI exits; the limit only catches a
# hang. Generous: with other servers starting on a loaded 2-core machine, boot took > 120 s.
BOOT_TIMEOUT = 600.0


def find_comfyui() -> tuple[Path, Path] | str:
    """(checkout, python) from $COMFYUI_PATH / $COMFYUI_PYTHON or comfy-cli's default; else why not."""
    cell = default_cell(os.environ)
    return checkout_and_python(cell.checkout, cell.python)


def checkout_and_python(checkout: Path, python: Path | None) -> tuple[Path, Path] | str:
    """(checkout, python) when both are there; else why not. No python: the checkout's venv."""
    if not (checkout / "main.py").is_file():
        return f"no ComfyUI checkout at {checkout} (set COMFYUI_PATH)"
    if unfinished_marker(checkout).exists():
        return f"an unfinished install at {checkout} (the demo's --install redoes it)"
    python = python or venv_python(checkout)
    if not python.is_file():
        return f"no python for ComfyUI at {python} (set COMFYUI_PYTHON)"
    return checkout, python


def venv_python(folder: Path) -> Path:
    """The python of a venv in `folder` (.venv, then venv; POSIX, then Windows layout), as
    comfy-cli's resolve_python looks for it; `.venv/bin/python` when there is none."""
    for venv in (".venv", "venv"):
        for python in ("bin/python", "Scripts/python.exe"):
            if (folder / venv / python).is_file():
                return folder / venv / python
    return folder / ".venv" / "bin" / "python"


def comfyui_version(checkout: Path) -> str | None:
    """`__version__` from the checkout's comfyui_version.py (written by ComfyUI's release)."""
    try:
        text = (checkout / "comfyui_version.py").read_text()
    except OSError:
        return None
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else None


@dataclass(frozen=True)
class ComfyCell:
    """One ComfyUI of the test matrix: a checkout run with its python."""

    label: str
    checkout: Path
    python: Path | None = None  # None: the checkout's venv

    @property
    def id(self) -> str:
        return f"comfy-{self.label}"

    def found(self) -> tuple[Path, Path] | str:
        found = checkout_and_python(self.checkout, self.python)
        return found if isinstance(found, tuple) else f"{self.id}: {found}"


@dataclass(frozen=True)
class FrontendCell:
    """One frontend of the test matrix: a `static` folder for --front-end-root, or None for
    the frontend the checkout ships (its comfyui-frontend-package)."""

    label: str
    static: Path | None = None

    @property
    def id(self) -> str:
        return f"fe-{self.label}"

    def args(self) -> tuple[str, ...]:
        return () if self.static is None else ("--front-end-root", str(self.static))

    def missing(self) -> str | None:
        if self.static is None or (self.static / "index.html").is_file():
            return None
        return f"{self.id}: no frontend at {self.static} (scripts/comfyui_matrix.sh prepares it)"


def _entries(value: str) -> list[str]:
    """Entries separated by `;` or newlines, blanks dropped."""
    return [entry.strip() for entry in re.split(r"[;\n]", value) if entry.strip()]


def _labelled(entry: str) -> tuple[str, str]:
    """`label=value`; ValueError names an entry of another shape."""
    label, equals, value = entry.partition("=")
    if not equals or not label.strip() or not value.strip():
        raise ValueError(f"expected label=path, got {entry!r}")
    return label.strip(), value.strip()


def default_cell(environ: Mapping[str, str]) -> ComfyCell:
    """$COMFYUI_PATH (else comfy-cli's default ~/comfy/ComfyUI) with $COMFYUI_PYTHON (else
    its venv), labelled by the checkout's version."""
    checkout = Path(environ.get("COMFYUI_PATH") or Path.home() / "comfy" / "ComfyUI")
    python = environ.get("COMFYUI_PYTHON")
    label = comfyui_version(checkout) or "default"
    return ComfyCell(label, checkout, Path(python) if python else None)


def comfyui_cells(environ: Mapping[str, str]) -> list[ComfyCell]:
    """The ComfyUIs to test: $COMFYUI_MATRIX, else the one find_comfyui() finds.

    COMFYUI_MATRIX="0.3.64=/srv/ComfyUI;0.8.0=/srv/ComfyUI-0.8.0|/opt/py/bin/python"
    Entries split by `;`, each `label=checkout`, optionally `|python` (default: the
    checkout's .venv). `|` because `:` and `;` both occur in paths somewhere."""
    matrix = environ.get("COMFYUI_MATRIX", "").strip()
    if not matrix:
        return [default_cell(environ)]
    cells = []
    for entry in _entries(matrix):
        label, value = _labelled(entry)
        checkout, _, python = value.partition("|")
        path = Path(checkout.strip()).expanduser()
        cells.append(ComfyCell(label, path, Path(python.strip()).expanduser() if python else None))
    return cells


def frontend_static(path: Path) -> Path:
    """The folder to serve: `path` itself, or the `static` inside an unpacked wheel there."""
    inner = path / "comfyui_frontend_package" / "static"
    return inner if inner.is_dir() and not (path / "index.html").is_file() else path


def frontend_cells(environ: Mapping[str, str]) -> list[FrontendCell]:
    """The frontends to test: $COMFYUI_FRONTENDS, else the one each checkout ships.

    COMFYUI_FRONTENDS="1.27.10=/srv/frontends/1.27.10;1.58.1=/srv/fe/static;shipped"
    Each path is a `static` folder or an unpacked comfyui-frontend-package wheel; the
    entry `shipped` is the checkout's own frontend."""
    cells = []
    for entry in _entries(environ.get("COMFYUI_FRONTENDS", "")):
        if entry == "shipped":
            cells.append(FrontendCell("shipped"))
        else:
            label, path = _labelled(entry)
            cells.append(FrontendCell(label, frontend_static(Path(path).expanduser())))
    return cells or [FrontendCell("shipped")]


def browser_pairs(environ: Mapping[str, str]) -> set[tuple[str, str]] | None:
    """The ComfyUI x frontend pairs the browser tier runs, from $COMFYUI_BROWSER_CELLS
    ("0.3.64/1.27.10;0.8.0/1.58.1", ComfyUI label / frontend label); None (unset): all."""
    value = environ.get("COMFYUI_BROWSER_CELLS", "")
    if not value.strip():
        return None
    pairs = set()
    for entry in _entries(value):
        comfy, slash, frontend = entry.partition("/")
        if not slash or not comfy.strip() or not frontend.strip():
            raise ValueError(f"expected comfyui/frontend, got {entry!r}")
        pairs.add((comfy.strip(), frontend.strip()))
    return pairs


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
    comfyui: tuple[Path, Path] | None = None,
    port: int | None = None,
) -> Iterator[Comfy]:
    """ComfyUI on a free loopback port (or `port`: a restart at the same address) with its
    own folders and the given custom node packs.

    `comfyui`: (checkout, python); default find_comfyui(), which the test matrix points
    at each cell in turn."""
    found = comfyui or find_comfyui()
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
    port = port or free_port()
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
