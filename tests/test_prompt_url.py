"""Node code reaches its own server's /prompt over loopback, in the scheme the server serves."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from comfy_clientid_bridge import internals


@pytest.mark.parametrize(
    ("address", "tls", "expected"),
    [
        ("127.0.0.1", False, "http://127.0.0.1:8188/prompt"),
        ("0.0.0.0", False, "http://127.0.0.1:8188/prompt"),
        ("", False, "http://127.0.0.1:8188/prompt"),
        ("::", False, "http://[::1]:8188/prompt"),
        ("::1", True, "https://[::1]:8188/prompt"),
        ("192.168.1.5,127.0.0.1", True, "https://192.168.1.5:8188/prompt"),
    ],
    ids=["loopback", "any-ipv4", "empty", "any-ipv6", "ipv6-tls", "first-of-several-tls"],
)
def test_prompt_url(address: str, tls: bool, expected: str) -> None:
    server = SimpleNamespace(address=address, port=8188)
    assert internals.prompt_url(server, tls=tls) == expected


@pytest.mark.parametrize(
    ("keyfile", "certfile", "scheme"),
    [("k.pem", "c.pem", "https"), ("k.pem", None, "http"), (None, None, "http")],
    ids=["both-files", "key-only", "none"],
)
def test_scheme_follows_the_tls_arguments_core_reads(
    monkeypatch: pytest.MonkeyPatch, keyfile: str | None, certfile: str | None, scheme: str
) -> None:
    comfy, cli_args = ModuleType("comfy"), ModuleType("comfy.cli_args")
    cli_args.args = SimpleNamespace(tls_keyfile=keyfile, tls_certfile=certfile)  # type: ignore[attr-defined]
    comfy.cli_args = cli_args  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.cli_args", cli_args)
    url = internals.prompt_url(SimpleNamespace(address="127.0.0.1", port=1))
    assert url.startswith(f"{scheme}://")
