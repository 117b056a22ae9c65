"""Command line: `python -m comfy_clientid_bridge demo|batch ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_clientid_bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="start a local ComfyUI with this package and run the example batch"
    )
    demo.add_argument("--compare", action="store_true", help="also show the naive loop without us")
    demo.add_argument("--comfyui", type=Path, help="the ComfyUI checkout (default: searched)")
    batch = commands.add_parser(
        "batch", help="run a folder through a workflow on a running ComfyUI"
    )
    batch.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI's address")
    batch.add_argument("--workflow", type=Path, required=True, help="API-format workflow (JSON)")
    batch.add_argument("--folder", type=Path, required=True, help="the images to process")
    args = parser.parse_args(argv)
    # A command line of its own (not inside ComfyUI): its reports go to stdout, plainly.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.command == "demo":
        from .tools.demo import demo as run_demo

        return run_demo(args.compare, args.comfyui)
    from .tools.cli import batch as run_batch

    return run_batch(args.server, args.workflow, args.folder)


if __name__ == "__main__":
    sys.exit(main())
