"""Every ComfyUI internal this package reads or calls, one named function each.

Nothing else in the package imports `server`, `execution`, `folder_paths`, `nodes`,
`comfy.*` or `comfy_execution.*`, and this module imports nothing of ours, so a new ComfyUI
release is a change to this one file. Each function says which releases it was checked
against: v0.3.64 (Comfy-Org/ComfyUI a125cd84, October 2025) and 0.8.0 (upstream 3cd7b32f,
January 2026). tests/test_internals.py pins the shapes; tests/integration runs them for real.
"""

from __future__ import annotations

import importlib
import json
import os
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The line ComfyUI logs once its web server listens (main.py start_all / server.py
# start_multi_address, v0.3.64 and 0.8.0); the launcher waits for it.
READY_LOG_LINE = "To see the GUI go to"

# The keys of a graph node as a client sends them. ComfyUI adds others to the prompt a node
# is given (`is_changed`, from the IS_CHANGED results cached in execution.py, v0.3.64 and
# 0.8.0); a re-queue built from that prompt keeps only these.
CLIENT_NODE_KEYS = ("class_type", "inputs", "_meta")


def prompt_server() -> Any:
    """`server.PromptServer.instance`, or None outside ComfyUI (v0.3.64, 0.8.0)."""
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


def running_item(server: Any) -> tuple[Any, ...] | None:
    """The queue item the executor is running now, if any.

    v0.3.64 execution.PromptQueue: `currently_running` maps a task id to the item
    (number, prompt_id, prompt, extra_data, outputs_to_execute). 0.8.0 appends a sixth
    field, `sensitive` (the secrets split out of extra_data). The executor runs one at a
    time. Callers read the first four fields only.
    """
    running = list(server.prompt_queue.currently_running.values())
    return tuple(running[0]) if running else None


def running_entry(server: Any) -> Any:
    """The item the executor runs now as `currently_running` holds it, not copied (see
    running_item); None between prompts. Read at every thread start on the executor."""
    for item in server.prompt_queue.currently_running.values():
        return item
    return None


def item_graph(item: Any) -> Any:
    """The prompt (graph) of a queue item, its third field in v0.3.64 and 0.8.0; None for
    a shape we do not know. Compared by identity: the same object while the prompt runs."""
    if not isinstance(item, (tuple, list)) or len(item) < 4:
        return None
    return item[2]


def item_fields(item: Any) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(prompt_id, prompt, extra_data) of a queue item; None for a shape we do not know.

    v0.3.64: (number, prompt_id, prompt, extra_data, outputs_to_execute); 0.8.0 adds
    `sensitive` as a sixth field. Both keep the first four in this order.
    """
    if not isinstance(item, (tuple, list)) or len(item) < 4:
        return None
    _, prompt_id, prompt, extra_data = item[:4]
    if not isinstance(prompt, dict) or not isinstance(extra_data, dict):
        return None
    return str(prompt_id), prompt, extra_data


def with_extra_data(item: Any, extra_data: dict[str, Any]) -> Any:
    """The same queue item with another extra_data (its fourth field), type kept."""
    fields = list(item)
    fields[3] = extra_data
    return tuple(fields) if isinstance(item, tuple) else fields


def fit_layout(item: Any, server: Any) -> Any:
    """A five-field (v0.3.64-shaped) item, put while a six-field one runs, gets an empty
    sixth field. 0.8.0 main.py prompt_worker reads `sensitive = item[5]` outside any try:
    a short item kills the executor thread and every queue stalls. The running item says
    which layout this release has."""
    running = running_item(server)
    if running is None or len(running) != 6 or not isinstance(item, tuple) or len(item) != 5:
        return item
    return (*item, {})


def route_sends(
    server: Any,
    wrap_sync: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_async: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Puts wrappers around PromptServer.send_sync and the async send, on the instance.

    v0.3.64 and 0.8.0 server.py: everything core and node code send goes through
    `self.send_sync(event, data, sid)` (queue_updated, send_progress_text, the executor,
    the progress hook) or `await self.send(event, data, sid)` (publish_loop, the websocket
    handler), always looked up on the instance, so an instance attribute replaces both.
    """
    server.send_sync = wrap_sync(server.send_sync)
    server.send = wrap_async(server.send)


def route_queue_puts(
    server: Any, wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]
) -> None:
    """Puts a wrapper around PromptQueue.put on the instance.

    v0.3.64 and 0.8.0: PromptServer.__init__ creates `self.prompt_queue =
    execution.PromptQueue(self)` before custom nodes load, and every put (core's /prompt
    handler, packs' node code) calls `prompt_queue.put(item)` on that instance. 0.8.0
    differs in the item: core puts six fields and main.py prompt_worker reads `item[5]`
    (sensitive), so a pack's five-field v0.3.64-style item raises IndexError in the worker."""
    queue = server.prompt_queue
    queue.put = wrap(queue.put)


