"""ComfyUI's own garbage-collector pause between prompts, made short (opt-in).

ComfyUI's executor thread runs a full `gc.collect()` after a prompt whenever 10 s have passed
since the last one (main.py `prompt_worker`, v0.3.64 and 0.8.0). A full collection walks
every object the collector tracks, and a ComfyUI process holds about 590,000 of them before
any model is loaded (torch, ComfyUI's nodes, the custom node packs): measured here, 0.41 s
per collection, during which the GPU has no next prompt. In a batch that is 4% of the wall
time, in pauses of 0.4 s (`bench/gpu_busy.py`).

`gc.freeze()` moves the objects alive at that moment into a permanent generation that later
collections skip; ComfyUI's collection then takes milliseconds. Frozen objects are still
freed when nothing refers to them; only a reference cycle among them would never be
collected. So they are frozen once, when the server starts: every custom node is loaded by
then and no model is (a model loaded later, and its cycles, are collected as before: its
memory is what ComfyUI's collections are there for).

Off by default: it changes how the whole process's collector treats those objects, which no
one installing a routing fix asked for.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping

from aiohttp import web

logger = logging.getLogger(__name__)

GC_FREEZE_SWITCH = "COMFY_CLIENTID_BRIDGE_GC_FREEZE"
ON_VALUES = frozenset({"1", "on", "true", "yes", "enabled"})


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(GC_FREEZE_SWITCH, "").strip().lower() in ON_VALUES


async def freeze_at_startup(app: web.Application) -> None:
    """The app's on_startup handler: what is garbage now is collected, the rest frozen."""
    gc.collect()
    gc.freeze()
    logger.info(
        "clientid_bridge: %d objects alive at start frozen (%s): ComfyUI's collections "
        "between prompts skip them",
        gc.get_freeze_count(),
        GC_FREEZE_SWITCH,
    )
