"""Installs the package on ComfyUI's PromptServer: routes, middlewares and hooks.

Nothing imports this module but the root `__init__.py`; what it reads of ComfyUI comes
through `internals`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

from . import internals
from .batch import gc_freeze
from .batch.control import (
    CONTROL,
    BatchControl,
    batch_cancel_middleware,
    batch_status,
    stop_batch,
)
from .batch.engine import batch_engine
from .batch.folder_check import folder_readable
from .batch.pending_views import pending_view_middleware
from .batch.pipeline import batch_pipeline
from .batch.runner_routes import FOLDER_PATH, UPLOADS_PATH
from .batch.uploads import remove_uploads
from .routing.answer_first import ANSWER_FIRST_SWITCH, HeldWakes
from .routing.broadcasts import (
    BroadcastRouter,
    keep_broadcast_from,
    routing_send,
    routing_send_sync,
)
from .routing.credentials import CredentialsPart, CredentialStore, place_outermost
from .routing.decisions import Bridge
from .routing.guard import GUARD_SWITCH, QueueView, install_request_guard
from .routing.lineage import PromptRecord
from .routing.middleware import (
    BRIDGE,
    BROADCASTS,
    MARKER,
    QUEUE_PUTS,
    THREAD_TIES,
    BridgePart,
    PromptPart,
    prompt_middleware,
    status,
)
from .routing.queue_puts import QueuePutRouter, Running, routing_put
from .routing.self_connections import SELF_CONNECTIONS
from .routing.thread_origin import THREADS_SWITCH, Origin, ThreadTies, acting_for
from .routing.thread_origin import install as install_thread_ties

logger = logging.getLogger(__name__)

ENV_SWITCH = "COMFY_CLIENTID_BRIDGE"
# Broadcasts and queue puts from node code; off with the bridge too.
ENV_BROADCASTS_SWITCH = "COMFY_CLIENTID_BRIDGE_BROADCASTS"
OFF_VALUES = frozenset({"0", "off", "false", "no", "disabled"})
STATUS_PATH = "/clientid_bridge/status"
BATCH_PATH = "/clientid_bridge/batch/{batch_id}"


def enabled(environ: Mapping[str, str] = os.environ, switch: str = ENV_SWITCH) -> bool:
    return environ.get(switch, "1").strip().lower() not in OFF_VALUES


def executing_prompt(server: Any) -> PromptRecord | None:
    """The running prompt as the bridge compares it: its tab, workflow and graph."""
    fields = internals.item_fields(internals.running_item(server))
    if fields is None:
        return None
    prompt_id, graph, extra_data = fields
    client_id = extra_data.get("client_id")
    pnginfo = extra_data.get("extra_pnginfo")
    return PromptRecord(
        client_id=client_id if isinstance(client_id, str) else None,
        prompt_id=prompt_id,
        graph=graph,
        extra_pnginfo=pnginfo if isinstance(pnginfo, dict) else None,
    )


class ExecutingOrigin:
    """The running prompt as a thread started for it keeps it: id, tab, graph, workflow.

    Asked at every thread start and task submission on the executor: the Origin made for
    a prompt is kept and given again while that prompt runs (same id, same graph object),
    so a node that starts many threads makes one."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.last: Origin | None = None

    def __call__(self) -> Origin | None:
        item = internals.running_entry(self.server)
        last = self.last
        if last is not None and internals.item_graph(item) is last.graph:
            return last  # the Origin holds the graph: no other prompt can have that object
        fields = internals.item_fields(item)
        if fields is None:
            return None
        prompt_id, graph, extra_data = fields
        client_id, pnginfo = extra_data.get("client_id"), extra_data.get("extra_pnginfo")
        self.last = Origin(
            prompt_id,
            client_id if isinstance(client_id, str) else None,
            graph,
            pnginfo if isinstance(pnginfo, dict) else None,
        )
        return self.last


def register() -> bool:
    """Installs the bridge on PromptServer.instance; True when it is (or already was) there.

    Never raises: a failure here must not break ComfyUI's loading of custom nodes.
    """
    server = internals.prompt_server()
    if server is None:  # outside ComfyUI (a tool importing us), or no instance made yet
        logger.debug("clientid_bridge: no PromptServer.instance; nothing registered")
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
        executing_prompt_id=lambda: internals.running_prompt_id(server),
        drop_queued=lambda prompt_id: internals.drop_queued(server, prompt_id),
        interrupt=internals.interrupt,
    )
    server.app[CONTROL] = control
    server.routes.get(BATCH_PATH)(batch_status)
    server.routes.post(BATCH_PATH + "/stop")(stop_batch)
    server.routes.delete(UPLOADS_PATH)(remove_uploads)
    server.routes.get(FOLDER_PATH)(folder_readable)
    server.app.middlewares.append(batch_cancel_middleware(control=control))
    if gc_freeze.wanted():
        server.app.on_startup.append(gc_freeze.freeze_at_startup)
    pipeline = batch_pipeline()
    if pipeline is not None:  # the saver names files the worker has yet to write
        saves = pipeline.saves
        server.app.middlewares.append(
            pending_view_middleware(
                viewed_file=internals.viewed_output_file,
                is_pending=saves.is_pending,
                any_pending=lambda: saves.in_flight() > 0,
            )
        )


