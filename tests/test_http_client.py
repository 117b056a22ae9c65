"""The runner's aiohttp: imported without the system's certificates; https servers verified."""

from __future__ import annotations

import io
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_clientid_bridge import __main__ as command
from comfy_clientid_bridge.tools import http_client
from comfy_clientid_bridge.tools.http_client import (
    CertificatesAtNeed,
    _load_nothing,
    _system_certificates_skipped,
    client_session,
    import_aiohttp_without_certificates,
)

ROOT = Path(__file__).resolve().parents[1]


def system_ca_count() -> int:
    return int(ssl.create_default_context().cert_store_stats()["x509_ca"])


@pytest.fixture
def system_certificates() -> Iterator[None]:
    if system_ca_count() == 0:
        pytest.skip("this machine has no system CA certificates to load")
    yield


def fresh_interpreter(code: str) -> Any:
    """What `code` prints as JSON, run in a Python that has imported nothing of ours."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_aiohttp_is_imported_without_the_system_certificates(system_certificates: None) -> None:
    # aiohttp's default contexts (connector.py, 3.10 to 3.14.5) are made at its import.
    found = fresh_interpreter(
        "import json, ssl\n"
        "from comfy_clientid_bridge.tools.http_client import "
        "import_aiohttp_without_certificates as load\n"
        "load()\n"
        "from aiohttp import connector\n"
        "print(json.dumps({\n"
        "  'aiohttp': connector._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],\n"
        "  'after': ssl.create_default_context().cert_store_stats()['x509_ca'],\n"
        "  'left': sorted(vars(ssl.SSLContext).keys() & {'set_default_verify_paths'}),\n"
        "}))"
    )
    assert found == {"aiohttp": 0, "after": system_ca_count(), "left": []}


def test_the_default_context_without_certificates_still_verifies(
    system_certificates: None,
) -> None:
    # Used by mistake (an http server redirecting to https), it trusts nothing.
    found = fresh_interpreter(
        "import json, ssl\n"
        "from comfy_clientid_bridge.tools.http_client import "
        "import_aiohttp_without_certificates as load\n"
        "load()\n"
        "from aiohttp import connector\n"
        "context = connector._SSL_CONTEXT_VERIFIED\n"
        "print(json.dumps([context.verify_mode == ssl.CERT_REQUIRED, context.check_hostname]))"
    )
    assert found == [True, True]


def test_an_aiohttp_imported_before_keeps_its_certificates(system_certificates: None) -> None:
    from aiohttp import connector

    before = dict(vars(ssl.SSLContext))
    import_aiohttp_without_certificates()  # pytest imported aiohttp: nothing to do
    assert dict(vars(ssl.SSLContext)) == before
    assert connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"] == system_ca_count()


def own_loader(context: ssl.SSLContext, purpose: object = None) -> None:
    """Someone else's override of the loading, there before ours."""


@pytest.mark.parametrize(
    "override",
    [None, own_loader],
    ids=["ssl-as-shipped", "someone-elses-override-kept"],
)
def test_the_skipping_ends_with_ssl_as_it_was(
    override: Any, monkeypatch: pytest.MonkeyPatch, system_certificates: None
) -> None:
    if override is not None:
        monkeypatch.setattr(ssl.SSLContext, "set_default_verify_paths", override, raising=False)
    before = dict(vars(ssl.SSLContext))
    with _system_certificates_skipped():
        assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0
    assert dict(vars(ssl.SSLContext)) == before


def test_the_skipping_ends_when_the_import_fails(system_certificates: None) -> None:
    before = dict(vars(ssl.SSLContext))
    with pytest.raises(ImportError), _system_certificates_skipped():
        raise ImportError("no aiohttp")
    assert dict(vars(ssl.SSLContext)) == before


@pytest.mark.parametrize(
    ("urls", "loaded"),
    [
        (["http://a:8188", "http://b:8188"], False),
        (["https://cloud.example:443"], True),
        (["http://a:8188", "https://cloud.example:443"], True),
        (["HTTPS://cloud.example"], True),
    ],
    ids=["http-only", "https", "mixed", "https-uppercase"],
)
async def test_a_session_verifies_and_loads_the_certificates_for_an_https_server(
    urls: list[str], loaded: bool, system_certificates: None
) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    async with client_session(urls, timeout) as session:
        context = session.connector._ssl  # type: ignore[union-attr]
        assert session.timeout == timeout
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == (system_ca_count() if loaded else 0)


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/there")