def hold_executor_wakes(server: Any, wrap: Callable[[Any], Any]) -> bool:
    """Puts a stand-in around the condition the executor waits on for queued prompts.

    v0.3.64 and 0.8.0 execution.PromptQueue: `not_empty = threading.Condition(mutex)`;
    put() calls `self.not_empty.notify()` under the mutex after the heappush and the
    status message, get() waits with `with self.not_empty:` and
    `self.not_empty.wait(timeout=...)`; both look the attribute up on the instance at
    every call. main.py's prompt_worker waits with a timeout of up to 1000 s. False (and
    nothing changed) for a queue without one: a pack's or a later core's own queue."""
    queue = server.prompt_queue
    condition = getattr(queue, "not_empty", None)
    if condition is None or not callable(getattr(condition, "notify", None)):
        return False
    queue.not_empty = wrap(condition)
    return True


def running_prompt_id(server: Any) -> str | None:
    item = running_item(server)
    return None if item is None else str(item[1])


def running_client_id(server: Any) -> str | None:
    """The client id of the prompt running now: `server.client_id`, the id core routes the
    prompt's events by, while `currently_running` holds the item (between prompts the
    attribute keeps the last prompt's id, v0.3.64 and 0.8.0)."""
    if not server.prompt_queue.currently_running:
        return None
    client_id = getattr(server, "client_id", None)  # current_client_id, inlined: per message
    return client_id if isinstance(client_id, str) else None


def current_client_id(server: Any) -> str | None:
    """The running prompt's client id as core routes by it.

    v0.3.64 and 0.8.0 execution.PromptExecutor.execute set `server.client_id` to the
    prompt's extra_data client_id (None without one) before anything is sent.
    """
    client_id = getattr(server, "client_id", None)
    return client_id if isinstance(client_id, str) else None


def is_connected(server: Any, client_id: str) -> bool:
    """v0.3.64 and 0.8.0 server.PromptServer: `sockets` maps client id -> websocket."""
    return client_id in server.sockets


def is_worker_thread(thread_name: str) -> bool:
    """Whether a thread is ComfyUI's executor, where node code runs.

    v0.3.64 and 0.8.0 main.py: `threading.Thread(target=prompt_worker, ...)` without a
    name, which Python >= 3.10 names "Thread-N (prompt_worker)".
    """
    return thread_name.endswith("(prompt_worker)")


_this_thread = threading.local()


def on_worker_thread() -> bool:
    """Whether the caller runs on ComfyUI's executor; asked per message, so remembered per
    thread (a thread-local: a new thread, even one reusing an ident, asks again)."""
    try:
        return bool(_this_thread.is_worker)
    except AttributeError:
        _this_thread.is_worker = is_worker_thread(threading.current_thread().name)
        return bool(_this_thread.is_worker)


def listen_port() -> int | None:
    """v0.3.64 and 0.8.0 comfy/cli_args.py: the `--port` argument the server binds."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return None
    port = getattr(args, "port", None)
    return port if isinstance(port, int) else None


def listen_addresses() -> list[str]:
    """The addresses ComfyUI binds: `--listen`, comma-separated (v0.3.64 and 0.8.0
    comfy/cli_args.py, split in main.py start_all); "127.0.0.1" without the flag."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return []
    listen = getattr(args, "listen", None)
    return [a.strip() for a in str(listen or "127.0.0.1").split(",") if a.strip()]


def is_prompt_alive(server: Any, prompt_id: str) -> bool:
    """v0.3.64 and 0.8.0 PromptQueue.get_current_queue_volatile: (running, queued) lists of
    items (number, prompt_id, ...)."""
    running, queued = server.prompt_queue.get_current_queue_volatile()
    return any(item[1] == prompt_id for item in [*running, *queued])


def drop_queued(server: Any, prompt_id: str) -> bool:
    """v0.3.64 and 0.8.0 PromptQueue.delete_queue_item, as POST /queue {"delete"} uses."""
    return bool(server.prompt_queue.delete_queue_item(lambda item: item[1] == prompt_id))


def interrupt() -> None:
    """ComfyUI's own cancel of the running prompt (nodes.interrupt_processing, both)."""
    import nodes

    nodes.interrupt_processing()


def execution_blocker() -> Any:
    """An output that makes downstream nodes skip quietly (v0.3.64 and 0.8.0
    comfy_execution.graph_utils.ExecutionBlocker(None): no error, no message)."""
    from comfy_execution.graph_utils import ExecutionBlocker

    return ExecutionBlocker(None)


def show_node_progress(node_id: str, value: int, total: int) -> None:
    """ComfyUI's progress bar on a node (comfy.utils.ProgressBar, v0.3.64 and 0.8.0)."""
    import comfy.utils

    comfy.utils.ProgressBar(total, node_id=node_id).update_absolute(value, total)


