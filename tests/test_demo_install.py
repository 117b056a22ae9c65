"""The demo installs a ComfyUI when none is found: when it may, how, and what a failure leaves."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge.__main__ import main
from comfy_clientid_bridge.tools import demo as demo_module
from comfy_clientid_bridge.tools.demo import demo, ready_comfyui
from comfy_clientid_bridge.tools.install_comfyui import (
    DECLINED,
    ESTIMATE,
    SOURCE_VARIABLE,
    TORCH_CPU,
    TORCH_VARIABLE,
    UPSTREAM,
    Step,
    git_steps,
    install,
    install_steps,
    unfinished_marker,
    wants_install,
)
from comfy_clientid_bridge.tools.launcher import checkout_and_python

NEVER_ASKED = "never asked"


def asker(answer: str | type[BaseException]) -> tuple[Callable[[str], str], list[str]]:
    """An `input` stand-in answering `answer` (or raising it), and the questions it got."""
    questions: list[str] = []

    def ask(question: str) -> str:
        questions.append(question)
        if isinstance(answer, type):
            raise answer()
        return answer

    return ask, questions


@pytest.mark.parametrize(
    ("install_flag", "interactive", "answer", "expected", "asked"),
    [
        (True, False, NEVER_ASKED, True, False),
        (True, True, NEVER_ASKED, True, False),
        (False, False, "y", False, False),
        (False, True, "y", True, True),
        (False, True, " Yes\n", True, True),
        (False, True, "n", False, True),
        (False, True, "", False, True),
        (False, True, "yep", False, True),
        (False, True, EOFError, False, True),
    ],
    ids=[
        "flag-no-tty",
        "flag-tty-not-asked",
        "no-tty-no-flag-nothing",
        "tty-yes",
        "tty-yes-spelt-out",
        "tty-no",
        "tty-enter-is-no",
        "tty-other-is-no",
        "tty-closed-input",
    ],
)
def test_who_decides_to_install(
    install_flag: bool,
    interactive: bool,
    answer: str | type[BaseException],
    expected: bool,
    asked: bool,
) -> None:
    ask, questions = asker(answer)
    assert wants_install(install_flag, interactive, ask, "install?") is expected
    assert questions == (["install?"] if asked else [])


def test_comfy_cli_installs_when_it_is_there(tmp_path: Path) -> None:
    environ = {"VIRTUAL_ENV": "/project/.venv", "CONDA_PREFIX": "/conda", "PATH": "/bin"}
    steps = install_steps(tmp_path / "ComfyUI", environ, which=lambda name: f"/usr/bin/{name}")
    assert [step.command for step in steps] == [
        (
            "/usr/bin/comfy",
            "--skip-prompt",
            "--workspace",
            str(tmp_path / "ComfyUI"),
            "install",
            "--cpu",
            "--version",
            "0.8.0",
        )
    ]
    assert steps[0].title == f"comfy-cli: ComfyUI 0.8.0 with CPU torch into {tmp_path / 'ComfyUI'}"
    # Else comfy-cli would install ComfyUI's packages into the venv the demo runs in.
    assert steps[0].env == {"PATH": "/bin"}


@pytest.mark.parametrize(
    ("environ", "comfy", "source", "torch"),
    [
        ({}, None, UPSTREAM, list(TORCH_CPU)),
        ({SOURCE_VARIABLE: "/srv/ComfyUI.git"}, "/usr/bin/comfy", "/srv/ComfyUI.git", None),
        ({TORCH_VARIABLE: "torch==2.14.1 torchvision==0.29.1"}, None, UPSTREAM, None),
    ],
    ids=["no-comfy-cli", "source-given-passes-comfy-cli-by", "torch-substituted"],
)
def test_git_and_a_venv_otherwise(
    tmp_path: Path,
    environ: dict[str, str],
    comfy: str | None,
    source: str,
    torch: list[str] | None,
) -> None:
    checkout = tmp_path / "ComfyUI"
    steps = install_steps(checkout, environ, which=lambda name: comfy, python="/usr/bin/python3")
    venv_python = str(checkout / ".venv" / "bin" / "python")
    torch = torch or environ.get(TORCH_VARIABLE, " ".join(TORCH_CPU)).split()
    assert [step.command for step in steps] == [
        ("git", "clone", "--progress", "--depth", "1", "--branch", "v0.8.0", source, str(checkout)),
        ("/usr/bin/python3", "-m", "venv", str(checkout / ".venv")),
        (venv_python, "-m", "pip", "install", *torch),
        (venv_python, "-m", "pip", "install", "-r", str(checkout / "requirements.txt"), "requests"),
        (venv_python, "-c", "import torch, aiohttp"),
    ]
    assert all(step.env is None for step in steps)
    assert [step.title for step in steps] == [  # what the user sees as each step starts
        f"git: ComfyUI v0.8.0 from {source}",
        f"venv: {checkout / '.venv'}",
        f"pip: {' '.join(torch)}",
        "pip: ComfyUI's requirements.txt, and requests",
        "check: the venv imports torch and aiohttp",
    ]


def test_the_cpu_torch_comes_from_pytorchs_cpu_index_with_torchaudio() -> None:
    assert TORCH_CPU == (
        "torch",
        "torchvision",
        "torchaudio",
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
    )


def test_windows_venv_layout(tmp_path: Path) -> None:
    steps = git_steps(tmp_path / "C", UPSTREAM, ["torch"], "python", system="win32")
    assert steps[2].command[0] == str(tmp_path / "C" / ".venv" / "Scripts" / "python.exe")


class FakeRun:
    """subprocess.run for install(): each command makes a file in the checkout (as a clone
    would) and exits with the status given for it, or raises what is given."""

    def __init__(self, checkout: Path, outcomes: dict[str, int | BaseException]) -> None:
        self.checkout, self.outcomes = checkout, outcomes
        self.ran: list[str] = []
        self.envs: list[dict[str, str] | None] = []

    def __call__(
        self, command: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        self.ran.append(command[0])
        self.envs.append(env)
        self.checkout.mkdir(parents=True, exist_ok=True)
        (self.checkout / f"made-by-{command[0]}").write_text("")
        outcome = self.outcomes.get(command[0], 0)
        if isinstance(outcome, BaseException):
            raise outcome
        return subprocess.CompletedProcess(command, outcome)


STEPS = [
    Step("clone", ("clone",)),
    Step("venv", ("venv",), {"PATH": "/bin"}),
    Step("pip", ("pip",)),
]


def test_an_install_that_succeeds_keeps_the_checkout_and_drops_the_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkout = tmp_path / "home" / "comfy" / "ComfyUI"  # neither home nor comfy/ there yet
    run = FakeRun(checkout, {})
    with caplog.at_level(logging.INFO):
        assert install(checkout, STEPS, run) is None
    assert run.ran == ["clone", "venv", "pip"]
    assert run.envs == [None, {"PATH": "/bin"}, None]  # each step's own environment
    assert (checkout / "made-by-pip").is_file()
    assert not unfinished_marker(checkout).exists()
    assert caplog.messages == [
        f"Installing ComfyUI 0.8.0 into {checkout}: {ESTIMATE} to download.",
        "[1/3] clone",
        "[2/3] venv",
        "[3/3] pip",
    ]
    assert ESTIMATE.startswith("about 600 MB")


@pytest.mark.parametrize(
    ("outcomes", "reason", "ran"),
    [
        ({"clone": 128}, "clone: exit status 128", ["clone"]),
        (
            {"venv": FileNotFoundError("no such file: 'venv'")},
            "venv: no such file",
            ["clone", "venv"],
        ),
        ({"pip": 1}, "pip: exit status 1", ["clone", "venv", "pip"]),
        ({"venv": KeyboardInterrupt()}, "interrupted", ["clone", "venv"]),
    ],
    ids=["offline-clone", "tool-missing", "pip-fails", "ctrl-c"],
)
def test_a_failed_install_leaves_nothing_behind(
    tmp_path: Path, outcomes: dict[str, int | BaseException], reason: str, ran: list[str]
) -> None:
    checkout = tmp_path / "comfy" / "ComfyUI"
    run = FakeRun(checkout, outcomes)
    failure = install(checkout, STEPS, run)
    assert failure is not None and failure.startswith(reason)
    assert run.ran == ran
    assert not checkout.exists()
    assert not unfinished_marker(checkout).exists()


def test_an_existing_folder_is_never_installed_over(tmp_path: Path) -> None:
    checkout = tmp_path / "ComfyUI"
    checkout.mkdir()
    (checkout / "mine.txt").write_text("keep")
    run = FakeRun(checkout, {})
    assert install(checkout, STEPS, run) == (
        f"{checkout} is there already, and is not a ComfyUI the demo can run"
    )
    assert run.ran == []
    assert (checkout / "mine.txt").read_text() == "keep"


def test_an_empty_folder_is_installed_into(tmp_path: Path) -> None:
    checkout = tmp_path / "ComfyUI"
    checkout.mkdir()
    assert install(checkout, STEPS, FakeRun(checkout, {})) is None


def test_an_install_killed_midway_is_not_a_comfyui_and_is_redone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkout = tmp_path / "ComfyUI"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / "main.py").write_text("")
    (checkout / ".venv" / "bin" / "python").write_text("")
    unfinished_marker(checkout).write_text("")  # what a SIGKILL during the install leaves
    assert checkout_and_python(checkout, None) == (
        f"an unfinished install at {checkout} (the demo's --install redoes it)"
    )
    run = FakeRun(checkout, {})
    with caplog.at_level(logging.INFO):
        assert install(checkout, STEPS, run) is None
    assert caplog.messages[0] == f"Removing the unfinished install at {checkout}"
    assert sorted(p.name for p in checkout.iterdir()) == [
        "made-by-clone",
        "made-by-pip",
        "made-by-venv",
    ]
    assert (
        checkout_and_python(checkout, None)
        == "no ComfyUI checkout at " + f"{checkout} (set COMFYUI_PATH)"
    )


def test_a_clone_from_a_source_that_is_not_there_fails_and_cleans_up(tmp_path: Path) -> None:
    """Offline, for real: git itself fails to clone; the folder it started is removed."""
    checkout = tmp_path / "comfy" / "ComfyUI"
    steps = git_steps(checkout, str(tmp_path / "no-such-mirror.git"), ["torch"], "python3")
    failure = install(checkout, steps[:1])
    assert failure == f"git: ComfyUI v0.8.0 from {tmp_path / 'no-such-mirror.git'}: exit status 128"
    assert not checkout.exists()


# ---------------------------------------------------------------- the demo around it


@pytest.fixture
def bare_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("COMFYUI_PATH", "COMFYUI_PYTHON", "APPDATA", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class FakeInstall:
    """demo's install(): makes a checkout whose python imports what it must, or fails."""

    def __init__(self, failure: str | None = None) -> None:
        self.failure = failure
        self.targets: list[Path] = []

    def __call__(self, checkout: Path, steps: Any) -> str | None:
        self.targets.append(checkout)
        if self.failure is None:
            python = checkout / ".venv" / "bin" / "python"
            python.parent.mkdir(parents=True)
            (checkout / "main.py").write_text("")
            python.write_text("#!/bin/sh\nexit 0\n")
            python.chmod(0o755)
        return self.failure


