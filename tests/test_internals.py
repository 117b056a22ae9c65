"""The shapes this package reads of ComfyUI, pinned on stand-ins (tests/integration runs them
against a real server): the queue item layout, the loopback /prompt, the folders."""

from __future__ import annotations

import json
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.batch.folders import output_base, resolve_input_folder

ITEM = (3, "pid-1", {"1": {}}, {"client_id": "tab"}, ["9"])


class FakeQueue:
    """execution.PromptQueue as far as we call it (v0.3.64 and 0.8.0)."""

    def __init__(self, running: list[tuple[Any, ...]], queued: list[tuple[Any, ...]]) -> None:
        self.currently_running = dict(enumerate(running))
        self.queue = list(queued)

    def get_current_queue_volatile(self) -> tuple[list[Any], list[Any]]:
        return list(self.currently_running.values()), list(self.queue)

    def delete_queue_item(self, function: Any) -> bool:
        for item in self.queue:
            if function(item):
                self.queue.remove(item)
                return True
        return False


def server_with(running: list[Any], queued: list[Any]) -> Any:
    return SimpleNamespace(prompt_queue=FakeQueue(running, queued))


@pytest.mark.parametrize(
    ("prompt_id", "alive"),
    [("pid-1", True), ("pid-2", True), ("pid-3", False)],
    ids=["running", "queued", "gone"],
)
def test_is_prompt_alive(prompt_id: str, alive: bool) -> None:
    server = server_with([ITEM], [(4, "pid-2", {}, {}, [])])
    assert internals.is_prompt_alive(server, prompt_id) is alive


def test_drop_queued_deletes_only_that_prompt() -> None:
    queued = [(4, "pid-2", {}, {}, []), (5, "pid-3", {}, {}, [])]
    server = server_with([ITEM], queued)
    assert internals.drop_queued(server, "pid-3") is True
    assert [item[1] for item in server.prompt_queue.queue] == ["pid-2"]
    assert internals.drop_queued(server, "pid-1") is False  # running, not queued


def test_running_item_and_its_fields() -> None:
    server = server_with([ITEM], [])
    assert internals.running_item(server) == ITEM
    assert internals.running_prompt_id(server) == "pid-1"
    assert internals.item_fields(internals.running_item(server))[2] == {"client_id": "tab"}  # type: ignore[index]
    idle = server_with([], [])
    assert internals.running_item(idle) is None
    assert internals.running_prompt_id(idle) is None
    assert internals.item_fields(internals.running_item(idle)) is None


@pytest.mark.parametrize(
    ("item", "fields"),
    [
        (ITEM, ("pid-1", {"1": {}}, {"client_id": "tab"})),
        ((*ITEM, {"sensitive": 1}), ("pid-1", {"1": {}}, {"client_id": "tab"})),
        (list(ITEM), ("pid-1", {"1": {}}, {"client_id": "tab"})),
        (ITEM[:3], None),
        ((1, "p", [], {}), None),
        ((1, "p", {}, None), None),
        ("not an item", None),
    ],
    ids=[
        "v0.3.64",
        "v0.8.0-sensitive",
        "list",
        "short",
        "prompt-not-dict",
        "extra-not-dict",
        "str",
    ],
)
def test_item_fields(item: Any, fields: Any) -> None:
    assert internals.item_fields(item) == fields


@pytest.mark.parametrize("item", [ITEM, list(ITEM)], ids=["tuple", "list"])
def test_with_extra_data_keeps_the_type_and_the_other_fields(item: Any) -> None:
    changed = internals.with_extra_data(item, {"new": 1})
    assert type(changed) is type(item)
    assert list(changed) == [3, "pid-1", {"1": {}}, {"new": 1}, ["9"]]
    assert item[3] == {"client_id": "tab"}


@pytest.mark.parametrize(
    ("client_id", "expected"), [("tab", "tab"), (None, None), (5, None)], ids=str
)
def test_current_client_id(client_id: Any, expected: str | None) -> None:
    assert internals.current_client_id(SimpleNamespace(client_id=client_id)) == expected


def test_is_connected() -> None:
    server = SimpleNamespace(sockets={"tab": object()})
    assert internals.is_connected(server, "tab") and not internals.is_connected(server, "x")


@pytest.mark.parametrize(
    ("name", "worker"),
    [
        ("Thread-3 (prompt_worker)", True),
        ("Thread-3 (other)", False),
        ("MainThread", False),
        ("prompt_worker", False),
    ],
    ids=["worker", "other-target", "main", "bare-name"],
)
def test_is_worker_thread(name: str, worker: bool) -> None:
    assert internals.is_worker_thread(name) is worker


