"""The three node-code habits on a real ComfyUI: what tab A saw and what tab B received.

Run: python bench/node_habits.py

Starts three servers with the test pack of tests/integration/packs/node_habits_pack: without
our package, with it, and with it but COMFY_CLIENTID_BRIDGE_BROADCASTS=0. On each, tab A
queues the habits graph once (3 iterations: the pack puts iterations 2 and 3 straight on
the queue, and broadcasts `executed` for 3 nodes and `impact-add-queue` each iteration)
while tab B idles, and the table says what each tab got.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from integration.test_node_habits import PACK, Seen, run_habits  # noqa: E402

from comfy_clientid_bridge.tools.launcher import REPO, find_comfyui, running_comfyui  # noqa: E402

SERVERS = {
    "without our package": ([PACK], {}),
    "with our package": ([REPO, PACK], {}),
    "with the part switched off": ([REPO, PACK], {"COMFY_CLIENTID_BRIDGE_BROADCASTS": "0"}),
}


def row(name: str, seen: Seen) -> str:
    a, b = seen.tab_a, seen.tab_b
    return (
        f"| {name} | {len(seen.batch)} | {seen.iterations_seen(a)} | {seen.iterations_seen(b)} "
        f"| {len(seen.broadcasts(a))} | {len(seen.broadcasts(b))} "
        f"| {seen.add_queue(a)} | {seen.add_queue(b)} | {len(b.of_type('status'))} |"
    )


def main() -> int:
    found = find_comfyui()
    if isinstance(found, str):
        print(f"no ComfyUI: {found}")
        return 2
    print(f"ComfyUI {found[0]}")
    print(
        "| server | iterations run | A saw start of | B saw start of | `executed` broadcasts "
        "to A | to B | `impact-add-queue` to A | to B | `status` to B |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (packs, env) in SERVERS.items():
        with tempfile.TemporaryDirectory() as root:
            with running_comfyui(Path(root), packs=packs, env=env) as comfy:
                seen = asyncio.run(run_habits(comfy, add_queue=True))
        print(row(name, seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