def _install_thread_ties(server: Any) -> ThreadTies | None:
    """Threads and pool tasks that node code starts act for their prompt; on even when the
    bridge is off, for the credentials carrier (docs/threads.md)."""
    if not enabled(switch=THREADS_SWITCH):
        logger.info("clientid_bridge: threads act for no prompt (%s)", THREADS_SWITCH)
        return None
    ties = ThreadTies(on_executor=internals.on_worker_thread, executing=ExecutingOrigin(server))
    if not install_thread_ties(ties):
        logger.warning("clientid_bridge: threads are tied by another copy of this package")
        return None
    server.app[THREAD_TIES] = ties
    return ties


def _credentials_part(server: Any, ties: ThreadTies | None) -> CredentialsPart:
    """Node code's re-queues carry their origin's credentials past auth packs; on even when
    the bridge is off, so our own Batch Next keeps going behind a login (docs/security.md,
    Behind a login). A prompt's credentials stay while a thread acting for it is alive: a
    timer's re-queue may come after its prompt has finished."""

    def is_live(prompt_id: str) -> bool:
        return internals.is_prompt_alive(server, prompt_id) or (
            ties is not None and ties.acts_for(prompt_id)
        )

    store = CredentialStore(is_live=is_live)
    return CredentialsPart(
        store=store,
        running_prompt_id=lambda: internals.running_prompt_id(server),
        is_worker_thread=internals.is_worker_thread,
    )


def _install(server: Any) -> bool:
    app = server.app
    if any(getattr(route, "path", None) == STATUS_PATH for route in server.routes):
        return any(getattr(m, MARKER, False) for m in app.middlewares)
    if app.frozen:
        logger.warning("clientid_bridge: the web app is frozen already; not registered")
        return False
    server.routes.get(STATUS_PATH)(status)
    port = internals.listen_port()
    if port is not None:  # the credentials carrier and the bridge both ask about this port
        SELF_CONNECTIONS.watch_port(port)
    _install_batch(server)
    ties = _install_thread_ties(server)
    parts: list[PromptPart] = [_credentials_part(server, ties)]
    if not enabled(switch=ANSWER_FIRST_SWITCH):
        logger.info(
            "clientid_bridge: the executor wakes at the put, as core (%s)", ANSWER_FIRST_SWITCH
        )
    elif not internals.hold_executor_wakes(server, HeldWakes):
        logger.info(
            "clientid_bridge: the prompt queue has no not_empty condition; answers go as core's"
        )
    install_request_guard(  # on even when the bridge is off: it keeps ComfyUI alive
        app,
        add_on_prompt_handler=server.add_on_prompt_handler,
        extra_data_stamped=internals.post_prompt_stamps_extra_data(),
        queue=QueueView(
            waiting=lambda: internals.waiting_items(server),
            next_number=lambda: internals.next_prompt_number(server),
        ),
        wrap_put=lambda wrap: internals.route_queue_puts(server, wrap),
        switched_on=enabled(switch=GUARD_SWITCH),
    )
    bridge = _install_bridge(server) if enabled() else None
    if bridge is None:
        logger.info("clientid_bridge: off (%s); ComfyUI routes events as usual", ENV_SWITCH)
    else:
        parts.append(BridgePart(bridge))
    # One middleware for every part, outside auth packs' (the credentials part needs that).
    place_outermost(app, prompt_middleware(parts=parts, connections=SELF_CONNECTIONS))
    return bridge is not None


def _install_bridge(server: Any) -> Bridge:
    bridge = Bridge(
        executing=lambda: executing_prompt(server),
        is_connected=lambda client_id: internals.is_connected(server, client_id),
        is_worker_thread=internals.is_worker_thread,
    )
    server.app[BRIDGE] = bridge
    server.add_on_prompt_handler(bridge.on_prompt)
    logger.info("clientid_bridge: re-queued prompts now reach the tab that started them")
    if enabled(switch=ENV_BROADCASTS_SWITCH):
        _install_node_traffic(server)
    else:
        logger.info(
            "clientid_bridge: broadcasts and queue puts left as they are (%s)",
            ENV_BROADCASTS_SWITCH,
        )
    return bridge


def running(server: Any) -> Running | None:
    """The running prompt as a queue put is compared with it: the bridge's own reading."""
    record = executing_prompt(server)
    return None if record is None else Running(record.client_id, record.extra_pnginfo)


def _extra_data_of(item: Any) -> dict[str, Any] | None:
    fields = internals.item_fields(item)
    return None if fields is None else fields[2]


def _install_node_traffic(server: Any) -> None:
    """Node code's broadcasts and queue puts go to the running prompt's tab."""
    is_connected = functools.partial(internals.is_connected, server)
    broadcasts = BroadcastRouter(
        running_client=functools.partial(internals.running_client_id, server),
        is_connected=is_connected,
        on_worker_thread=internals.on_worker_thread,
        keep_broadcast=keep_broadcast_from(),
        acting_for=acting_for,
    )
    puts = QueuePutRouter(
        running=lambda: running(server),
        is_connected=is_connected,
        on_worker_thread=internals.on_worker_thread,
        extra_data_of=_extra_data_of,
        with_extra_data=internals.with_extra_data,
        fit_layout=lambda item: internals.fit_layout(item, server),
        acting_for=acting_for,
    )
    internals.route_sends(
        server,
        lambda send_sync: routing_send_sync(send_sync, broadcasts),
        lambda send: routing_send(send, broadcasts),
    )
    internals.route_queue_puts(server, lambda put: routing_put(put, puts))
    server.app[BROADCASTS] = broadcasts
    server.app[QUEUE_PUTS] = puts
