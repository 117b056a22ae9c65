"""The one module that touches ComfyUI: registration on PromptServer and the internals we read.

Every reliance on ComfyUI internals is a named function below, checked against ComfyUI
v0.3.64 (Comfy-Org/ComfyUI, October 2025) and exercised by tests/integration.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .bridge import Bridge
from .lineage import PromptRecord
from .middleware import BRIDGE, MARKER, clientid_bridge_middleware, status
from .self_connections import SELF_CONNECTIONS

logger = logging.getLogger(__name__)

ENV_SWITCH = "COMFY_CLIENTID_BRIDGE"
OFF_VALUES = frozenset({"0", "off", "false", "no", "disabled"})
STATUS_PATH = "/clientid_bridge/status"


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get(ENV_SWITCH, "1").strip().lower() not in OFF_VALUES


def executing_prompt(server: Any) -> PromptRecord | None:
    """The prompt the executor is running now, if any.

    Internals (v0.3.64 execution.PromptQueue): `currently_running` maps a task id to the
    queue item (number, prompt_id, prompt, extra_data, outputs_to_execute); the executor
    runs one at a time.
    """
    running = list(server.prompt_queue.currently_running.values())
    if not running:
        return None
    _, prompt_id, graph, extra_data = running[0][:4]
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


def _install(server: Any) -> bool:
    app = server.app
    if any(getattr(route, "path", None) == STATUS_PATH for route in server.routes):
        return any(getattr(m, MARKER, False) for m in app.middlewares)
    if app.frozen:
        logger.warning("clientid_bridge: the web app is frozen already; not registered")
        return False
    server.routes.get(STATUS_PATH)(status)
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
