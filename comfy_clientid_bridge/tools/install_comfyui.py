"""Installs the tested ComfyUI release, CPU only, for the demo: with comfy-cli, or git + venv."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# The release every tier is tested on (docs/compatibility.md): tag v0.8.0, upstream 3cd7b32f.
RELEASE = "0.8.0"
UPSTREAM = "https://github.com/comfyanonymous/ComfyUI"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# torchaudio too: ComfyUI's requirements.txt lists it unpinned, and from PyPI it may ask for
# another torch than the CPU one, which pip would then fetch as a CUDA build of several GB.
TORCH_CPU = ("torch", "torchvision", "torchaudio", "--index-url", TORCH_CPU_INDEX)

# 0.8.0's server imports requests (app/frontend_management.py) without listing it: it came
# with huggingface-hub, whose newer releases no longer need it, so a fresh install lacks it.
UNLISTED = ("requests",)

# Where the clone comes from (a git URL or a local mirror) and the pip arguments that install
# torch: for a machine without the internet, and for the test that installs from a mirror.
SOURCE_VARIABLE = "COMFY_CLIENTID_BRIDGE_COMFYUI_SOURCE"
TORCH_VARIABLE = "COMFY_CLIENTID_BRIDGE_TORCH"

# What a CPU install downloads, said before it starts; the parts are in docs/demo.md.
ESTIMATE = (
    "about 600 MB (ComfyUI and its requirements as measured on Linux x86_64 with Python 3.11,"
    " plus the usual size of the CPU torch wheels; docs/demo.md has the parts)"
)

DECLINED = "Not installed. To have the demo install it without asking, add --install."


def default_workspace(home: Path | None = None) -> Path:
    """comfy-cli's default workspace, where the integration tier looks too."""
    return (home or Path.home()) / "comfy" / "ComfyUI"


def unfinished_marker(checkout: Path) -> Path:
    """Lies next to a checkout while it is being installed, so that nothing takes a half-made
    one for a ComfyUI (launcher.checkout_and_python looks for it), even after a kill."""
    return checkout.parent / f".{checkout.name}.installing"


@dataclass(frozen=True)
class Step:
    """One command of an install, with what to call it while it runs."""

    title: str
    command: tuple[str, ...]
    env: Mapping[str, str] | None = None


def venv_python_of(checkout: Path, system: str = sys.platform) -> Path:
    layout = ("Scripts", "python.exe") if system == "win32" else ("bin", "python")
    return checkout.joinpath(".venv", *layout)


def without_active_envs(environ: Mapping[str, str]) -> dict[str, str]:
    """comfy-cli installs into an active venv or conda env when there is one: here that would
    be the venv this package runs in, not ComfyUI's own."""
    return {k: v for k, v in environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}


def comfy_cli_steps(comfy: str, checkout: Path, environ: Mapping[str, str]) -> list[Step]:
    command = (comfy, "--skip-prompt", "--workspace", str(checkout), "install", "--cpu")
    return [
        Step(
            f"comfy-cli: ComfyUI {RELEASE} with CPU torch into {checkout}",
            (*command, "--version", RELEASE),
            without_active_envs(environ),
        )
    ]


def git_steps(
    checkout: Path, source: str, torch: Sequence[str], python: str, system: str = sys.platform
) -> list[Step]:
    venv = venv_python_of(checkout, system)
    pip = (str(venv), "-m", "pip", "install")
    return [
        Step(
            f"git: ComfyUI v{RELEASE} from {source}",
            ("git", "clone", "--progress", "--depth", "1", "--branch", f"v{RELEASE}")
            + (source, str(checkout)),
        ),
        Step(f"venv: {checkout / '.venv'}", (python, "-m", "venv", str(checkout / ".venv"))),
        Step(f"pip: {' '.join(torch)}", (*pip, *torch)),
        Step(
            "pip: ComfyUI's requirements.txt, and requests",
            (*pip, "-r", str(checkout / "requirements.txt"), *UNLISTED),
        ),
        Step(
            "check: the venv imports torch and aiohttp", (str(venv), "-c", "import torch, aiohttp")
        ),
    ]


def install_steps(
    checkout: Path,
    environ: Mapping[str, str] = os.environ,
    which: Callable[[str], str | None] = shutil.which,
    python: str = sys.executable,
) -> list[Step]:
    """comfy-cli where it is installed; git + venv otherwise, or when a source is given."""
    source = environ.get(SOURCE_VARIABLE, "").strip()
    comfy = which("comfy")
    if comfy and not source:
        return comfy_cli_steps(comfy, checkout, environ)
    torch = shlex.split(environ.get(TORCH_VARIABLE, "")) or list(TORCH_CPU)
    return git_steps(checkout, source or UPSTREAM, torch, python)


def wants_install(
    install: bool, interactive: bool, ask: Callable[[str], str], question: str
) -> bool:
    """--install says yes; a terminal is asked (yes only when the answer says so); anything
    else (a pipe, CI) installs nothing."""
    if install:
        return True
    if not interactive:
        return False
    try:
        answer = ask(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def question(checkout: Path) -> str:
    return f"Install ComfyUI {RELEASE} (CPU only) into {checkout}? It downloads {ESTIMATE}. [y/N] "


Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def install(checkout: Path, steps: Sequence[Step], run: Runner = subprocess.run) -> str | None:
    """Runs the steps into `checkout`, each showing its own progress; None when done, else
    why not. A failed or interrupted install removes what it made: a later run must not take
    a half-made checkout for a ComfyUI."""
    marker = unfinished_marker(checkout)
    if marker.exists():
        logger.info("Removing the unfinished install at %s", checkout)
        shutil.rmtree(checkout, ignore_errors=True)
    elif checkout.is_dir() and not any(checkout.iterdir()):
        checkout.rmdir()  # an empty folder: git and comfy-cli both want to make it themselves
    elif checkout.exists():
        return f"{checkout} is there already, and is not a ComfyUI the demo can run"
    checkout.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("the demo is installing ComfyUI next to this file; removed when done\n")
    logger.info("Installing ComfyUI %s into %s: %s to download.", RELEASE, checkout, ESTIMATE)
    failure: str | None = "interrupted"
    try:
        failure = _run_steps(steps, run)
    except KeyboardInterrupt:
        pass
    finally:
        if failure is not None:
            shutil.rmtree(checkout, ignore_errors=True)
        marker.unlink(missing_ok=True)
    return failure


def _run_steps(steps: Sequence[Step], run: Runner) -> str | None:
    for number, step in enumerate(steps, start=1):
        logger.info("[%d/%d] %s", number, len(steps), step.title)
        try:
            done = run(list(step.command), env=None if step.env is None else dict(step.env))
        except OSError as error:
            return f"{step.title}: {error}"
        if done.returncode != 0:
            return f"{step.title}: exit status {done.returncode}"
    return None
