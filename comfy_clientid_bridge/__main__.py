"""Command line: `comfy-clientid-bridge demo|batch ...` (or `python -m comfy_clientid_bridge`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .tools.schedule import LOST_AFTER

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
        description="Queues one prompt per image on whichever --server is free, hears every "
        "server over its own websocket, moves the images of a server that dies to the others, "
        "and keeps the progress in a ledger: the same command again does only the rest. "
        "Exit status: 0 every image done, 1 an image failed or is not done, "
        "2 nothing queued (no server answers, or one lacks the nodes), 130 Ctrl-C.",
    )
    batch.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help=f"a ComfyUI's address; repeat for several (default: {DEFAULT_SERVER})",
    )
    batch.add_argument("--workflow", type=Path, required=True, help="API-format workflow (JSON)")
    batch.add_argument(
        "--folder",
        type=Path,
        required=True,
        help="the images to process (a server that cannot read it gets them uploaded)",
    )
    batch.add_argument(
        "--json", action="store_true", help="print one JSON object per event on stdout"
    )
    batch.add_argument(
        "--upload",
        action="store_true",
        help="upload each image to every server, without asking whether it reads --folder",
    )
    batch.add_argument("--download", type=Path, metavar="DIR", help="fetch every output into DIR")
    batch.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="JSON file of server -> token or user/password (default: "
        "$COMFY_CLIENTID_BRIDGE_CREDENTIALS)",
    )
    batch.add_argument("--ledger", type=Path, metavar="FILE", help="the progress database")
    batch.add_argument("--report", type=Path, metavar="FILE", help="where the report goes")
    batch.add_argument(
        "--lost-after",
        type=float,
        default=LOST_AFTER,
        metavar="SECONDS",
        help=f"move a disconnected server's images after this long (default {LOST_AFTER:g})",
    )
    batch.add_argument(
        "--static",
        action="store_true",
        help="the old way: each server loops over its own shard (every n-th image)",
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
    from .tools.http_client import import_aiohttp_without_certificates

    import_aiohttp_without_certificates()
    from .tools.cli import batch as run_batch
    from .tools.flow import Settings

    servers = args.server or [DEFAULT_SERVER]
    settings = Settings(
        upload=args.upload,
        download=args.download,
        ledger=args.ledger,
        report=args.report,
        lost_after=args.lost_after,
    )
    return run_batch(
        servers,
        args.workflow,
        args.folder,
        as_json=args.json,
        static=args.static,
        settings=settings,
        credentials=args.credentials,
    )


def console() -> None:
    """The command (console script and `python -m`): main(), then the process ends at once.

    When main() returns, everything it opened is closed (the batch's session, sockets and
    ledger; the demo's ComfyUI) and asyncio.run has joined its threads; what is left is the
    interpreter tearing down its modules, 40-70 ms of a batch's makespan on this machine
    (bench/multi_server.py). Output is flushed first, so nothing written is lost.
    """
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    console()