@pytest.fixture
def fake_install(monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], FakeInstall]:
    def make(failure: str | None = None) -> FakeInstall:
        fake = FakeInstall(failure)
        monkeypatch.setattr(demo_module, "install", fake)
        return fake

    return make


@pytest.mark.parametrize(
    ("install_flag", "interactive", "answer", "installs"),
    [
        (True, False, NEVER_ASKED, True),
        (False, True, "y", True),
        (False, True, "n", False),
        (False, False, NEVER_ASKED, False),
    ],
    ids=["flag", "tty-yes", "tty-no", "no-tty"],
)
def test_demo_installs_into_comfy_clis_default_workspace_and_finds_it(
    bare_home: Path,
    fake_install: Callable[[str | None], FakeInstall],
    install_flag: bool,
    interactive: bool,
    answer: str,
    installs: bool,
) -> None:
    fake = fake_install(None)
    ask, questions = asker(answer)
    found = ready_comfyui(None, install_wanted=install_flag, interactive=interactive, ask=ask)
    workspace = bare_home / "comfy" / "ComfyUI"
    if installs:
        assert fake.targets == [workspace]
        assert found == (workspace, workspace / ".venv" / "bin" / "python")
    else:
        assert fake.targets == []
        assert isinstance(found, str) and found.startswith("demo: no ComfyUI found.")
        assert found.endswith(DECLINED) is interactive
    if questions:
        assert questions == [
            f"Install ComfyUI 0.8.0 (CPU only) into {workspace}? It downloads about 600 MB"
            + questions[0].split("about 600 MB", 1)[1]
        ]


