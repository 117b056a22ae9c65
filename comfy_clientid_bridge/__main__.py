"""Command line: `comfy-clientid-bridge demo|batch ...` (or `python -m comfy_clientid_bridge`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8188"  # ComfyUI's own default address


def program_name(argv0: str) -> str:
    """How the user called us, for --help: the console script or `python -m`."""
    if Path(argv0).name == "__main__.py":
        return "python -m comfy_clientid_bridge"
    return "comfy-clientid-bridge"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=program_name(sys.argv[0]))
    commands = root.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="start a local ComfyUI with this package and run the example batch"
    )
    demo.add_argument("--compare", action="store_true", help="also show the naive loop without us")
    demo.add_argument("--comfyui", type=Path, help="the ComfyUI checkout (default: searched)")
    demo.add_argument(
        "--install",
        action="store_true",
        help="with no ComfyUI found, install the tested release (CPU only) into --comfyui or "
        "~/comfy/ComfyUI without asking (on a terminal the demo asks)",
    )
    batch = commands.add_parser(
        "batch",
        help="run a folder through a workflow on one or several running ComfyUI servers",
        description="Queues the folder on each --server (one shard each, no image twice), "
        "follows every shard over its own websocket, and ends with a summary per server. "
        "Exit status: 0 all done, 1 a shard incomplete or an image failed, "
        "2 nothing queued (a server unreachable or missing the nodes), 130 Ctrl-C.",
    )
    batch.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help=f"a ComfyUI's address; repeat to split the folder across servers "
        f"(default: {DEFAULT_SERVER}); keep the same order when you rerun to resume",
    )
    batch.add_argument("--workflow", type=Path, required=True, help="API-format workflow (JSON)")
    batch.add_argument(
        "--folder",
        type=Path,
        required=True,
        help="the images to process (a path every server can read)",
    )
    batch.add_argument(
        "--json", action="store_true", help="print one JSON object per event on stdout"
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "demo":
        # A command line of its own (not inside ComfyUI): its reports go to stdout, plainly.
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        from .tools.demo import demo as run_demo

        return run_demo(
            args.compare,
            args.comfyui,
            install_wanted=args.install,
            interactive=sys.stdin.isatty() and sys.stdout.isatty(),
        )
    from .tools.cli import batch as run_batch

    servers = args.server or [DEFAULT_SERVER]
    return run_batch(servers, args.workflow, args.folder, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