@pytest.mark.parametrize(
    ("address", "tls", "url"),
    [
        ("127.0.0.1", False, "http://127.0.0.1:8188/prompt"),
        ("0.0.0.0", False, "http://127.0.0.1:8188/prompt"),
        ("", False, "http://127.0.0.1:8188/prompt"),
        (None, False, "http://127.0.0.1:8188/prompt"),
        ("::", False, "http://[::1]:8188/prompt"),
        ("::1", False, "http://[::1]:8188/prompt"),
        ("192.168.1.5,127.0.0.1", False, "http://192.168.1.5:8188/prompt"),
        ("localhost", True, "https://localhost:8188/prompt"),
    ],
    ids=["loopback", "any-v4", "empty", "none", "any-v6", "v6", "list", "tls"],
)
def test_prompt_url(address: str | None, tls: bool, url: str) -> None:
    server = SimpleNamespace(address=address, port=8188)
    assert internals.prompt_url(server, tls=tls) == url


def test_prompt_url_outside_comfyui_is_plain_http() -> None:
    server = SimpleNamespace(address="127.0.0.1", port=8188)
    assert internals.prompt_url(server) == "http://127.0.0.1:8188/prompt"


def test_loopback_tls_context_checks_no_certificate() -> None:
    context = internals.loopback_tls_context()
    assert context.verify_mode == ssl.CERT_NONE and context.check_hostname is False


