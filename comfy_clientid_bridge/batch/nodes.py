"""The batch nodes: thin ComfyUI classes over the torch-free helpers of this package."""

from __future__ import annotations

import copy
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from .. import internals
from .engine import (
    CURSOR_INPUT,
    ONE_FILE_INPUT,
    BatchEngine,
    Halt,
    Item,
    Source,
    batch_engine,
    source_batch_id,
    workflow_key,
)
from .folders import output_base, resolve_input_folder
from .images import UnreadableImage, encode_image, load_image, to_uint8
from .listing import ORDERS, parse_patterns
from .naming import POLICIES, atomic_write_bytes, choose_target, output_relpath, resolve_inside

logger = logging.getLogger(__name__)

CATEGORY = "clientid_bridge/batch"
PREFIX = "ClientIdBridge_"
# The saver's `format` choices -> the file extension each is saved with.
EXTENSION_OF_FORMAT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
BATCH_ID = ("STRING", {"forceInput": True})
INDEX = ("INT", {"forceInput": True})


def _ui(engine: BatchEngine, batch: str, text: str, state: str) -> dict[str, list[Any]]:
    """The UI payload of the loader and Batch Next: the web extension shows `badge` on the
    loader; `state` ("running", "done", "stopped", or a Halt's) and `progress` ([done,
    total]) are what clients act on."""
    ui: dict[str, list[Any]] = {"text": [text], "batch_id": [batch], "state": [state]}
    if engine.knows(batch):
        ui["progress"] = list(engine.done_of_total(batch))
    known_state = engine.knows(batch) and state in ("running", "done", "stopped")
    ui["badge"] = [engine.badge(batch) if known_state else text]
    return ui


def _blocked(engine: BatchEngine, halt: Halt, outputs: int) -> dict[str, Any]:
    """No image this time: downstream nodes are skipped quietly, the node says why."""
    logger.info("batch %s: %s", halt.batch_id, halt.message)
    return {
        "ui": _ui(engine, halt.batch_id, halt.message, halt.state),
        "result": tuple(internals.execution_blocker() for _ in range(outputs)),
    }


class BatchImageLoader:
    """One image of a folder per prompt; Batch Next queues the next one."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK", "STRING", "STRING", "INT", "INT", "STRING")
    RETURN_NAMES = ("image", "mask", "stem", "subfolder", "index", "total", "batch_id")
    FUNCTION = "load"
    DESCRIPTION = "Loads one image of a folder per prompt; resumes where a batch stopped."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "folder": (
                    "STRING",
                    {"default": "", "tooltip": "absolute, or inside ComfyUI's input folder"},
                ),
                "pattern": (
                    "STRING",
                    {"default": "", "tooltip": "globs split by ; or , (** allowed); empty: images"},
                ),
                "recursive": ("BOOLEAN", {"default": False}),
                "order": (list(ORDERS), {"default": "natural"}),
                # Not named "seed": the frontend would add a randomize-after-queue control,
                # and a new seed per run is a new batch that never resumes.
                "shuffle_seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "for order=shuffle"},
                ),
                "start_index": ("INT", {"default": 0, "min": 0, "max": 10**9}),
                "limit": ("INT", {"default": 0, "min": 0, "max": 10**9, "tooltip": "0: all"}),
                "shard_index": ("INT", {"default": 0, "min": 0, "max": 1023}),
                "shard_count": ("INT", {"default": 1, "min": 1, "max": 1024}),
                "on_error": (
                    ["skip", "stop"],
                    {"default": "skip", "tooltip": "for unreadable files"},
                ),
                CURSOR_INPUT: (
                    "INT",
                    {
                        "default": -1,
                        "min": -1,
                        "max": 10**9,
                        "tooltip": "set by Batch Next; leave at -1",
                    },
                ),
            },
            "optional": {
                ONE_FILE_INPUT: (
                    "STRING",
                    {"default": "", "tooltip": "set by the terminal runner; leave empty"},
                ),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, cursor: int = -1, **inputs: Any) -> Any:
        """Never a cached image: a person's run always runs, a loop step keys on its file."""
        # A fresh token means "changed". Not NaN: ComfyUI keeps this value in the prompt it
        # serves from /queue and /history, and NaN there is invalid JSON for the browser.
        if cursor < 0 or "prompt" not in inputs or "unique_id" not in inputs:
            return uuid.uuid4().hex
        source = _source(**inputs)
        batch = source_batch_id(source, workflow_key(inputs["prompt"], inputs["unique_id"]))
        try:
            path = source.folder / batch_engine().source_of(batch, cursor)
            stat = path.stat()
        except (KeyError, IndexError, OSError):
            return uuid.uuid4().hex
        return f"{batch}:{cursor}:{path}:{stat.st_mtime_ns}:{stat.st_size}"

    def load(
        self, cursor: int, prompt: dict[str, Any], unique_id: str, on_error: str, **inputs: Any
    ) -> dict[str, Any]:
        engine = batch_engine()
        source = _source(**inputs)
        batch = source_batch_id(source, workflow_key(prompt, unique_id))
        prompt_id = internals.running_prompt_id(internals.prompt_server())
        claimed = engine.begin(batch, source, cursor, prompt_id, unique_id)
        loaded = _first_readable(engine, claimed, on_error, prompt_id)
        if isinstance(loaded, Halt):
            return _blocked(engine, loaded, len(self.RETURN_TYPES))
        claimed, rgb, mask = loaded
        _show_progress(unique_id, engine.done_of_total(batch)[0], claimed)
        rel = Path(claimed.source)
        image, alpha = _as_tensors(rgb, mask)
        text = engine.progress(batch, rel.name)
        subfolder = rel.parent.as_posix() if rel.parent != Path(".") else ""
        result = (image, alpha, rel.stem, subfolder, claimed.index, claimed.total, batch)
        # batch_id in the UI payload: what a Stop button or an API client needs to stop it.
        ui = {**_ui(engine, batch, text, "running"), "file": [rel.name]}
        return {"ui": ui, "result": result}


