"""The one module that touches ComfyUI: registration on PromptServer and the internals we read.

Every reliance on ComfyUI internals is a named function below, checked against ComfyUI
v0.3.64 (Comfy-Org/ComfyUI, October 2025) and exercised by tests/integration.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .batch.control import (
    CONTROL,
    BatchControl,
    batch_cancel_middleware,
    batch_status,
    stop_batch,
)
from .batch.engine import BatchEngine
from .batch.state import StateStore
from .bridge import Bridge
from .lineage import PromptRecord
from .middleware import BRIDGE, MARKER, clientid_bridge_middleware, status
from .self_connections import SELF_CONNECTIONS

logger = logging.getLogger(__name__)

ENV_SWITCH = "COMFY_CLIENTID_BRIDGE"
OFF_VALUES = frozenset({"0", "off", "false", "no", "disabled"})
STATUS_PATH = "/clientid_bridge/status"
BATCH_PATH = "/clientid_bridge/batch/{batch_id}"


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get(ENV_SWITCH, "1").strip().lower() not in OFF_VALUES


def running_item(server: Any) -> tuple[Any, ...] | None:
    """The queue item the executor is running now, if any.

    Internals (v0.3.64 execution.PromptQueue): `currently_running` maps a task id to the
    queue item (number, prompt_id, prompt, extra_data, outputs_to_execute); the executor
    runs one at a time.
    """
    running = list(server.prompt_queue.currently_running.values())
    return tuple(running[0]) if running else None


def executing_prompt(server: Any) -> PromptRecord | None:
    """The running prompt as the bridge compares it: its tab, workflow and graph."""
    item = running_item(server)
    if item is None:
        return None
    _, prompt_id, graph, extra_data = item[:4]
    client_id = extra_data.get("client_id")
    pnginfo = extra_data.get("extra_pnginfo")
    return PromptRecord(
        client_id=client_id if isinstance(client_id, str) else None,
        prompt_id=str(prompt_id),
        graph=graph,
        extra_pnginfo=pnginfo if isinstance(pnginfo, dict) else None,
    )


def is_connected(server: Any, client_id: str) -> bool:
    """Internals (v0.3.64 server.PromptServer): `sockets` maps client id -> websocket."""
    return client_id in server.sockets


def is_worker_thread(thread_name: str) -> bool:
    """Whether a thread is ComfyUI's executor, where node code runs.

    Internals (v0.3.64 main.py): `threading.Thread(target=prompt_worker, ...)` without a
    name, which Python >= 3.10 names "Thread-N (prompt_worker)".
    """
    return thread_name.endswith("(prompt_worker)")


def listen_port() -> int | None:
    """Internals (v0.3.64 comfy/cli_args.py): the `--port` argument the server binds."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return None
    port = getattr(args, "port", None)
    return port if isinstance(port, int) else None


def register() -> bool:
    """Installs the bridge on PromptServer.instance; True when it is (or already was) there.

    Never raises: a failure here must not break ComfyUI's loading of custom nodes.
    """
    try:
        from server import PromptServer
    except ImportError:
        logger.debug("clientid_bridge: not inside ComfyUI, nothing registered")
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        logger.warning("clientid_bridge: PromptServer.instance is missing; not registered")
        return False
    try:
        return _install(server)
    except Exception:
        logger.exception("clientid_bridge: could not register; ComfyUI runs without it")
        return False


def _install_batch(server: Any) -> None:
    """The batch nodes' stop route and cancel handling; on even when the bridge is off."""
    control = BatchControl(
        engine=batch_engine(),
        executing_prompt_id=executing_prompt_id,
        drop_queued=lambda prompt_id: drop_queued(server, prompt_id),
        interrupt=interrupt,
    )
    server.app[CONTROL] = control
    server.routes.get(BATCH_PATH)(batch_status)
    server.routes.post(BATCH_PATH + "/stop")(stop_batch)
    server.app.middlewares.append(batch_cancel_middleware(control=control))