def test_demo_installs_where_comfyui_option_points(
    bare_home: Path, fake_install: Callable[[str | None], FakeInstall]
) -> None:
    fake = fake_install(None)
    mine = bare_home / "mine"
    assert ready_comfyui(mine, install_wanted=True) == (mine, mine / ".venv" / "bin" / "python")
    assert fake.targets == [mine]


def test_demo_whose_install_fails_ends_with_todays_message(
    bare_home: Path,
    fake_install: Callable[[str | None], FakeInstall],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_install("git: ComfyUI v0.8.0 from upstream: exit status 128")
    with caplog.at_level(logging.ERROR):
        assert demo(install_wanted=True) == 2
    said = caplog.text
    assert (
        "demo: installing ComfyUI failed: git: ComfyUI v0.8.0 from upstream: exit status 128"
        in said
    )
    assert "demo: no ComfyUI found. Looked at:" in said
    assert "comfy --skip-prompt --workspace ~/comfy/ComfyUI install --cpu --version 0.8.0" in said


def test_demo_with_a_comfyui_found_never_installs(
    bare_home: Path, fake_install: Callable[[str | None], FakeInstall]
) -> None:
    FakeInstall()(bare_home / "comfy" / "ComfyUI", [])  # one is there already
    fake = fake_install(None)
    assert isinstance(ready_comfyui(None, install_wanted=True), tuple)
    assert fake.targets == []


@pytest.mark.parametrize(
    ("argv", "install_wanted"),
    [(["demo"], False), (["demo", "--install"], True)],
    ids=["asks-on-a-terminal", "install-flag"],
)
def test_command_line_passes_install_on(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], install_wanted: bool
) -> None:
    seen: dict[str, Any] = {}

    def fake_demo(compare: bool, comfyui: Path | None, **options: Any) -> int:
        seen.update(options)
        return 0

    monkeypatch.setattr(demo_module, "demo", fake_demo)
    assert main(argv) == 0
    assert seen["install_wanted"] is install_wanted
    assert seen["interactive"] is False  # pytest's stdin is no terminal
