"""What the integration modules share: a skip without ComfyUI, and a ComfyUI with given packs.

Every module fixture here takes `comfyui_cell` (tests/integration/conftest.py), so it starts
again for each ComfyUI of the matrix; a module fixture of your own that starts a ComfyUI
must take it too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge.tools.launcher import (
    Comfy,
    ComfyCell,
    FrontendCell,
    find_comfyui,
    running_comfyui,
)


def require_comfyui() -> None:
    """Skips, saying why, when no ComfyUI checkout (or its python) is found."""
    found = find_comfyui()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")


def comfyui_found() -> Any:
    """A module fixture that only skips: for tests that start their own servers."""

    @pytest.fixture(scope="module")
    def found(comfyui_cell: ComfyCell) -> None:
        require_comfyui()

    return found


def comfy_fixture(
    *packs: Path, check: Callable[[], None] = require_comfyui, env: dict[str, str] | None = None
) -> Any:
    """A module fixture: one real ComfyUI with these custom node packs, per ComfyUI cell;
    `env` is added to its environment (e.g. a switch of ours)."""

    @pytest.fixture(scope="module")
    def comfy(tmp_path_factory: pytest.TempPathFactory, comfyui_cell: ComfyCell) -> Iterator[Comfy]:
        check()
        root = tmp_path_factory.mktemp("comfy")
        with running_comfyui(root, packs=list(packs), env=env) as running:
            yield running

    return comfy


def browser_comfy_fixture(*packs: Path, check: Callable[[], None] = require_comfyui) -> Any:
    """A module fixture: one real ComfyUI serving the cell's frontend, per ComfyUI x frontend."""

    @pytest.fixture(scope="module")
    def comfy(
        tmp_path_factory: pytest.TempPathFactory,
        comfyui_cell: ComfyCell,
        frontend_cell: FrontendCell,
    ) -> Iterator[Comfy]:
        check()
        root = tmp_path_factory.mktemp("comfy")
        with running_comfyui(root, packs=list(packs), extra_args=frontend_cell.args()) as running:
            yield running

    return comfy
