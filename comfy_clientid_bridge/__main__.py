"""Command line: `python -m comfy_clientid_bridge demo`."""

from __future__ import annotations

import argparse
import sys

from .demo import demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_clientid_bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="run a naive re-queue loop on a real ComfyUI, with and without us"
    )
    parser.parse_args(argv)
    return demo()


if __name__ == "__main__":
    sys.exit(main())
