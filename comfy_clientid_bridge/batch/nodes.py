"""The batch nodes: thin ComfyUI classes over the torch-free helpers of this package."""

from __future__ import annotations

import copy
import functools
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path, PurePosixPath
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
from .images import FloatImage, UnreadableImage, encode_image, load_image, to_uint8
from .listing import ORDERS, parse_patterns
from .naming import POLICIES, atomic_write_bytes, choose_target, output_relpath, resolve_inside
from .pipeline import Pipeline, SaveJob, SaveWorker, batch_pipeline

logger = logging.getLogger(__name__)

CATEGORY = "clientid_bridge/batch"
PREFIX = "ClientIdBridge_"
# The saver's `format` choices -> the file extension each is saved with.
EXTENSION_OF_FORMAT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
BATCH_ID = ("STRING", {"forceInput": True})
BATCH_ID_OUTPUT = 6  # the loader's batch_id output, by position (RETURN_TYPES)
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
            "hidden": {
                "prompt": "PROMPT",
                "unique_id": "UNIQUE_ID",
                "extra_pnginfo": "EXTRA_PNGINFO",
            },
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
        self,
        cursor: int,
        prompt: dict[str, Any],
        unique_id: str,
        on_error: str,
        extra_pnginfo: dict[str, Any] | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        engine = batch_engine()
        pipeline = batch_pipeline()
        source = _source(**inputs)
        batch = source_batch_id(source, workflow_key(prompt, unique_id))
        if pipeline is not None:
            _settle(pipeline.saves, batch, cursor)
        prompt_id = internals.running_prompt_id(internals.prompt_server())
        claimed = engine.begin(batch, source, cursor, prompt_id, unique_id)
        read = load_image if pipeline is None else pipeline.loads.take
        loaded = _first_readable(engine, claimed, on_error, prompt_id, read)
        if isinstance(loaded, Halt):
            if pipeline is not None:
                pipeline.saves.release()
            return _blocked(engine, loaded, len(self.RETURN_TYPES))
        claimed, rgb, mask = loaded
        if pipeline is not None:
            _prepare_next(engine, pipeline, source.folder, claimed)
        _show_progress(unique_id, engine.processed(batch), claimed)
        rel = Path(claimed.source)
        image, alpha = _as_tensors(rgb, mask)
        text = engine.progress(batch, rel.name)
        subfolder = rel.parent.as_posix() if rel.parent != Path(".") else ""
        result = (image, alpha, rel.stem, subfolder, claimed.index, claimed.total, batch)
        # batch_id in the UI payload: what a Stop button or an API client needs to stop it.
        ui = {**_ui(engine, batch, text, "running"), "file": [rel.name]}
        if pipeline is not None:  # last: its thread's Python would hold up the lines above
            _queue_ahead(engine, pipeline, claimed, prompt, unique_id, extra_pnginfo)
            pipeline.saves.release()  # the workflow runs now: the last image's save may start
        return {"ui": ui, "result": result}


def _settle(saves: SaveWorker, batch: str, cursor: int) -> None:
    """A person's Run reads the report: an earlier run's saves still in flight land in it
    first. A loop step raises the error of a save of this batch that failed behind it."""
    if cursor < 0:
        saves.wait(batch)
        saves.forget_failure(batch)
    else:
        saves.raise_failure(batch)


def _prepare_next(engine: BatchEngine, pipeline: Pipeline, folder: Path, item: Item) -> None:
    """Decodes the image the next prompt will most likely load while this one runs."""
    following = engine.next_index(item.batch_id, item.index)
    if following is not None:
        pipeline.loads.prefetch(folder / engine.source_of(item.batch_id, following))


def _queue_ahead(
    engine: BatchEngine,
    pipeline: Pipeline,
    item: Item,
    prompt: dict[str, Any],
    loader_id: str,
    extra_pnginfo: dict[str, Any] | None,
) -> None:
    """Queues the next image's prompt while this one runs, when this graph's Batch Next would
    queue it at the end: the POST then costs the GPU nothing. That prompt loads nothing
    unless this one reaches its Batch Next (engine.let_go); a Stop, a cancel or a cleared
    queue drops it as it drops any next prompt of a batch."""
    following = engine.next_index(item.batch_id, item.index)
    if following is None or not _loops(prompt, loader_id):
        return
    server = internals.prompt_server()
    body = _next_body(server, prompt, loader_id, following, extra_pnginfo)
    engine.queue_ahead(item.batch_id, following)
    post = functools.partial(_post_ahead, engine, server, item.batch_id, body)
    pipeline.next_prompts.submit(item.batch_id, following, post)


def _loops(prompt: dict[str, Any], loader_id: str) -> bool:
    """Whether a Batch Next of the graph takes this loader's batch_id straight from it."""
    link = [str(loader_id), BATCH_ID_OUTPUT]
    return any(
        isinstance(node, dict)
        and node.get("class_type") == PREFIX + "BatchNext"
        and isinstance(node.get("inputs"), dict)
        and node["inputs"].get("batch_id") == link
        for node in prompt.values()
    )