def _as_tensors(rgb: Any, mask: Any) -> tuple[Any, Any]:
    """The one place torch is used: ComfyUI's IMAGE (1xHxWx3) and MASK (1xHxW) tensors.

    Imported here, not at module level, so the node code can be tested without torch."""
    import torch

    return torch.from_numpy(rgb)[None], torch.from_numpy(mask)[None]


def _first_readable(
    engine: BatchEngine, claimed: Item | Halt, on_error: str, prompt_id: str | None
) -> tuple[Item, Any, Any] | Halt:
    """The claimed image, or the next readable one: files that are unreadable, or gone since
    the run listed the folder ("missing", never a reason to stop), are reported on the way."""
    while isinstance(claimed, Item):
        try:
            rgb, mask = load_image(claimed.path)
            return claimed, rgb, mask
        except UnreadableImage as error:
            status = "unreadable" if os.path.lexists(claimed.path) else "missing"
            engine.record(claimed.batch_id, claimed.index, status, None, str(error))
            if on_error == "stop" and status == "unreadable":
                engine.stop(claimed.batch_id)
                raise RuntimeError(f"Batch Image Loader: {error}") from error
            logger.warning("batch %s: skipping %s (%s)", claimed.batch_id, error, status)
            following = engine.next_index(claimed.batch_id, claimed.index)
            if following is None:
                return Halt(claimed.batch_id, f"done: {engine.finish(claimed.batch_id)}", "done")
            claimed = engine.claim(claimed.batch_id, following, prompt_id)
    return claimed


def _source(
    folder: str,
    pattern: str,
    recursive: bool,
    order: str,
    shuffle_seed: int,
    start_index: int,
    limit: int,
    shard_index: int,
    shard_count: int,
    file: str = "",
    **_: Any,
) -> Source:
    return Source(
        folder=resolve_input_folder(folder),
        patterns=parse_patterns(pattern),
        recursive=recursive,
        order=order,
        seed=shuffle_seed,
        start_index=start_index,
        limit=limit,
        shard_index=shard_index,
        shard_count=shard_count,
        file=file.strip(),
    )


def _show_progress(node_id: str, done: int, item: Item) -> None:
    """ComfyUI's own progress bar on the loader: images done of the batch."""
    internals.show_node_progress(node_id, min(done + 1, item.total), item.total)


