"""The opt-in freeze of the objects alive at server start (batch/gc_freeze.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web
from test_register import engine, fake_server

from comfy_clientid_bridge import register
from comfy_clientid_bridge.batch import gc_freeze

__all__ = ["engine"]  # the batch engine in tmp_path, for registration without ComfyUI


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's own objects go back to the collector afterwards."""
    yield
    gc.unfreeze()


@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        ("1", True),
        (" On ", True),
        ("true", True),
        ("yes", True),
        ("enabled", True),
        ("", False),
        ("0", False),
        ("off", False),
        ("2", False),
    ],
    ids=lambda v: repr(v),
)
def test_the_switch_is_off_unless_set_on(value: str, wanted: bool) -> None:
    assert gc_freeze.wanted({gc_freeze.GC_FREEZE_SWITCH: value}) is wanted
    assert gc_freeze.wanted({}) is False


@pytest.mark.usefixtures("unfrozen")
def test_at_startup_garbage_is_collected_and_the_rest_frozen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Cycle:
        collected = 0

        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            Cycle.collected += 1

    kept = Cycle()
    Cycle()  # garbage: a cycle only the collector frees
    assert gc.get_freeze_count() == 0
    with caplog.at_level(logging.INFO, logger=gc_freeze.__name__):
        asyncio.run(gc_freeze.freeze_at_startup(web.Application()))
    assert Cycle.collected == 1, "garbage was frozen instead of collected"
    assert gc.get_freeze_count() > 1000
    assert not any(obj is kept for obj in gc.get_objects()), "a live object was left tracked"
    assert f"objects alive at start frozen ({gc_freeze.GC_FREEZE_SWITCH})" in caplog.text


@pytest.mark.usefixtures("engine")
@pytest.mark.parametrize("on", [True, False], ids=["switch-on", "switch-off"])
def test_registration_freezes_at_startup_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, on: bool
) -> None:
    if on:
        monkeypatch.setenv(gc_freeze.GC_FREEZE_SWITCH, "1")
    server = fake_server()
    register._install(server)
    assert (gc_freeze.freeze_at_startup in server.app.on_startup) is on
