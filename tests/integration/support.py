"""What the integration modules share: a skip without ComfyUI, and a ComfyUI with given packs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge.tools.launcher import Comfy, find_comfyui, running_comfyui


def require_comfyui() -> None:
    """Skips, saying why, when no ComfyUI checkout (or its python) is found."""
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")


def comfyui_found() -> Any:
    """A module fixture that only skips: for tests that start their own servers."""
    return pytest.fixture(scope="module")(require_comfyui)


def comfy_fixture(*packs: Path, check: Callable[[], None] = require_comfyui) -> Any:
    """A module fixture: one real ComfyUI with these custom node packs, for the module."""

    @pytest.fixture(scope="module")
    def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
        check()
        with running_comfyui(tmp_path_factory.mktemp("comfy"), packs=list(packs)) as running:
            yield running

    return comfy
