"""The test matrix: every integration test once per ComfyUI, every browser test once per
ComfyUI x frontend (ids `comfy-0.8.0`, `fe-1.58.1`).

$COMFYUI_MATRIX lists the ComfyUIs and $COMFYUI_FRONTENDS the frontends (see
comfy_clientid_bridge/tools/launcher.py comfyui_cells / frontend_cells). Unset, they are
today's one ComfyUI ($COMFYUI_PATH or ~/comfy/ComfyUI) with the frontend it ships. A cell
that is not on this machine skips its tests and says why. $COMFYUI_BROWSER_CELLS, when set,
keeps only the ComfyUI/frontend pairs it names for the browser tier (CI's subset).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfy_clientid_bridge.tools.launcher import (
    ComfyCell,
    FrontendCell,
    browser_pairs,
    comfyui_cells,
    frontend_cells,
)

# A real server on a shared 2-core machine sometimes misses a timing (a Stop click landing
# one image late under load): an integration test that fails gets one rerun, and fails the
# run only if it fails twice. The unit tier gets none. CIB_INTEGRATION_RERUNS=0 shows every
# first failure (when hunting a flaky one).
INTEGRATION_RERUNS = int(os.environ.get("CIB_INTEGRATION_RERUNS", "1"))


@pytest.fixture
def own_subfolder(tmp_path: Path) -> str:
    """An output subfolder for this attempt of the test alone. A module shares one server,
    and the saver skips files that exist: a rerun saving where the first attempt did would
    find its files and fail for that alone (three full CI runs of 2026-11-28 did)."""
    return tmp_path.name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.flaky(reruns=INTEGRATION_RERUNS, reruns_delay=2))


COMFY_CELLS = comfyui_cells(os.environ)
FRONTEND_CELLS = frontend_cells(os.environ)
BROWSER_PAIRS = browser_pairs(os.environ)


@pytest.fixture(scope="session", autouse=True, params=COMFY_CELLS, ids=[c.id for c in COMFY_CELLS])
def comfyui_cell(request: pytest.FixtureRequest) -> Iterator[ComfyCell]:
    """Points find_comfyui() (so every server a test starts) at this cell's ComfyUI.

    Session scope: pytest runs all of one cell's tests before the next cell's. A module
    fixture that starts a ComfyUI must take this fixture, so it is set up again per cell."""
    cell: ComfyCell = request.param
    found = cell.found()
    if isinstance(found, str):
        pytest.skip(f"integration tier: {found}")
    checkout, python = found
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMFYUI_PATH", str(checkout))
        patch.setenv("COMFYUI_PYTHON", str(python))
        yield cell


@pytest.fixture(scope="session", params=FRONTEND_CELLS, ids=[f.id for f in FRONTEND_CELLS])
def frontend_cell(request: pytest.FixtureRequest, comfyui_cell: ComfyCell) -> FrontendCell:
    """The frontend a browser test's ComfyUI serves (`--front-end-root`)."""
    cell: FrontendCell = request.param
    missing = cell.missing()
    if missing:
        pytest.skip(f"browser tier: {missing}")
    if BROWSER_PAIRS is not None and (comfyui_cell.label, cell.label) not in BROWSER_PAIRS:
        pytest.skip(f"browser tier: {comfyui_cell.id} x {cell.id} not in $COMFYUI_BROWSER_CELLS")
    return cell
