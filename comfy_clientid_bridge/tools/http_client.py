"""The terminal runner's aiohttp: imported without the system's CA certificates, which only
an https server needs (loaded when one is asked)."""

from __future__ import annotations

import importlib
import ssl
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


@contextmanager
def _system_certificates_skipped() -> Iterator[None]:
    """While inside, a new SSL context loads no system CA certificates (its store stays
    empty: it verifies nothing, it trusts nothing)."""
    # load_default_certs is ssl.py's own; set_default_verify_paths is inherited from
    # _ssl._SSLContext, so it is shadowed on the subclass and the shadow removed after.
    names = ("load_default_certs", "set_default_verify_paths")
    own = {name: ssl.SSLContext.__dict__.get(name) for name in names}
    for name in names:
        setattr(ssl.SSLContext, name, _load_nothing)
    try:
        yield
    finally:
        for name, function in own.items():
            if function is None:
                delattr(ssl.SSLContext, name)
            else:
                setattr(ssl.SSLContext, name, function)


def _load_nothing(context: ssl.SSLContext, purpose: object = None) -> None:
    """Stands in for the loading of the system's certificates."""


def import_aiohttp_without_certificates() -> None:
    """aiohttp, imported before anything else imports it, without the certificates.

    aiohttp builds two default SSL contexts when it is imported (connector.py,
    `_SSL_CONTEXT_VERIFIED` and `_SSL_CONTEXT_UNVERIFIED`; aiohttp 3.10 to 3.14.5 checked),
    each parsing the system's CA bundle: ~70 ms of the runner's ~0.3 s start on this
    machine (bench/multi_server.py counts that start in the makespan). The runner never uses
    them: its sessions (`client_session`) bring a context of their own. Should one be used
    all the same, its empty store trusts no certificate: the connection fails, it is never
    left unverified. Already imported (inside pytest, a program of the user's): nothing
    changes.
    """
    if "aiohttp" in sys.modules:
        return
    with _system_certificates_skipped():
        importlib.import_module("aiohttp")


class CertificatesAtNeed:
    """A verifying client context that loads the system's CA certificates when a request
    first needs them: an https server, or a redirect (which may lead to one). A run on plain
    http servers never pays for them (~35 ms)."""

    def __init__(self) -> None:
        # What ssl.create_default_context() makes for a client, less the certificates:
        # PROTOCOL_TLS_CLIENT verifies the chain and the host name.
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.loaded = False

    def load(self) -> None:
        if not self.loaded:
            self.context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            self.loaded = True

    async def on_request_start(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        if params.url.scheme in ("https", "wss"):
            self.load()

    async def on_request_redirect(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        self.load()


def client_session(urls: Sequence[str], timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
    """A session for these servers, verifying https with the system's certificates, loaded
    at once when a server is https, else only if a redirect calls for them."""
    import aiohttp

    certificates = CertificatesAtNeed()
    if any(url.lower().startswith("https:") for url in urls):
        certificates.load()
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(certificates.on_request_start)
    trace.on_request_redirect.append(certificates.on_request_redirect)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=aiohttp.TCPConnector(ssl=certificates.context),
        trace_configs=[trace],
    )