def _stop(engine: BatchEngine, batch: str) -> None:
    """Stops a batch from its own nodes: its next prompt, if one is queued, is dropped."""
    pending = engine.stop(batch)
    if pending is not None:
        internals.drop_queued(internals.prompt_server(), pending)


def _post_ahead(engine: BatchEngine, server: Any, batch: str, body: dict[str, Any]) -> str:
    prompt_id = internals.queue_prompt(server, body)
    engine.queued(batch, prompt_id)
    if engine.is_stopped(batch):  # stopped while the POST was on its way: Stop found no id
        internals.drop_queued(server, prompt_id)
    return prompt_id


def _next_body(
    server: Any,
    prompt: dict[str, Any],
    loader_id: str,
    cursor: int,
    extra_pnginfo: dict[str, Any] | None,
) -> dict[str, Any]:
    """The body of the next prompt: the graph as a client sends it (ComfyUI's own additions,
    is_changed, left out), the loader advanced to `cursor`, for the running prompt's tab."""
    graph = {
        node_id: {
            key: copy.deepcopy(node[key]) for key in internals.CLIENT_NODE_KEYS if key in node
        }
        for node_id, node in prompt.items()
    }
    graph[loader_id]["inputs"][CURSOR_INPUT] = cursor
    body: dict[str, Any] = {"prompt": graph, "client_id": internals.current_client_id(server)}
    if extra_pnginfo:
        body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
    return body


def _as_tensors(rgb: Any, mask: Any) -> tuple[Any, Any]:
    """The one place torch is used: ComfyUI's IMAGE (1xHxWx3) and MASK (1xHxW) tensors.

    Imported here, not at module level, so the node code can be tested without torch."""
    import torch

    return torch.from_numpy(rgb)[None], torch.from_numpy(mask)[None]


def _first_readable(
    engine: BatchEngine,
    claimed: Item | Halt,
    on_error: str,
    prompt_id: str | None,
    read: Callable[[Path], tuple[FloatImage, FloatImage]],
) -> tuple[Item, Any, Any] | Halt:
    """The claimed image, or the next readable one: files that are unreadable, or gone since
    the run listed the folder ("missing", never a reason to stop), are reported on the way."""
    while isinstance(claimed, Item):
        try:
            rgb, mask = read(claimed.path)
            return claimed, rgb, mask
        except UnreadableImage as error:
            status = "unreadable" if os.path.lexists(claimed.path) else "missing"
            engine.record(claimed.batch_id, claimed.index, status, None, str(error))
            if on_error == "stop" and status == "unreadable":
                _stop(engine, claimed.batch_id)
                raise RuntimeError(f"Batch Image Loader: {error}") from error
            logger.warning("batch %s: skipping %s (%s)", claimed.batch_id, error, status)
            following = engine.next_index(claimed.batch_id, claimed.index)
            if following is None:
                return Halt(claimed.batch_id, f"done: {_finish(engine, claimed.batch_id)}", "done")
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


def _show_text(node_id: str | None, text: str) -> None:
    """The node's text in the frontend (core's progress_text), for the running prompt's tab."""
    if node_id is not None:
        internals.show_node_text(internals.prompt_server(), node_id, text)


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
        pipeline = batch_pipeline()
        if pipeline is not None:
            pipeline.saves.raise_failure(batch_id)
        base, in_output = output_base(output_folder)
        engine.writes_to(batch_id, _output_folder(base, subfolder))
        workflow = (extra_pnginfo or {}).get("workflow")
        frames = images.cpu().numpy()
        source = engine.source_of(batch_id, index)
        extension = EXTENSION_OF_FORMAT[format]
        names = [
            output_relpath(
                source,
                prefix,
                f"{suffix}_{number}" if len(frames) > 1 else suffix,
                extension,
                subfolder,
            )
            for number in range(len(frames))
        ]
        encode = functools.partial(
            encode_image,
            fmt=format,
            quality=quality,
            compress_level=compress_level,
            prompt=prompt,
            workflow=workflow,
        )
        store = functools.partial(
            _store,
            engine,
            batch_id,
            index,
            base,
            existing,
            encode,
            list(zip(names, frames, strict=True)),
        )
        # The terminal runner counts an image done when its prompt succeeds (and may kill or
        # leave the server right after): its one-image prompts save before they end.
        if pipeline is None or engine.is_one_file(batch_id):
            written = store()
        else:
            written = _hand_over(pipeline.saves, engine, batch_id, base, names, existing, store)
        shown = [_shown(base, target) for target in written] if in_output else []
        return {"ui": {"images": shown}, "result": (";".join(map(str, written)),)}


def _store(
    engine: BatchEngine,
    batch: str,
    index: int,
    base: Path,
    existing: str,
    encode: Callable[[Any], bytes],
    frames: list[tuple[PurePosixPath, Any]],
) -> list[Path]:
    """Names, encodes, writes and reports each frame in turn -> the files written."""
    written = []
    for rel, floats in frames:
        target = choose_target(resolve_inside(base, rel), existing)
        if target is None:
            engine.record(batch, index, "skipped", rel.as_posix(), "output exists")
            continue
        _write(engine, batch, index, target, encode(to_uint8(floats)))
        engine.record(batch, index, "saved", target.relative_to(base).as_posix())
        written.append(target)
    return written


