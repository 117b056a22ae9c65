"""ComfyUI's own execution tests (tests/execution), run as is and with our package installed.

Run: python bench/comfy_execution_suite.py [--comfyui CHECKOUT] [pytest args selecting a
subset, e.g. -k "not lru"]. The checkout: --comfyui (its .venv's python, or $COMFYUI_PYTHON),
else $COMFYUI_PATH / ~/comfy/ComfyUI as the integration tier finds it; either release works.

The suite starts its own servers (`python main.py ... --extra-model-paths-config
tests/execution/extra_model_paths.yaml`) from class fixtures, with `python` taken from PATH
and paths relative to the checkout. We run it from the checkout with the checkout's venv first
on PATH, on a free port, with the output directory in a temp dir. The second run installs our
package without touching the checkout: a pytest plugin, written to a temp dir, appends one
more `--extra-model-paths-config` (ComfyUI accepts several) whose `custom_nodes` folder holds a
symlink to this repository. A symlink in the checkout's own custom_nodes would also be loaded
by every other ComfyUI started from that checkout meanwhile (other people's control runs).
The plugin also gives the suite's servers a temp folder of their own (in both runs): ComfyUI
empties its temp folder on start and exit, so any other ComfyUI started from the same checkout
meanwhile deletes the suite's preview images under it (seen as 404s on /view). It sends each
server's output to a log, so we can show the bridge was loaded and that no traceback went
through it, and it kills any server a fixture left behind. It also returns from starting a
server only once the server logs that it listens: the suite gives a new server 20 s, which a
loaded 2-core machine exceeds (seen on 2026-11-28: 249 of 294 failed with "connection
refused", none of them a test failure). The suite's own tests are not changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfy_clientid_bridge.tools.launcher import (  # noqa: E402
    REPO,
    checkout_and_python,
    comfyui_version,
    find_comfyui,
    free_port,
)

LOADED_LINE = "clientid_bridge: re-queued prompts now reach the tab that started them"
PLUGIN_NAME = "cib_suite_plugin"

PLUGIN = '''
"""Test-run plugin: extra custom-node config and logs for the servers the suite starts."""
import os
import subprocess
import time

_EXTRA = os.environ.get("CIB_SUITE_EXTRA_CONFIG", "")
_LOGS = os.environ["CIB_SUITE_LOG_DIR"]
_TEMP = os.environ["CIB_SUITE_TEMP_DIR"]
_started = []
_Popen = subprocess.Popen


class _ServerPopen(_Popen):
    def __init__(self, args, *rest, **kwargs):
        if isinstance(args, list) and args[:2] == ["python", "main.py"]:
            args = [*args, "--temp-directory", _TEMP]
            if _EXTRA:
                args = [*args, "--extra-model-paths-config", _EXTRA]
            path = os.path.join(_LOGS, f"server-{len(_started)}.log")
            log = open(path, "wb")
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", subprocess.STDOUT)
            super().__init__(args, *rest, **kwargs)
            log.close()
            _started.append(self)
            _wait_ready(self, path)
        else:
            super().__init__(args, *rest, **kwargs)


def _wait_ready(process, path, limit=600.0):
    # The suite polls a new server 5 times, 4 s apart: a slow boot (a loaded machine) fails
    # every test of the class. Return once the server says it listens, or has exited.
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        with open(path, "rb") as log:
            if b"To see the GUI go to" in log.read():
                return
        time.sleep(0.2)


subprocess.Popen = _ServerPopen


def pytest_unconfigure(config):
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait()
'''


@dataclass
class SuiteRun:
    label: str
    counts: dict[str, int]
    failed: list[str]
    seconds: float
    servers: int
    bridge_loaded: int
    bridge_tracebacks: int
    returncode: int
    tail: str = field(repr=False, default="")


def junit_counts(report: Path) -> tuple[dict[str, int], list[str]]:
    counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
    failed: list[str] = []
    if not report.is_file():
        return counts, failed
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
            failed.append(name)
        elif "error" in kinds:
            counts["error"] += 1
            failed.append(name + " (error)")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failed


def bridge_tracebacks(log: str) -> int:
    """Tracebacks whose frames include our package (there should be none)."""
    blocks = log.split("Traceback (most recent call last):")[1:]
    return sum("comfy_clientid_bridge" in block.split("\n\n")[0] for block in blocks)


def run_suite(
    label: str, checkout: Path, python: Path, selection: list[str], *, with_bridge: bool
) -> SuiteRun:
    work = Path(tempfile.mkdtemp(prefix="cib-suite-"))
    (work / "plugin").mkdir()
    (work / "plugin" / f"{PLUGIN_NAME}.py").write_text(PLUGIN)
    (work / "logs").mkdir()
    env = {
        **os.environ,
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(work / "plugin"),
        "CIB_SUITE_LOG_DIR": str(work / "logs"),
        "CIB_SUITE_EXTRA_CONFIG": "",
        "CIB_SUITE_TEMP_DIR": str(work),
    }
    if with_bridge:
        nodes = work / "custom_nodes"
        nodes.mkdir()
        (nodes / REPO.name).symlink_to(REPO, target_is_directory=True)
        config = work / "bridge_nodes.yaml"
        config.write_text(f"clientid_bridge:\n  custom_nodes: {nodes}\n")
        env["CIB_SUITE_EXTRA_CONFIG"] = str(config)
    report = work / "junit.xml"
    command = [
        str(python),
        "-m",
        "pytest",
        "-p",
        PLUGIN_NAME,
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        f"--junitxml={report}",
        "--port",
        str(free_port()),
        "--output_dir",
        str(work / "output"),
        *(selection or ["tests/execution"]),
    ]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    (work / "pytest.out").write_text(done.stdout + done.stderr)
    counts, failed = junit_counts(report)
    logs = [path.read_text(errors="replace") for path in sorted((work / "logs").glob("*.log"))]
    print(f"[{label}] {seconds:.0f} s, logs in {work}", flush=True)
    return SuiteRun(
        label=label,
        counts=counts,
        failed=failed,
        seconds=seconds,
        servers=len(logs),
        bridge_loaded=sum(LOADED_LINE in log for log in logs),
        bridge_tracebacks=sum(bridge_tracebacks(log) for log in logs),
        returncode=done.returncode,
        tail=(done.stdout + done.stderr)[-1500:],
    )


def chosen_comfyui(argv: list[str]) -> tuple[tuple[Path, Path] | str, list[str]]:
    """(checkout, python) from a leading `--comfyui PATH`, else find_comfyui(); the rest."""
    if argv[:1] == ["--comfyui"] and len(argv) > 1:
        python = os.environ.get("COMFYUI_PYTHON")
        return checkout_and_python(Path(argv[1]), Path(python) if python else None), argv[2:]
    return find_comfyui(), argv


def main() -> int:
    found, selection = chosen_comfyui(sys.argv[1:])
    if isinstance(found, str):
        print(f"comfy_execution_suite: {found}")
        return 2
    checkout, python = found
    version = comfyui_version(checkout) or "unknown version"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}  nproc={os.cpu_count()}  ComfyUI {version} {checkout}"
    )
    print(f"suite: {' '.join(selection) or 'tests/execution'} (ComfyUI's own, unmodified)")
    runs = [
        run_suite("as is", checkout, python, selection, with_bridge=False),
        run_suite("with bridge", checkout, python, selection, with_bridge=True),
    ]
    print()
    print(f"{'':<28}" + "".join(f"{run.label:>14}" for run in runs))
    for key in ("passed", "failed", "error", "skipped"):
        print(f"{key:<28}" + "".join(f"{run.counts[key]:>14}" for run in runs))
    rows: dict[str, list[float]] = {
        "servers started": [run.servers for run in runs],
        "servers with bridge loaded": [run.bridge_loaded for run in runs],
        "tracebacks through bridge": [run.bridge_tracebacks for run in runs],
        "pytest exit code": [run.returncode for run in runs],
        "minutes": [round(run.seconds / 60, 1) for run in runs],
    }
    for name, values in rows.items():
        print(f"{name:<28}" + "".join(f"{value:>14}" for value in values))
    for run in runs:
        if run.failed:
            print(f"\nfailed ({run.label}):")
            for name in run.failed:
                print(f"  {name}")
        if not any(run.counts.values()):
            print(f"\n[{run.label}] no results; pytest said:\n{run.tail}")
    only_with = sorted(set(runs[1].failed) - set(runs[0].failed))
    print(f"\nfailing only with the bridge: {only_with or 'none'}")
    return 1 if only_with or runs[1].bridge_loaded != runs[1].servers else 0


if __name__ == "__main__":
    sys.exit(main())