def _install(server: Any) -> bool:
    app = server.app
    if any(getattr(route, "path", None) == STATUS_PATH for route in server.routes):
        return any(getattr(m, MARKER, False) for m in app.middlewares)
    if app.frozen:
        logger.warning("clientid_bridge: the web app is frozen already; not registered")
        return False
    server.routes.get(STATUS_PATH)(status)
    _install_batch(server)
    if not enabled():
        logger.info("clientid_bridge: off (%s); ComfyUI routes events as usual", ENV_SWITCH)
        return False
    bridge = Bridge(
        executing=lambda: executing_prompt(server),
        is_connected=lambda client_id: is_connected(server, client_id),
        is_worker_thread=is_worker_thread,
    )
    port = listen_port()
    if port is not None:
        SELF_CONNECTIONS.watch_port(port)
    app[BRIDGE] = bridge
    app.middlewares.append(clientid_bridge_middleware(bridge=bridge, connections=SELF_CONNECTIONS))
    server.add_on_prompt_handler(bridge.on_prompt)
    logger.info("clientid_bridge: re-queued prompts now reach the tab that started them")
    return True


# --- the batch nodes' view of ComfyUI ---------------------------------------------------

_engine: BatchEngine | None = None


def _server() -> Any:
    from server import PromptServer

    return PromptServer.instance


def batch_engine() -> BatchEngine:
    """One engine per ComfyUI process: state under the user directory, reports in output."""
    global _engine
    if _engine is None:
        import folder_paths

        store = StateStore(Path(folder_paths.get_user_directory()) / "clientid_bridge" / "batches")
        report_dir = Path(folder_paths.get_output_directory())
        _engine = BatchEngine(store, report_dir, lambda pid: is_prompt_alive(_server(), pid))
    return _engine


def executing_prompt_id() -> str | None:
    item = running_item(_server())
    return None if item is None else str(item[1])


def current_client_id() -> str | None:
    """Internals (v0.3.64 execution.PromptExecutor.execute): the executor sets
    `server.client_id` to the running prompt's extra_data client_id."""
    client_id = getattr(_server(), "client_id", None)
    return client_id if isinstance(client_id, str) else None


def is_prompt_alive(server: Any, prompt_id: str) -> bool:
    """Internals (v0.3.64 PromptQueue): queue items are (number, prompt_id, ...)."""
    running, queued = server.prompt_queue.get_current_queue_volatile()
    return any(item[1] == prompt_id for item in [*running, *queued])


def drop_queued(server: Any, prompt_id: str) -> bool:
    """Internals (v0.3.64 PromptQueue.delete_queue_item, as POST /queue {"delete"} uses)."""
    return bool(server.prompt_queue.delete_queue_item(lambda item: item[1] == prompt_id))


def interrupt() -> None:
    """ComfyUI's own cancel of the running prompt (nodes.interrupt_processing)."""
    import nodes

    nodes.interrupt_processing()


def prompt_url(server: Any) -> str:
    """Our own /prompt over loopback; node code is a client like any other."""
    address = getattr(server, "address", "127.0.0.1") or "127.0.0.1"
    host = address.split(",")[0]
    if host in ("0.0.0.0", ""):  # a listen address: reach it over loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if getattr(server, "ssl", None) else "http"
    return f"{scheme}://{host}:{server.port}/prompt"


def queue_prompt(body: dict[str, Any]) -> str:
    """POST /prompt from node code: validation and every on-prompt handler run as usual."""
    request = urllib.request.Request(
        prompt_url(_server()),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = ssl._create_unverified_context() if request.full_url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return str(json.loads(response.read())["prompt_id"])
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"ComfyUI refused the next prompt: {error.read()[:500]!r}") from error


def resolve_input_folder(folder: str) -> Path:
    """Absolute, or relative to ComfyUI's input directory."""
    import folder_paths

    path = Path(folder.strip()).expanduser()
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path


def output_base(output_folder: str) -> tuple[Path, bool]:
    """Where the saver writes, and whether that is ComfyUI's output folder (so /view shows it)."""
    import folder_paths

    if output_folder.strip():
        path = Path(output_folder.strip()).expanduser()
        if not path.is_absolute():
            raise ValueError(f"output_folder must be absolute (or empty); got {output_folder!r}")
        return path, False
    return Path(folder_paths.get_output_directory()), True