def show_node_text(server: Any, node_id: str, text: str) -> bool:
    """Core's `progress_text` for one node, to the running prompt's tab alone.

    v0.3.64 and 0.8.0 server.PromptServer.send_progress_text(text, node_id, sid=None): a
    binary frame that core's own nodes send with no sid, to every tab; here with the sid of
    the prompt's client, so no other tab shows it. Sent only to a socket that announced
    `feature_flags` as its first message (server.websocket_handler keeps them in
    `sockets_metadata[sid]`): the frontend does (1.27.10, 1.35.9, 1.58.1), an API client
    such as comfy-api-simplified does not and would take the frame for an image. Frontends
    1.27.10 to 1.58.1 show the text on the node as a read-only text widget; the node id is
    the execution id, which they map to a node inside a subgraph. False when not sent.
    """
    client_id = current_client_id(server)
    if client_id is None:
        return False
    metadata = getattr(server, "sockets_metadata", {}).get(client_id) or {}
    if not metadata.get("feature_flags"):
        return False
    server.send_progress_text(text, node_id, client_id)
    return True


def user_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_user_directory())


def input_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory())


def output_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory())


def viewed_output_file(query: Mapping[str, str]) -> Path | None:
    """The file of ComfyUI's output folder that GET /view serves for this query, symlinks
    resolved; None for any other folder, or a query core refuses.

    v0.3.64 and 0.8.0 server.py view_image: `type` defaults to "output"; `subfolder` is
    joined to the folder; the file is the basename of `filename`. A filename annotated
    `name [output]` (folder_paths.annotated_filepath) is left to core: the saver never
    sends one."""
    filename = query.get("filename", "")
    if query.get("type", "output") != "output" or not filename or filename.endswith("]"):
        return None
    if filename.startswith("/") or ".." in filename:
        return None
    folder = os.path.join(output_directory(), query.get("subfolder", ""))
    return Path(os.path.realpath(os.path.join(folder, os.path.basename(filename))))


def temp_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_temp_directory())


def serves_tls() -> bool:
    """Whether ComfyUI serves https: v0.3.64 and 0.8.0 server.start_multi_address make a
    TLS context when both `--tls-keyfile` and `--tls-certfile` are given (cli_args)."""
    try:
        from comfy.cli_args import args
    except ImportError:
        return False
    return bool(getattr(args, "tls_keyfile", None) and getattr(args, "tls_certfile", None))


def prompt_url(server: Any, tls: bool | None = None) -> str:
    """Our own /prompt over loopback; node code is a client like any other.

    v0.3.64 and 0.8.0 server.PromptServer: `address` (the first `--listen` address) and
    `port`, set in start_multi_address. Neither keeps the TLS context (a local there), so
    the scheme comes from the same arguments core reads (`serves_tls`)."""
    address = getattr(server, "address", "127.0.0.1") or "127.0.0.1"
    host = address.split(",")[0]
    if host in ("0.0.0.0", ""):  # a listen address: reach it over loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if (serves_tls() if tls is None else tls) else "http"
    return f"{scheme}://{host}:{server.port}/prompt"


def loopback_tls_context() -> ssl.SSLContext:
    """Our own server over loopback: its certificate names a host, not 127.0.0.1, and is
    often self-signed, so it is not checked. The connection never leaves this machine."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def queue_prompt(server: Any, body: dict[str, Any]) -> str:
    """POST /prompt from node code: validation and every on-prompt handler run as usual."""
    request = urllib.request.Request(
        prompt_url(server),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = loopback_tls_context() if request.full_url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return str(json.loads(response.read())["prompt_id"])
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"ComfyUI refused the next prompt: {error.read()[:500]!r}") from error


def comfyui_version() -> tuple[int, ...] | None:
    """The release numbers of the running ComfyUI (`comfyui_version.__version__`, written by
    ComfyUI's release build; present in v0.3.64 and 0.8.0); None outside ComfyUI."""
    try:
        version = importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return None
    numbers = [part for part in str(version).split(".")[:3] if part.isdigit()]
    return tuple(int(part) for part in numbers) or None


def post_prompt_stamps_extra_data() -> bool:
    """Whether POST /prompt writes `create_time` into every accepted extra_data before it
    queues it (server.py post_prompt, from 0.3.69, upstream 2fde9597): 0.8.0 does, so an
    extra_data that is not an object is core's own 500 there; v0.3.64 queues it as it is.
    An unknown release counts as not stamping: the request guard then refuses more, not less."""
    version = comfyui_version()
    return version is not None and version >= (0, 3, 69)


def next_prompt_number(server: Any) -> float:
    """The number POST /prompt gives the next body without a "number" (negated for a truthy
    "front"): v0.3.64 and 0.8.0 server.PromptServer.number, incremented per such body."""
    return float(server.number)


def waiting_items(server: Any) -> list[tuple[Any, ...]]:
    """The queue items not running yet. v0.3.64 and 0.8.0 PromptQueue.queue is a heap of
    items (number, prompt_id, prompt, extra_data, outputs_to_execute[, sensitive]) that
    heapq orders by comparing whole tuples; read under the queue's mutex."""
    _, queued = server.prompt_queue.get_current_queue_volatile()
    return [tuple(item) for item in queued]
