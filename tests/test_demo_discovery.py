"""Where the demo finds a user's ComfyUI, what it checks first, and what it says without one."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from comfy_clientid_bridge.tools.demo import (
    comfyui_places,
    demo,
    locate_comfyui,
    missing_configs,
    python_problem,
)


def checkout(folder: Path, python: str | None = ".venv/bin/python") -> Path:
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("")
    if python:
        (folder / python).parent.mkdir(parents=True)
        (folder / python).write_text("")
    return folder


def fake_python(path: Path, exit_status: int, stderr: str = "") -> Path:
    """A python stand-in: records its arguments, prints `stderr`, exits with `exit_status`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'#!/bin/sh\necho "$@" > "{path}.args"\necho "{stderr}" >&2\nexit {exit_status}\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def locate(home: Path, explicit: Path | None = None, system: str = "linux", **environ: str):
    return locate_comfyui(comfyui_places(explicit, environ, home, system))


def test_comfyui_option_is_the_only_place_looked_at(tmp_path: Path) -> None:
    checkout(tmp_path / "comfy" / "ComfyUI")  # the default exists, but was not asked for
    asked = tmp_path / "mine"
    found, looked = locate(tmp_path, explicit=asked)
    assert found is None
    assert looked == [f"--comfyui: no ComfyUI checkout at {asked}"]
    checkout(asked, python="venv/bin/python")
    assert locate(tmp_path, explicit=asked)[0] == (asked, asked / "venv" / "bin" / "python")


def test_comfyui_path_variable_comes_first(tmp_path: Path) -> None:
    checkout(tmp_path / "comfy" / "ComfyUI")
    elsewhere = checkout(tmp_path / "elsewhere")
    found, _ = locate(tmp_path, COMFYUI_PATH=str(elsewhere))
    assert found == (elsewhere, elsewhere / ".venv" / "bin" / "python")


def test_comfy_cli_default_workspace_location(tmp_path: Path) -> None:
    comfy = checkout(tmp_path / "comfy" / "ComfyUI")
    assert locate(tmp_path)[0] == (comfy, comfy / ".venv" / "bin" / "python")


@pytest.mark.parametrize(
    ("system", "config"),
    [
        ("linux", ".config/comfy-cli/config.ini"),
        ("darwin", "Library/Application Support/comfy-cli/config.ini"),
        ("win32", "AppData/Local/comfy-cli/config.ini"),
    ],
    ids=["linux", "macos", "windows"],
)
@pytest.mark.parametrize("key", ["default_workspace", "recent_workspace"])
@pytest.mark.parametrize("layout", ["checkout", "old-workspace"])
def test_comfy_cli_configured_workspace(
    tmp_path: Path, system: str, config: str, key: str, layout: str
) -> None:
    workspace = tmp_path / "work" / "ws"
    comfy = checkout(workspace if layout == "checkout" else workspace / "ComfyUI")
    (tmp_path / config).parent.mkdir(parents=True)
    (tmp_path / config).write_text(f"[DEFAULT]\n{key} = {workspace}\nenable_tracking = False\n")
    found, looked = locate(tmp_path, system=system)
    assert found == (comfy, comfy / ".venv" / "bin" / "python")
    assert looked[0].startswith("comfy-cli's default workspace: no ComfyUI checkout")


def test_comfy_cli_config_that_is_not_ini_is_passed_over(tmp_path: Path) -> None:
    config = tmp_path / ".config" / "comfy-cli" / "config.ini"
    config.parent.mkdir(parents=True)
    config.write_text("no section header\n")
    found, looked = locate(tmp_path)
    assert found is None and not any("comfy-cli default_workspace" in line for line in looked)