def _hand_over(
    saves: SaveWorker,
    engine: BatchEngine,
    batch: str,
    base: Path,
    names: list[PurePosixPath],
    existing: str,
    store: Callable[[], list[Path]],
) -> list[Path]:
    """Gives the image to the save worker -> the files it will write, named as the serial
    loop names them (the files of images still in flight count as taken). Nothing when the
    batch is stopped while the saver waits for room: that image is redone on the next Run."""
    taken = saves.reserved()  # a batch's frames have names of their own (_0, _1, ...)
    chosen = [choose_target(resolve_inside(base, rel), existing, taken) for rel in names]
    targets = [target for target in chosen if target is not None]
    job = SaveJob(batch, tuple(targets), functools.partial(_stop_on_failure, engine, batch, store))
    if not saves.submit(job, lambda: engine.is_stopped(batch)):
        logger.info("batch %s: stopped while an image waited for the disk; not saved", batch)
        return []
    return targets


def _stop_on_failure(engine: BatchEngine, batch: str, store: Callable[[], list[Path]]) -> None:
    """A save that fails in the background stops its batch, as one on the executor does."""
    try:
        store()
    except Exception:
        if not engine.is_stopped(batch):
            _stop(engine, batch)
        raise


def _shown(base: Path, target: Path) -> dict[str, str]:
    """The saver's UI entry for a file: core's /view serves only ComfyUI's own folders."""
    parent = target.relative_to(base).parent.as_posix()
    return {"filename": target.name, "subfolder": "" if parent == "." else parent, "type": "output"}


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
        _stop(engine, batch)
        raise RuntimeError(f"Batch Image Saver could not write {target}: {error}") from error


def _finish(engine: BatchEngine, batch: str) -> str:
    """The end of a pass once its last image is durable: the summary counts every save, and
    a last save that failed is the error, not "done"."""
    pipeline = batch_pipeline()
    if pipeline is not None:
        pipeline.saves.wait(batch)
        pipeline.saves.raise_failure(batch)
    return engine.finish(batch)


class BatchProgress:
    """'12/240 (5%) · img_012.jpg · ETA 3:10' for the running batch."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    FUNCTION = "format"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"batch_id": BATCH_ID, "index": INDEX},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def format(self, batch_id: str, index: int, unique_id: str | None = None) -> dict[str, Any]:
        engine = batch_engine()
        text = engine.progress(batch_id, Path(engine.source_of(batch_id, index)).name)
        _show_text(unique_id, text)
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
            "hidden": {
                "prompt": "PROMPT",
                "extra_pnginfo": "EXTRA_PNGINFO",
                "unique_id": "UNIQUE_ID",
            },
        }

    def advance(
        self,
        batch_id: str,
        saved: str,
        prompt: dict[str, Any],
        extra_pnginfo: dict[str, Any] | None = None,
        unique_id: str | None = None,
    ) -> dict[str, Any]:
        shown = self._advance(batch_id, prompt, extra_pnginfo)
        # The short state on the node; the long summary is in the log.
        _show_text(unique_id, shown["ui"]["badge"][0])
        return shown

    def _advance(
        self, batch_id: str, prompt: dict[str, Any], extra_pnginfo: dict[str, Any] | None
    ) -> dict[str, Any]:
        engine = batch_engine()
        pipeline = batch_pipeline()
        if pipeline is not None:
            pipeline.saves.raise_failure(batch_id)
        if engine.is_stopped(batch_id):
            return {
                "ui": _ui(engine, batch_id, f"stopped at {engine.progress(batch_id)}", "stopped")
            }
        following = engine.next_index(batch_id, engine.current(batch_id))
        if following is None:
            return {"ui": _ui(engine, batch_id, f"done: {_finish(engine, batch_id)}", "done")}
        engine.let_go(batch_id, following)
        ahead = None if pipeline is None else pipeline.next_prompts.take(batch_id, following)
        if ahead is None or not _queued_ahead(batch_id, ahead):
            server = internals.prompt_server()
            loader = engine.loader_of(batch_id)
            body = _next_body(server, prompt, loader, following, extra_pnginfo)
            engine.queued(batch_id, internals.queue_prompt(server, body))
        return {"ui": _ui(engine, batch_id, engine.progress(batch_id), "running")}


def _queued_ahead(batch: str, ahead: Future[str]) -> bool:
    """Whether the next prompt the loader queued ahead is in ComfyUI's queue. A refusal is
    logged and the POST made again here, as without the pipeline: a refused graph then
    fails this node with ComfyUI's own error, and a POST that only failed on its thread
    (a login that thread could not show) gets its second chance on the executor's."""
    try:
        ahead.result()
    except Exception as error:  # any: the POST below is the one whose error counts
        logger.info("batch %s: the next prompt queued ahead failed (%s); queueing it", batch, error)
        return False
    return True


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