async def there(request: web.Request) -> web.Response:
    return web.Response(text="here")


@pytest.mark.parametrize(
    ("path", "loaded"),
    [("/there", False), ("/redirect", True)],
    ids=["plain-http-request", "redirect-may-lead-to-https"],
)
async def test_an_http_session_loads_the_certificates_only_at_a_redirect(
    path: str, loaded: bool, system_certificates: None
) -> None:
    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/there", there)
    async with TestServer(app) as server:
        url = str(server.make_url(""))
        async with client_session([url], aiohttp.ClientTimeout(total=5)) as session:
            context = session.connector._ssl  # type: ignore[union-attr]
            async with session.get(f"{url}{path}") as reply:
                assert await reply.text() == "here"
    assert context.cert_store_stats()["x509_ca"] == (system_ca_count() if loaded else 0)


async def https_get(session: aiohttp.ClientSession) -> None:
    async with session.get("https://127.0.0.1:9/"):
        pass


async def wss_connect(session: aiohttp.ClientSession) -> None:
    await session.ws_connect("wss://127.0.0.1:9/ws")


@pytest.mark.parametrize("request_", [https_get, wss_connect], ids=["https-get", "wss-websocket"])
async def test_an_https_request_loads_the_certificates_before_it_connects(
    request_: Any, system_certificates: None
) -> None:
    async with client_session(["http://a:8188"], aiohttp.ClientTimeout(total=5)) as session:
        context = session.connector._ssl  # type: ignore[union-attr]
        with pytest.raises(aiohttp.ClientError):  # nobody listens there
            await request_(session)
    assert context.cert_store_stats()["x509_ca"] == system_ca_count()


def test_the_certificates_are_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    certificates = CertificatesAtNeed()
    loads: list[object] = []
    monkeypatch.setattr(certificates.context, "load_default_certs", loads.append)
    certificates.load()
    certificates.load()
    assert loads == [ssl.Purpose.SERVER_AUTH]


@pytest.mark.parametrize(
    ("imported_before", "imports"),
    [(False, [("aiohttp", True)]), (True, [])],
    ids=["first-import-skips-the-certificates", "imported-before-left-alone"],
)
def test_aiohttp_is_imported_once_with_the_certificates_skipped(
    imported_before: bool, imports: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, bool]] = []

    def import_module(name: str) -> None:
        skipped = vars(ssl.SSLContext).get("load_default_certs") is _load_nothing
        seen.append((name, skipped))

    if not imported_before:
        monkeypatch.delitem(sys.modules, "aiohttp")
    monkeypatch.setattr(http_client.importlib, "import_module", import_module)
    import_aiohttp_without_certificates()
    assert seen == imports


class Stream(io.StringIO):
    def __init__(self, events: list[str], name: str) -> None:
        super().__init__()
        self.events, self.name = events, name

    def flush(self) -> None:
        self.events.append(f"flush {self.name}")


@pytest.mark.parametrize(
    "status", [0, 1, 2, 130], ids=["ok", "incomplete", "not-started", "ctrl-c"]
)
def test_the_command_flushes_its_output_then_exits_at_once_with_the_status(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        events.append(f"exit {code}")
        raise Exited

    monkeypatch.setattr(command, "main", lambda: status)
    monkeypatch.setattr(sys, "stdout", Stream(events, "stdout"))
    monkeypatch.setattr(sys, "stderr", Stream(events, "stderr"))
    monkeypatch.setattr(command.os, "_exit", exit_now)
    with pytest.raises(Exited):
        command.console()
    # (logging.shutdown may flush a stream before: pytest's own log handlers)
    assert events[-3:] == ["flush stdout", "flush stderr", f"exit {status}"]


def test_python_dash_m_runs_the_command_and_its_output_arrives(tmp_path: Path) -> None:
    workflow = tmp_path / "flow.json"
    workflow.write_text((ROOT / "examples" / "batch_folder.api.json").read_text())
    (tmp_path / "in").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "comfy_clientid_bridge", "batch", "--json"]
        + ["--workflow", str(workflow), "--folder", str(tmp_path / "in")]
        + ["--ledger", str(tmp_path / "l.sqlite"), "--server", "http://127.0.0.1:9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 2
    assert events[-1]["event"] == "error" and "no server answers" in events[-1]["message"]