class BatchImageSaver:
    """Saves each image under its source's name, atomically; records it in the batch report."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("saved",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = "Saves under the source file's name (+prefix/suffix), with the workflow embedded."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "batch_id": BATCH_ID,
                "index": INDEX,
                "format": (list(EXTENSION_OF_FORMAT), {"default": "png"}),
                "quality": (
                    "INT",
                    {"default": 95, "min": 1, "max": 100, "tooltip": "JPEG and WebP"},
                ),
                "compress_level": ("INT", {"default": 4, "min": 0, "max": 9, "tooltip": "PNG"}),
                "prefix": ("STRING", {"default": ""}),
                "suffix": ("STRING", {"default": ""}),
                "subfolder": (
                    "STRING",
                    {"default": "batch", "tooltip": "inside ComfyUI's output folder"},
                ),
                "existing": (list(POLICIES), {"default": "skip"}),
                "output_folder": (
                    "STRING",
                    {"default": "", "tooltip": "absolute folder; empty: ComfyUI's output"},
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(
        self,
        images: Any,  # torch.Tensor, BxHxWx3 floats in [0, 1]
        batch_id: str,
        index: int,
        format: str,
        quality: int,
        compress_level: int,
        prefix: str,
        suffix: str,
        subfolder: str,
        existing: str,
        output_folder: str,
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        engine = batch_engine()
        base, in_output = output_base(output_folder)
        engine.writes_to(batch_id, _output_folder(base, subfolder))
        workflow = (extra_pnginfo or {}).get("workflow")
        pixels = to_uint8(images.cpu().numpy())
        source = engine.source_of(batch_id, index)
        shown, saved = [], []
        for number, frame in enumerate(pixels):
            tail = f"_{number}" if len(pixels) > 1 else ""
            extension = EXTENSION_OF_FORMAT[format]
            rel = output_relpath(source, prefix, suffix + tail, extension, subfolder)
            target = choose_target(resolve_inside(base, rel), existing)
            if target is None:
                engine.record(batch_id, index, "skipped", rel.as_posix(), "output exists")
                continue
            data = encode_image(frame, format, quality, compress_level, prompt, workflow)
            _write(engine, batch_id, index, target, data)
            written = target.relative_to(base).as_posix()
            engine.record(batch_id, index, "saved", written)
            saved.append(str(target))
            if in_output:  # core's /view serves only ComfyUI's own folders
                parent = Path(written).parent.as_posix()
                subfolder_shown = "" if parent == "." else parent
                shown.append(
                    {"filename": target.name, "subfolder": subfolder_shown, "type": "output"}
                )
        return {"ui": {"images": shown}, "result": (";".join(saved),)}


def _output_folder(base: Path, subfolder: str) -> Path:
    """The folder the saver's images go to (their source's own subfolders aside)."""
    return base if subfolder.strip() in ("", ".") else resolve_inside(base, subfolder.strip())


def _write(engine: BatchEngine, batch: str, index: int, target: Path, data: bytes) -> None:
    """Atomically, or the batch stops: a failed save is never reported as saved."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    except OSError as error:
        engine.record(batch, index, "failed", None, f"{target}: {error}")
        engine.stop(batch)
        raise RuntimeError(f"Batch Image Saver could not write {target}: {error}") from error


class BatchProgress:
    """'12/240 (5%) · img_012.jpg · ETA 3:10' for the running batch."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "format"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"batch_id": BATCH_ID, "index": INDEX}}

    def format(self, batch_id: str, index: int) -> dict[str, Any]:
        engine = batch_engine()
        text = engine.progress(batch_id, Path(engine.source_of(batch_id, index)).name)
        return {"ui": {"text": [text]}, "result": (text,)}


class BatchNext:
    """After the image is saved, queues the next one: same graph, loader advanced."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "advance"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"batch_id": BATCH_ID, "saved": ("STRING", {"forceInput": True})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def advance(
        self,
        batch_id: str,
        saved: str,
        prompt: dict[str, Any],
        extra_pnginfo: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        engine = batch_engine()
        if engine.is_stopped(batch_id):
            return {
                "ui": _ui(engine, batch_id, f"stopped at {engine.progress(batch_id)}", "stopped")
            }
        following = engine.next_index(batch_id, engine.current(batch_id))
        if following is None:
            return {"ui": _ui(engine, batch_id, f"done: {engine.finish(batch_id)}", "done")}
        # The graph as a client sends it: ComfyUI's own additions (is_changed) left out.
        graph = {
            node_id: {
                key: copy.deepcopy(node[key]) for key in internals.CLIENT_NODE_KEYS if key in node
            }
            for node_id, node in prompt.items()
        }
        graph[engine.loader_of(batch_id)]["inputs"][CURSOR_INPUT] = following
        server = internals.prompt_server()
        body: dict[str, Any] = {"prompt": graph, "client_id": internals.current_client_id(server)}
        if extra_pnginfo:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        engine.queued(batch_id, internals.queue_prompt(server, body))
        return {"ui": _ui(engine, batch_id, engine.progress(batch_id), "running")}


NODE_CLASS_MAPPINGS: dict[str, type] = {
    PREFIX + "BatchImageLoader": BatchImageLoader,
    PREFIX + "BatchImageSaver": BatchImageSaver,
    PREFIX + "BatchProgress": BatchProgress,
    PREFIX + "BatchNext": BatchNext,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    PREFIX + "BatchImageLoader": "Batch Image Loader",
    PREFIX + "BatchImageSaver": "Batch Image Saver",
    PREFIX + "BatchProgress": "Batch Progress",
    PREFIX + "BatchNext": "Batch Next",
}
