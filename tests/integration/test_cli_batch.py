"""`comfy-clientid-bridge batch` against one real ComfyUI; installed plainly into a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from integration.cli_support import (
    SLOW_PACK,
    Running,
    images,
    own_stem,
    run,
    workflow,
)
from integration.cli_support import (
    static_command as command,
)
from integration.support import comfy_fixture
from packaging.requirements import Requirement

from comfy_clientid_bridge.tools.launcher import REPO, Comfy, find_comfyui

pytestmark = pytest.mark.integration

comfy = comfy_fixture(REPO, SLOW_PACK)


def host(comfy: Comfy) -> str:
    return comfy.url.removeprefix("http://")


def count_of(line: str) -> int:
    """The count of durable saves in a plain line: '127.0.0.1:8188 3/8 [...' -> 3."""
    return int(line.split(" ")[1].split("/")[0])


def test_a_clean_folder_exits_zero_with_a_plain_line_per_image(
    comfy: Comfy, tmp_path: Path
) -> None:
    stem = own_stem("ok")
    images(tmp_path / stem, 5)
    flow = workflow(tmp_path / "flow.json", stem)
    status, running = run(command([comfy.url], flow, tmp_path / stem))
    assert status == 0, running.text()
    lines = running.stderr  # not a terminal: plain lines, no carriage returns, no bar
    counted = [line.split(" [")[0] for line in lines if line.startswith(f"{host(comfy)} ")]
    # Counts of durable saves: with the pipelined loop they trail the image being processed
    # by the saves in flight (up to 3), so they rise to 5/5 without a line for each number;
    # a line for each image all the same (its name changes).
    counts = [count_of(line) for line in counted if line.endswith("/5")]
    assert counts == sorted(counts) and counts[-1] == 5 and len(counts) >= 6, lines
    assert all("\r" not in line and "\x1b" not in line for line in lines)
    assert f"{host(comfy)}: done: 5 saved, 0 skipped" in lines
    report = next(line for line in lines if line.startswith(f"  report ({host(comfy)}): "))
    assert Path(report.split("): ", 1)[1]).parent == comfy.output
    assert lines[-1] == "result: 5/5 images (exit 0)"
    assert running.stdout == []


def test_an_unreadable_image_exits_non_zero_with_the_summary(comfy: Comfy, tmp_path: Path) -> None:
    stem = own_stem("bad")
    images(tmp_path / stem, 3, corrupt=True)
    flow = workflow(tmp_path / "flow.json", stem)
    status, running = run(command([comfy.url], flow, tmp_path / stem, "--json"))
    assert status == 1, running.text()
    [end] = [event for event in running.events() if event["event"] == "end"]
    assert (end["outcome"], end["failed"], end["ok"]) == ("done", 1, False)
    assert end["message"] == "done: 3 saved, 0 skipped, 1 failed"
    assert running.events()[-1]["exit"] == 1


def test_ctrl_c_stops_the_batch_and_the_same_command_resumes(comfy: Comfy, tmp_path: Path) -> None:
    stem = own_stem("slow")
    folder = tmp_path / stem
    images(folder, 8)
    flow = workflow(tmp_path / "flow.json", stem, pause=0.3)
    running = Running(command([comfy.url], flow, folder))
    mine = f"{host(comfy)} "
    running.wait_until(
        lambda: any(
            line.startswith(mine) and "/8 " in line and count_of(line) >= 2
            for line in running.stderr
        )
    )
    running.interrupt()
    assert running.finish() == 130, running.text()
    assert any(
        line.startswith(f"{host(comfy)}: stopped at ") and "run the same command again" in line
        for line in running.stderr
    ), running.text()
    status, resumed = run(command([comfy.url], flow, folder))
    assert status == 0, resumed.text()
    assert f"{host(comfy)}: done: 8 saved, 0 skipped" in resumed.stderr
    first = next(line for line in resumed.stderr if line.startswith(f"{host(comfy)} "))
    assert not first.startswith(f"{host(comfy)} 0/8"), "resumed where it stopped"
    assert len(list((comfy.output / stem).glob("*_out.png"))) == 8


def project() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with (REPO / "pyproject.toml").open("rb") as file:
        return dict(tomllib.load(file)["project"])


def test_comfyuis_environment_already_has_what_the_runner_declares() -> None:
    """Installed into ComfyUI's environment, the runner's declared needs change nothing
    there: ComfyUI's python already satisfies each floor."""
    found = find_comfyui()
    assert not isinstance(found, str), found
    declared = {r.name.lower(): r for r in map(Requirement, project()["dependencies"])}
    for name in ("aiohttp", "tqdm"):
        version = f"import importlib.metadata as m; print(m.version({name!r}))"
        installed = subprocess.run(
            [str(found[1]), "-c", version], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert declared[name].specifier.contains(installed), (declared[name], installed)


def test_a_plain_pip_install_in_a_fresh_venv_runs_the_command(comfy: Comfy, tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info next to it
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "*.egg-info", "build", "*_cache", ".hypothesis", "__pycache__", "docs"
        ),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for heavy in ("torch", "numpy", "pillow"):
        assert f"\n{heavy}==" not in f"\n{installed}", installed
    stem = own_stem("fresh")
    images(tmp_path / stem, 3)
    flow = workflow(tmp_path / "flow.json", stem)
    program = [str(venv / "bin" / "comfy-clientid-bridge")]
    status, running = run(command([comfy.url], flow, tmp_path / stem, program=program))
    assert status == 0, running.text()
    assert f"{host(comfy)}: done: 3 saved, 0 skipped" in running.stderr
