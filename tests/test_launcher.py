"""The test matrix read from the environment: which ComfyUIs and frontends, and their ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfy_clientid_bridge.tools.launcher import (
    ComfyCell,
    FrontendCell,
    browser_pairs,
    checkout_and_python,
    comfyui_cells,
    comfyui_version,
    frontend_cells,
    venv_python,
)


def checkout(folder: Path, version: str | None = "0.8.0", venv: str = ".venv") -> Path:
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("")
    if version:
        (folder / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    python = folder / venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    return folder


def frontend(folder: Path) -> Path:
    static = folder / "comfyui_frontend_package" / "static"
    static.mkdir(parents=True)
    (static / "index.html").write_text("<div id=vue-app></div>")
    return folder


def test_without_matrix_the_one_comfyui_named_by_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    comfy = checkout(tmp_path / "comfy" / "ComfyUI", version="0.3.64")
    assert comfyui_cells({}) == [ComfyCell("0.3.64", comfy, None)]
    assert comfyui_cells({"COMFYUI_PATH": str(tmp_path / "x")})[0].label == "default"
    cell = comfyui_cells({"COMFYUI_PATH": str(comfy), "COMFYUI_PYTHON": "/py"})[0]
    assert (cell.id, cell.python) == ("comfy-0.3.64", Path("/py"))


def test_matrix_lists_checkouts_with_optional_python(tmp_path: Path) -> None:
    value = f" 0.3.64={tmp_path}/a ;\n0.8.0={tmp_path}/b|/opt/py/bin/python;"
    cells = comfyui_cells({"COMFYUI_MATRIX": value, "COMFYUI_PATH": "/ignored"})
    assert cells == [
        ComfyCell("0.3.64", tmp_path / "a", None),
        ComfyCell("0.8.0", tmp_path / "b", Path("/opt/py/bin/python")),
    ]
    assert [cell.id for cell in cells] == ["comfy-0.3.64", "comfy-0.8.0"]


@pytest.mark.parametrize(
    "value",
    ["/just/a/path", "=/no/label", "0.8.0=", "0.8.0"],
    ids=["no-label", "empty-label", "no-path", "no-equals"],
)
def test_matrix_entry_of_another_shape_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="label=path"):
        comfyui_cells({"COMFYUI_MATRIX": value})


def test_missing_cell_says_which_and_why(tmp_path: Path) -> None:
    absent = ComfyCell("0.8.0", tmp_path / "nowhere").found()
    assert (
        absent == f"comfy-0.8.0: no ComfyUI checkout at {tmp_path / 'nowhere'} (set COMFYUI_PATH)"
    )
    comfy = checkout(tmp_path / "c")
    (comfy / ".venv" / "bin" / "python").unlink()
    assert "comfy-0.8.0: no python for ComfyUI at" in str(ComfyCell("0.8.0", comfy).found())
    assert ComfyCell("x", comfy, comfy / "main.py").found() == (comfy, comfy / "main.py")


def test_frontends_default_to_the_shipped_one() -> None:
    assert frontend_cells({}) == [FrontendCell("shipped")]
    assert FrontendCell("shipped").args() == ()
    assert FrontendCell("shipped").missing() is None


def test_frontends_from_unpacked_wheels_or_static_folders(tmp_path: Path) -> None:
    wheel = frontend(tmp_path / "1.58.1")
    static = frontend(tmp_path / "other") / "comfyui_frontend_package" / "static"
    value = f"1.58.1={wheel};shipped;1.35.9={static}"
    cells = frontend_cells({"COMFYUI_FRONTENDS": value})
    assert [cell.id for cell in cells] == ["fe-1.58.1", "fe-shipped", "fe-1.35.9"]
    assert cells[0].args() == (
        "--front-end-root",
        str(wheel / "comfyui_frontend_package" / "static"),
    )
    assert cells[2].static == static
    assert all(cell.missing() is None for cell in cells)


def test_missing_frontend_says_which_and_how_to_get_it(tmp_path: Path) -> None:
    cell = frontend_cells({"COMFYUI_FRONTENDS": f"1.58.1={tmp_path}/none"})[0]
    assert cell.missing() == (
        f"fe-1.58.1: no frontend at {tmp_path}/none (scripts/comfyui_matrix.sh prepares it)"
    )


@pytest.mark.parametrize(
    ("venv", "inside"),
    [(".venv", "bin/python"), ("venv", "bin/python"), (".venv", "Scripts/python.exe")],
    ids=["dot-venv", "venv", "windows"],
)
def test_venv_python_as_comfy_cli_lays_it_out(tmp_path: Path, venv: str, inside: str) -> None:
    python = tmp_path / venv / inside
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert venv_python(tmp_path) == python
    assert (
        checkout_and_python(tmp_path, None)
        == f"no ComfyUI checkout at {tmp_path} (set COMFYUI_PATH)"
    )


def test_version_read_from_comfyui_version_py(tmp_path: Path) -> None:
    assert comfyui_version(checkout(tmp_path / "a", version="0.8.0")) == "0.8.0"
    assert comfyui_version(checkout(tmp_path / "b", version=None)) is None


def test_browser_pairs_all_unless_named() -> None:
    assert browser_pairs({}) is None
    value = "0.3.64/1.27.10; 0.8.0/1.58.1"
    assert browser_pairs({"COMFYUI_BROWSER_CELLS": value}) == {
        ("0.3.64", "1.27.10"),
        ("0.8.0", "1.58.1"),
    }
    with pytest.raises(ValueError, match="comfyui/frontend"):
        browser_pairs({"COMFYUI_BROWSER_CELLS": "0.8.0"})