class Recorder(BaseHTTPRequestHandler):
    """ComfyUI's POST /prompt: 200 with a prompt id, or 400 for a graph marked invalid."""

    received: list[tuple[str, str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.received.append((self.path, self.headers["Content-Type"], body))
        invalid = "invalid" in json.dumps(body)
        answer = {"error": "invalid_prompt"} if invalid else {"prompt_id": "p-42", "number": 1}
        data = json.dumps(answer).encode()
        self.send_response(400 if invalid else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prompt_endpoint() -> Iterator[Any]:
    Recorder.received = []
    http = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(address="127.0.0.1", port=http.server_address[1])
    http.shutdown()
    http.server_close()


def test_queue_prompt_posts_the_body_and_returns_the_prompt_id(prompt_endpoint: Any) -> None:
    body = {"prompt": {"1": {"class_type": "X", "inputs": {}}}, "client_id": "tab"}
    assert internals.queue_prompt(prompt_endpoint, body) == "p-42"
    assert Recorder.received == [("/prompt", "application/json", body)]


def test_queue_prompt_refused_raises_with_comfyuis_answer(prompt_endpoint: Any) -> None:
    with pytest.raises(RuntimeError, match="refused the next prompt.*invalid_prompt"):
        internals.queue_prompt(prompt_endpoint, {"prompt": {"invalid": {}}})


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


def test_execution_blocker_blocks_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    class ExecutionBlocker:
        def __init__(self, message: Any) -> None:
            self.message = message

    fake_module(monkeypatch, "comfy_execution")
    fake_module(monkeypatch, "comfy_execution.graph_utils", ExecutionBlocker=ExecutionBlocker)
    blocker = internals.execution_blocker()
    assert isinstance(blocker, ExecutionBlocker) and blocker.message is None  # no error shown


def test_show_node_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    class ProgressBar:
        def __init__(self, total: int, node_id: str) -> None:
            calls.append(("bar", total, node_id))

        def update_absolute(self, value: int, total: int) -> None:
            calls.append(("update", value, total))

    fake_module(monkeypatch, "comfy")
    fake_module(monkeypatch, "comfy.utils", ProgressBar=ProgressBar)
    monkeypatch.setattr(sys.modules["comfy"], "utils", sys.modules["comfy.utils"], raising=False)
    internals.show_node_progress("7", 3, 10)
    assert calls == [("bar", 10, "7"), ("update", 3, 10)]


FRONTEND_FLAGS = {"feature_flags": {"supports_preview_metadata": True}}


@pytest.mark.parametrize(
    ("client_id", "metadata", "sent"),
    [
        ("tab", {"tab": FRONTEND_FLAGS}, [("3/6", "7", "tab")]),
        ("tab", {"tab": FRONTEND_FLAGS, "other": FRONTEND_FLAGS}, [("3/6", "7", "tab")]),
        ("tab", {"tab": {"feature_flags": {}}}, []),  # an API client: no flags, no frame
        ("tab", {}, []),  # gone
        (None, {"other": FRONTEND_FLAGS}, []),  # no client: never a broadcast
    ],
    ids=["frontend", "only-its-own-tab", "api-client", "disconnected", "no-client"],
)
def test_show_node_text_goes_to_the_running_prompts_frontend_only(
    client_id: str | None, metadata: dict[str, Any], sent: list[tuple[str, str, str]]
) -> None:
    calls: list[tuple[str, str, str]] = []
    server = SimpleNamespace(
        client_id=client_id,
        sockets_metadata=metadata,
        send_progress_text=lambda text, node_id, sid=None: calls.append((text, node_id, sid)),
    )
    assert internals.show_node_text(server, "7", "3/6") is bool(sent)
    assert calls == sent


def test_folders_come_from_folder_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_module(
        monkeypatch,
        "folder_paths",
        get_input_directory=lambda: str(tmp_path / "in"),
        get_output_directory=lambda: str(tmp_path / "out"),
        get_user_directory=lambda: str(tmp_path / "user"),
        get_temp_directory=lambda: str(tmp_path / "temp"),
    )
    assert internals.input_directory() == tmp_path / "in"
    assert internals.output_directory() == tmp_path / "out"
    assert internals.user_directory() == tmp_path / "user"
    assert internals.temp_directory() == tmp_path / "temp"


def test_interrupt_calls_comfyuis_own_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    fake_module(monkeypatch, "nodes", interrupt_processing=lambda: calls.append(True))
    internals.interrupt()
    assert calls == [True]


@pytest.mark.parametrize(
    ("listen", "addresses"),
    [(None, ["127.0.0.1"]), ("0.0.0.0,::", ["0.0.0.0", "::"]), (" a , ,b", ["a", "b"])],
    ids=["default", "two", "spaces"],
)
def test_listen_addresses_and_port(
    monkeypatch: pytest.MonkeyPatch, listen: str | None, addresses: list[str]
) -> None:
    fake_module(monkeypatch, "comfy")
    fake_module(monkeypatch, "comfy.cli_args", args=SimpleNamespace(listen=listen, port=8190))
    assert internals.listen_addresses() == addresses
    assert internals.listen_port() == 8190


def test_outside_comfyui_there_is_no_server_port_or_address() -> None:
    assert internals.prompt_server() is None
    assert internals.listen_port() is None
    assert internals.listen_addresses() == []


# The folder helpers of batch/folders.py, through their public behaviour on a local server.


@pytest.fixture
def comfy_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("input", "output", "user", "temp"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(internals, "input_directory", lambda: tmp_path / "input")
    monkeypatch.setattr(internals, "output_directory", lambda: tmp_path / "output")
    monkeypatch.setattr(internals, "user_directory", lambda: tmp_path / "user")
    monkeypatch.setattr(internals, "temp_directory", lambda: tmp_path / "temp")
    monkeypatch.setattr(internals, "listen_addresses", lambda: ["127.0.0.1"])
    return tmp_path


def test_an_input_folder_is_relative_to_comfyuis_input(comfy_folders: Path) -> None:
    assert resolve_input_folder(" photos ") == comfy_folders / "input" / "photos"
    assert resolve_input_folder(str(comfy_folders / "input")) == comfy_folders / "input"


def test_output_base_is_comfyuis_output_unless_a_folder_is_given(comfy_folders: Path) -> None:
    assert output_base("") == (comfy_folders / "output", True)
    assert output_base("  ") == (comfy_folders / "output", True)
    elsewhere = comfy_folders / "output" / "elsewhere"
    assert output_base(f" {elsewhere} ") == (elsewhere, False)


def test_output_folder_must_be_absolute(comfy_folders: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        output_base("relative/out")


@pytest.mark.parametrize("running", [[], [ITEM], [ITEM + ({},)]], ids=["idle", "v0.3.64", "0.8.0"])
def test_the_running_entry_is_the_queue_s_own_item(running: list[tuple[Any, ...]]) -> None:
    server = SimpleNamespace(prompt_queue=FakeQueue(running, []))
    entry = internals.running_entry(server)
    assert entry is (running[0] if running else None)  # the same object: not copied
    assert internals.item_graph(entry) is (running[0][2] if running else None)


@pytest.mark.parametrize(
    "item", [("too", "short", {}), "not-an-item", None], ids=["short", "string", "none"]
)
def test_an_item_of_unknown_shape_has_no_graph(item: Any) -> None:
    assert internals.item_graph(item) is None