@pytest.mark.parametrize("system", ["darwin", "win32"], ids=["macos", "windows"])
def test_desktop_app_with_the_venv_in_its_base_path(tmp_path: Path, system: str) -> None:
    base = tmp_path / "Documents" / "ComfyUI"
    python = base / ".venv" / ("Scripts/python.exe" if system == "win32" else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")
    if system == "darwin":
        config = tmp_path / "Library" / "Application Support" / "ComfyUI" / "config.json"
        code = tmp_path / "Applications" / "ComfyUI.app" / "Contents" / "Resources" / "ComfyUI"
        environ: dict[str, str] = {}
    else:
        config = tmp_path / "roaming" / "ComfyUI" / "config.json"
        code = (
            tmp_path / "local" / "Programs" / "@comfyorgcomfyui-electron" / "resources" / "ComfyUI"
        )
        environ = {"APPDATA": str(tmp_path / "roaming"), "LOCALAPPDATA": str(tmp_path / "local")}
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"basePath": str(base), "installState": "installed"}))
    checkout(code, python=None)
    assert locate(tmp_path, system=system, **environ)[0] == (code, python)


def test_desktop_without_config_is_not_a_find(tmp_path: Path) -> None:
    checkout(tmp_path / "Applications" / "ComfyUI.app" / "Contents" / "Resources" / "ComfyUI", None)
    found, looked = locate(tmp_path, system="darwin")
    assert found is None
    assert any(line.startswith("ComfyUI Desktop") and "no python" in line for line in looked)


@pytest.mark.parametrize("where", ["", "Desktop", "Downloads", "Documents"])
def test_windows_portable_with_its_embedded_python(tmp_path: Path, where: str) -> None:
    portable = tmp_path / where / "ComfyUI_windows_portable"
    comfy = checkout(portable / "ComfyUI", python=None)
    python = portable / "python_embeded" / "python.exe"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert locate(tmp_path, system="win32")[0] == (comfy, python)


def test_python_that_imports_torch_and_aiohttp_is_ready(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "py", 0)
    assert python_problem(python) is None
    assert Path(f"{python}.args").read_text().strip() == "-c import torch, aiohttp"


def test_python_without_torch_says_so(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "py", 1, "ModuleNotFoundError: No module named 'torch'")
    assert python_problem(python) == (
        f"{python} cannot import torch and aiohttp (ModuleNotFoundError: No module named 'torch')"
    )
    assert "could not be run" in str(python_problem(tmp_path / "absent"))


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("COMFYUI_PATH", "COMFYUI_PYTHON", "APPDATA", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_demo_without_comfyui_exits_2_listing_places_and_commands(
    bare_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        assert demo() == 2
    said = caplog.text
    assert (
        f"comfy-cli's default workspace: no ComfyUI checkout at {bare_home / 'comfy' / 'ComfyUI'}"
        in said
    )
    assert "ComfyUI portable: no ComfyUI checkout at" in said
    assert f"comfy-cli config: none at {bare_home / '.config' / 'comfy-cli' / 'config.ini'}" in said
    assert "comfy --skip-prompt --workspace ~/comfy/ComfyUI install --cpu" in said
    assert "python -m comfy_clientid_bridge demo --comfyui ~/comfy/ComfyUI" in said


def test_demo_with_a_python_that_cannot_run_comfyui_exits_2_before_starting(
    bare_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    comfy = checkout(bare_home / "ComfyUI", python=None)
    fake_python(
        comfy / ".venv" / "bin" / "python", 1, "ModuleNotFoundError: No module named 'torch'"
    )
    with caplog.at_level(logging.ERROR):
        assert demo(comfyui=comfy) == 2
    assert f"demo: ComfyUI at {comfy}, but" in caplog.text
    assert "No module named 'torch'" in caplog.text
    assert not (comfy / "user").exists()  # nothing was started


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("linux", ["comfy-cli config"]),
        ("darwin", ["comfy-cli config", "ComfyUI Desktop config"]),
        ("win32", ["comfy-cli config", "ComfyUI Desktop config"]),
    ],
    ids=["linux", "macos", "windows"],
)
def test_missing_tool_configs_are_named(tmp_path: Path, system: str, expected: list[str]) -> None:
    said = missing_configs({}, tmp_path, system)
    assert [line.split(":")[0] for line in said] == expected
    config = tmp_path / ".config" / "comfy-cli" / "config.ini"
    config.parent.mkdir(parents=True)
    config.write_text("[DEFAULT]\n")
    assert not any(line.startswith("comfy-cli") for line in missing_configs({}, tmp_path, "linux"))
