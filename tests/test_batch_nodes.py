"""The batch nodes without ComfyUI: a stand-in for the few internals they touch.

The stand-in plays ComfyUI's folders, the running prompt, the /prompt endpoint (it records
what Batch Next would POST) and the tensors (numpy arrays: torch is not needed here).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfy_clientid_bridge import internals
from comfy_clientid_bridge.batch import engine as engine_module
from comfy_clientid_bridge.batch import nodes
from comfy_clientid_bridge.batch import pipeline as pipeline_module
from comfy_clientid_bridge.batch.engine import BatchEngine
from comfy_clientid_bridge.batch.state import StateStore, read_report

LOADER, SAVER, NEXT = "1", "2", "3"
TAB = "a" * 32
WORKFLOW = {"nodes": [{"id": 1}], "links": []}
SERVER = object()  # PromptServer.instance


class Frames:
    """What the saver is given: a BxHxWx3 float tensor, as far as it reads it."""

    def __init__(self, array: np.ndarray[Any, Any]) -> None:
        self.array = array

    def cpu(self) -> Frames:
        return self

    def numpy(self) -> np.ndarray[Any, Any]:
        return self.array


@dataclass
class FakeComfy:
    """ComfyUI as the nodes see it: its folders, the running prompt, its /prompt."""

    root: Path
    running_prompt_id: str = "p0"
    queued: list[dict[str, Any]] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)  # the server each POST was made to
    progress: list[tuple[str, int, int]] = field(default_factory=list)
    texts: list[tuple[Any, str, str]] = field(default_factory=list)  # (server, node id, text)
    dropped: list[str] = field(default_factory=list)  # prompt ids taken out of the queue

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    def queue_prompt(self, server: Any, body: dict[str, Any]) -> str:
        self.servers.append(server)
        self.queued.append(body)
        return f"p{len(self.queued)}"

    def drop_queued(self, server: Any, prompt_id: str) -> bool:
        assert server is SERVER
        self.dropped.append(prompt_id)
        return True

    @property
    def waiting(self) -> list[dict[str, Any]]:
        """The bodies still in the queue: POSTed and not dropped."""
        return [body for n, body in enumerate(self.queued, 1) if f"p{n}" not in self.dropped]


@pytest.fixture(params=["serial", "pipelined"])
def loop_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs the strictly serial loop (the switch off) and the pipelined one."""
    made = pipeline_module.make_pipeline() if request.param == "pipelined" else None
    monkeypatch.setattr(pipeline_module, "_pipeline", made)
    return str(request.param)


def settle() -> None:
    """Waits for the saves in flight and the next prompts being queued ahead: what the serial
    loop has done when its node returns."""
    made = pipeline_module.batch_pipeline()
    if made is not None:
        assert made.saves.wait(timeout=10)
        made.next_prompts.wait()


@pytest.fixture
def comfy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop_mode: str) -> FakeComfy:
    fake = FakeComfy(tmp_path / "comfy")
    for folder in (fake.input, fake.output, fake.root / "user", fake.root / "temp"):
        folder.mkdir(parents=True)
    monkeypatch.setattr(internals, "input_directory", lambda: fake.input)
    monkeypatch.setattr(internals, "temp_directory", lambda: fake.root / "temp")
    monkeypatch.setattr(internals, "listen_addresses", lambda: ["127.0.0.1"])
    monkeypatch.setattr(internals, "output_directory", lambda: fake.output)
    monkeypatch.setattr(internals, "user_directory", lambda: fake.root / "user")
    monkeypatch.setattr(internals, "prompt_server", lambda: SERVER)
    monkeypatch.setattr(
        internals,
        "running_prompt_id",
        lambda server: fake.running_prompt_id if server is SERVER else None,
    )
    monkeypatch.setattr(
        internals, "current_client_id", lambda server: TAB if server is SERVER else None
    )
    monkeypatch.setattr(internals, "queue_prompt", fake.queue_prompt)
    monkeypatch.setattr(internals, "drop_queued", fake.drop_queued)
    monkeypatch.setattr(internals, "execution_blocker", lambda: "blocked")
    monkeypatch.setattr(internals, "show_node_progress", lambda *args: fake.progress.append(args))
    monkeypatch.setattr(internals, "show_node_text", lambda *args: fake.texts.append(args))
    monkeypatch.setattr(nodes, "_as_tensors", lambda rgb, mask: (rgb[None], mask[None]))
    engine = BatchEngine(
        StateStore(tmp_path / "state"), fake.output, lambda _: False, saving=engine_module._saving
    )
    monkeypatch.setattr(engine_module, "_engine", engine)
    return fake


def engine() -> BatchEngine:
    return engine_module.batch_engine()


def png(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), colour).save(path)
    return path


def graph(folder: str = "photos", **saver: Any) -> dict[str, Any]:
    """The example workflow as ComfyUI hands it to nodes (with its own `is_changed`)."""
    loader_inputs = {
        "folder": folder,
        "pattern": "",
        "recursive": True,
        "order": "natural",
        "shuffle_seed": 0,
        "start_index": 0,
        "limit": 0,
        "shard_index": 0,
        "shard_count": 1,
        "on_error": "skip",
        "cursor": -1,
    }
    saver_inputs = {
        "images": [LOADER, 0],
        "batch_id": [LOADER, 6],
        "index": [LOADER, 4],
        "format": "png",
        "quality": 95,
        "compress_level": 1,
        "prefix": "",
        "suffix": "",
        "subfolder": "batch",
        "existing": "skip",
        "output_folder": "",
        **saver,
    }
    return {
        LOADER: {
            "class_type": "ClientIdBridge_BatchImageLoader",
            "inputs": loader_inputs,
            "is_changed": ["f00d"],
        },
        SAVER: {"class_type": "ClientIdBridge_BatchImageSaver", "inputs": saver_inputs},
        NEXT: {
            "class_type": "ClientIdBridge_BatchNext",
            "inputs": {"batch_id": [LOADER, 6], "saved": [SAVER, 0]},
            "_meta": {"title": "Next"},
        },
    }


def load(prompt: dict[str, Any], extra_pnginfo: Any = WORKFLOW) -> dict[str, Any]:
    """The loader as ComfyUI runs it (with the same hidden inputs as the prompt's Batch Next)."""
    inputs = dict(prompt[LOADER]["inputs"])
    pnginfo = None if extra_pnginfo is None else {"workflow": extra_pnginfo}
    return nodes.BatchImageLoader().load(
        prompt=prompt, unique_id=LOADER, extra_pnginfo=pnginfo, **inputs
    )


def save(
    prompt: dict[str, Any], loaded: dict[str, Any], frames: int = 1, *, wait: bool = True
) -> dict[str, Any]:
    image, batch, index = loaded["result"][0], loaded["result"][6], loaded["result"][4]
    inputs = {k: v for k, v in prompt[SAVER]["inputs"].items() if not isinstance(v, list)}
    stack = Frames(np.repeat(np.asarray(image, dtype=np.float32), frames, axis=0))
    answer = nodes.BatchImageSaver().save(
        images=stack,
        batch_id=batch,
        index=index,
        prompt=prompt,
        extra_pnginfo={"workflow": WORKFLOW},
        **inputs,
    )
    if wait:
        settle()
    return answer


def advance(prompt: dict[str, Any], batch: str, saved: str = "x") -> dict[str, Any]:
    return nodes.BatchNext().advance(batch, saved, prompt, {"workflow": WORKFLOW})


def stop(comfy: FakeComfy, batch: str) -> None:
    """What the stop route does (batch/control.py): stop, and drop the queued next prompt."""
    pending = engine().stop(batch)
    if pending is not None:
        comfy.drop_queued(SERVER, pending)


def run_batch(comfy: FakeComfy, prompt: dict[str, Any]) -> list[str]:
    """What ComfyUI would do: run the prompt, then each prompt Batch Next queued. -> stems"""
    stems: list[str] = []
    while True:
        before = len(comfy.queued)  # the pipelined loader may queue the next one ahead
        loaded = load(prompt)
        if loaded["ui"]["state"] != ["running"]:
            return stems
        stems.append(f"{loaded['result'][3]}/{loaded['result'][2]}".lstrip("/"))
        save(prompt, loaded)
        advance(prompt, loaded["result"][6])
        if len(comfy.queued) == before:
            return stems
        prompt = comfy.queued[-1]["prompt"]


@pytest.fixture
def photos(comfy: FakeComfy) -> Path:
    folder = comfy.input / "photos"
    for name in ("img1.png", "img2.png", "img10.png"):
        png(folder / name)
    return folder


def test_a_folder_runs_to_the_end_once(comfy: FakeComfy, photos: Path) -> None:
    assert run_batch(comfy, graph()) == ["img1", "img2", "img10"]
    saved = sorted(p.name for p in (comfy.output / "batch").iterdir())
    assert saved == ["img1.png", "img10.png", "img2.png"]
    assert len(comfy.queued) == 2


def test_run_again_after_new_files_processes_only_them(comfy: FakeComfy, photos: Path) -> None:
    run_batch(comfy, graph())
    png(photos / "img0.png"), png(photos / "img3.png")
    assert run_batch(comfy, graph()) == ["img0", "img3"]
    assert load(graph())["ui"]["state"] == ["complete"]
    lines = read_report(next(comfy.output.glob("batch_*.jsonl")))
    assert sorted(line["source"] for line in lines) == [
        "img0.png",
        "img1.png",
        "img10.png",
        "img2.png",
        "img3.png",
    ]


def test_batch_next_queues_the_graph_as_sent_with_the_loader_advanced(
    comfy: FakeComfy, photos: Path
) -> None:
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded)
    answer = advance(prompt, loaded["result"][6])

    [body] = comfy.queued
    expected = {node_id: dict(node) for node_id, node in graph().items()}
    del expected[LOADER]["is_changed"]  # ComfyUI's own addition is not sent back
    expected[LOADER]["inputs"] = {**expected[LOADER]["inputs"], "cursor": 1}
    assert body == {
        "prompt": expected,
        "client_id": TAB,
        "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}},
    }
    assert prompt[LOADER]["inputs"]["cursor"] == -1  # the running prompt is not changed
    assert comfy.servers == [SERVER]
    batch = loaded["result"][6]
    assert answer["ui"]["state"] == ["running"] and answer["ui"]["batch_id"] == [batch]
    assert answer["ui"]["text"][0].startswith("1/3 (33%) · ETA ")
    assert engine().batches_of_prompt("p1") == [batch]  # its next prompt


def test_batch_next_at_the_end_says_done_and_queues_nothing(comfy: FakeComfy, photos: Path) -> None:
    for name in ("img2.png", "img10.png"):
        (photos / name).unlink()
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded)
    answer = advance(prompt, loaded["result"][6])
    assert comfy.queued == []
    assert answer["ui"]["state"] == ["done"] and answer["ui"]["progress"] == [1, 1]
    assert answer["ui"]["text"][0].endswith(f"output: {comfy.output / 'batch'}")


def test_batch_next_of_a_stopped_batch_queues_nothing(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    loaded = load(prompt)
    batch = loaded["result"][6]
    stop(comfy, batch)
    answer = advance(prompt, batch)
    assert comfy.waiting == [] and answer["ui"]["state"] == ["stopped"]
    assert answer["ui"]["batch_id"] == [batch]
    assert answer["ui"]["text"] == ["stopped at 0/3 (0%) · ETA --:--"]


def test_batch_next_without_a_workflow_sends_no_extra_data(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    loaded = load(prompt, extra_pnginfo=None)
    nodes.BatchNext().advance(loaded["result"][6], "x", prompt, None)
    assert "extra_data" not in comfy.queued[0]


def test_loader_outputs_and_ui(comfy: FakeComfy, photos: Path) -> None:
    png(photos / "deep" / "img0.png", (255, 0, 0))
    loaded = load(graph())
    image, mask, stem, subfolder, index, total, batch = loaded["result"]
    assert (stem, subfolder, index, total) == ("img0", "deep", 0, 4)
    assert image.shape == (1, 3, 4, 3) and mask.shape == (1, 3, 4)
    assert image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    ui = loaded["ui"]
    assert ui["batch_id"] == [batch] and ui["state"] == ["running"] and ui["file"] == ["img0.png"]
    assert ui["progress"] == [0, 4] and ui["badge"] == ["0/4 · ETA --:--"]
    assert ui["text"] == ["0/4 (0%) · img0.png · ETA --:--"]
    assert comfy.progress == [(LOADER, 1, 4)]
    assert engine().running_prompt_id(batch) == "p0"


def test_unreadable_files_are_skipped_and_reported(comfy: FakeComfy, photos: Path) -> None:
    (photos / "img0.png").write_bytes(b"\x89PNG broken")
    loaded = load(graph())
    assert loaded["result"][2] == "img1"
    [line] = read_report(report(comfy))
    assert (line["source"], line["status"]) == ("img0.png", "unreadable")
    assert line["error"].startswith(f"cannot read image {photos / 'img0.png'}: ")
    assert engine().running_prompt_id(loaded["result"][6]) == "p0"  # the next one, same prompt


def test_on_error_stop_stops_the_batch(comfy: FakeComfy, photos: Path) -> None:
    (photos / "img0.png").write_bytes(b"\x89PNG broken")
    prompt = graph()
    prompt[LOADER]["inputs"]["on_error"] = "stop"
    with pytest.raises(RuntimeError, match="img0.png"):
        load(prompt)
    assert engine().is_stopped(batch_of(prompt))


def test_a_file_removed_after_the_listing_is_missing_even_with_on_error_stop(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = graph()
    prompt[LOADER]["inputs"]["on_error"] = "stop"
    listing = ["gone.png", "img1.png"]
    monkeypatch.setattr(engine_module.Source, "list", lambda self: listing)
    loaded = load(prompt)
    assert loaded["result"][2] == "img1"
    statuses = [(line["source"], line["status"]) for line in read_report(report(comfy))]
    assert statuses == [("gone.png", "missing")]


def test_a_folder_with_nothing_readable_is_done_and_blocks_downstream(
    comfy: FakeComfy, photos: Path
) -> None:
    for name in ("img1.png", "img2.png", "img10.png"):
        (photos / name).write_bytes(b"not an image")
    loaded = load(graph())
    assert loaded["result"] == ("blocked",) * len(nodes.BatchImageLoader.RETURN_TYPES)
    assert loaded["ui"]["state"] == ["done"]
    assert loaded["ui"]["badge"] == ["done: 0 saved, 0 skipped, 3 failed"]
    assert loaded["ui"]["text"][0].startswith("done: 3 images in ")


def test_a_complete_batch_blocks_and_says_so(
    comfy: FakeComfy, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_batch(comfy, graph())
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        loaded = load(graph())
    [message] = [r.getMessage() for r in caplog.records if "already complete" in r.getMessage()]
    assert message.startswith(f"batch {batch_of(graph())}: already complete: ")
    assert loaded["result"][0] == "blocked" and loaded["ui"]["state"] == ["complete"]
    assert "already complete" in loaded["ui"]["text"][0]
    assert loaded["ui"]["badge"] == loaded["ui"]["text"]  # the reason, not the progress


def test_a_loop_step_of_a_stopped_batch_shows_it_stopped(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    engine().stop(load(prompt)["result"][6])
    step = {
        **prompt,
        LOADER: {**prompt[LOADER], "inputs": {**prompt[LOADER]["inputs"], "cursor": 1}},
    }
    loaded = load(step)
    assert loaded["ui"]["state"] == ["stopped"] and loaded["ui"]["badge"] == ["stopped: 0/3"]


def test_the_shuffle_seed_is_part_of_the_batch(comfy: FakeComfy, photos: Path) -> None:
    reseeded = graph()
    reseeded[LOADER]["inputs"]["shuffle_seed"] = 7
    assert load(graph())["ui"]["batch_id"] != load(reseeded)["ui"]["batch_id"]


def batch_of(prompt: dict[str, Any]) -> str:
    inputs = prompt[LOADER]["inputs"]
    source = nodes._source(**inputs)
    return engine_module.source_batch_id(source, engine_module.workflow_key(prompt, LOADER))


def report(comfy: FakeComfy) -> Path:
    return next(comfy.output.glob("batch_*.jsonl"))


# --- the saver ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "written", "shown_subfolder"),
    [
        ({}, "batch/img1.png", "batch"),
        ({"subfolder": ""}, "img1.png", ""),
        ({"prefix": "p_", "suffix": "_s", "format": "jpeg"}, "batch/p_img1_s.jpg", "batch"),
        ({"format": "webp", "subfolder": "a/b"}, "a/b/img1.webp", "a/b"),
    ],
    ids=["default", "no-subfolder", "affixes-jpeg", "webp-nested"],
)
def test_saver_names_and_shows_the_output(
    comfy: FakeComfy, photos: Path, settings: dict[str, Any], written: str, shown_subfolder: str
) -> None:
    prompt = graph(**settings)
    answer = save(prompt, load(prompt))
    target = comfy.output / written
    assert target.is_file()
    assert answer["result"] == (str(target),)
    shown = {"filename": target.name, "subfolder": shown_subfolder, "type": "output"}
    assert answer["ui"] == {"images": [shown]}
    [line] = read_report(report(comfy))
    assert (line["source"], line["output"], line["status"]) == ("img1.png", written, "saved")


def test_saver_embeds_the_workflow(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    save(prompt, load(prompt))
    with Image.open(comfy.output / "batch" / "img1.png") as image:
        assert "workflow" in image.info and "prompt" in image.info


def test_saver_keeps_source_subfolders(comfy: FakeComfy, photos: Path) -> None:
    png(photos / "deep" / "img0.png")
    prompt = graph()
    answer = save(prompt, load(prompt))
    assert (comfy.output / "batch" / "deep" / "img0.png").is_file()
    assert answer["ui"]["images"][0]["subfolder"] == "batch/deep"


def test_saver_numbers_the_frames_of_a_batch_of_images(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    answer = save(prompt, load(prompt), frames=2)
    out = comfy.output / "batch"
    assert sorted(p.name for p in out.iterdir()) == ["img1_0.png", "img1_1.png"]
    assert answer["result"] == (f"{out / 'img1_0.png'};{out / 'img1_1.png'}",)


def test_saver_skips_one_frame_and_saves_the_next(comfy: FakeComfy, photos: Path) -> None:
    png(comfy.output / "batch" / "img1_0.png", (1, 2, 3))
    prompt = graph()
    answer = save(prompt, load(prompt), frames=2)
    assert answer["result"] == (str(comfy.output / "batch" / "img1_1.png"),)


def test_saver_subfolder_dot_is_the_output_folder(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph(subfolder=".")
    loaded = load(prompt)
    save(prompt, loaded)
    assert (comfy.output / "img1.png").is_file()
    assert engine().summary(loaded["result"][6]).endswith(f"output: {comfy.output}")


def test_saver_skips_an_existing_output(comfy: FakeComfy, photos: Path) -> None:
    png(comfy.output / "batch" / "img1.png", (1, 2, 3))
    prompt = graph()
    answer = save(prompt, load(prompt))
    assert answer == {"ui": {"images": []}, "result": ("",)}
    [line] = read_report(report(comfy))
    assert (line["status"], line["output"], line["error"]) == (
        "skipped",
        "batch/img1.png",
        "output exists",
    )


def test_saver_to_an_outside_folder_writes_there_and_shows_nothing(
    comfy: FakeComfy, photos: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    prompt = graph(output_folder=str(elsewhere))
    loaded = load(prompt)
    answer = save(prompt, loaded)
    assert (elsewhere / "batch" / "img1.png").is_file()
    assert answer["ui"] == {"images": []}
    assert engine().summary(loaded["result"][6]).endswith(f"output: {elsewhere / 'batch'}")


def test_saver_never_writes_through_a_symlink_out_of_the_output_folder(
    comfy: FakeComfy, photos: Path, tmp_path: Path
) -> None:
    """The source's own subfolder is a link to outside: refused, nothing written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (comfy.output / "batch").mkdir()
    os.symlink(outside, comfy.output / "batch" / "deep")
    png(photos / "deep" / "img0.png")
    prompt = graph()
    loaded = load(prompt)
    with pytest.raises(ValueError, match="outside"):
        save(prompt, loaded)
    assert list(outside.iterdir()) == []


def test_a_failed_write_stops_the_batch_and_is_never_saved(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nodes, "atomic_write_bytes", full_disk)
    prompt = graph()
    loaded = load(prompt)
    with pytest.raises(RuntimeError, match="Batch Image Saver could not write .*No space left"):
        save(prompt, loaded)  # serial: the saver raises it
        advance(prompt, loaded["result"][6])  # pipelined: the next node of the batch does
    settle()
    assert engine().is_stopped(loaded["result"][6])
    assert comfy.waiting == []
    [line] = read_report(report(comfy))
    assert line["status"] == "failed" and "No space left" in line["error"]


def test_progress_node_formats_the_running_batch(comfy: FakeComfy, photos: Path) -> None:
    loaded = load(graph())
    answer = nodes.BatchProgress().format(loaded["result"][6], loaded["result"][4])
    assert answer["result"] == ("0/3 (0%) · img1.png · ETA --:--",)
    assert answer["ui"] == {"text": ["0/3 (0%) · img1.png · ETA --:--"]}


def progress_node(prompt: Any, loaded: dict[str, Any], unique_id: str | None) -> dict[str, Any]:
    index = loaded["result"][4]
    return nodes.BatchProgress().format(loaded["result"][6], index, unique_id=unique_id)


def stopped_next(prompt: Any, loaded: dict[str, Any], unique_id: str | None) -> dict[str, Any]:
    engine().stop(loaded["result"][6])
    return next_node(prompt, loaded, unique_id)


def next_node(prompt: Any, loaded: dict[str, Any], unique_id: str | None) -> dict[str, Any]:
    return nodes.BatchNext().advance(loaded["result"][6], "x", prompt, None, unique_id=unique_id)


@pytest.mark.parametrize(
    ("run", "unique_id", "shown"),
    [
        (progress_node, "3", "1/3 (33%) · img1.png · ETA "),
        (next_node, "4", "1/3 · ETA "),
        (stopped_next, "4", "stopped: 1/3"),
        (next_node, "7:4", "1/3 · ETA "),  # inside a subgraph: the execution id
        (next_node, None, None),
    ],
    ids=["progress", "next-running", "next-stopped", "in-a-subgraph", "no-node-id"],
)
def test_progress_and_next_show_their_text_on_their_own_node(
    comfy: FakeComfy, photos: Path, run: Any, unique_id: str | None, shown: str | None
) -> None:
    prompt = graph()
    loaded = load(prompt)
    comfy.texts.clear()
    save(prompt, loaded)
    answer = run(prompt, loaded, unique_id)
    if shown is None:
        assert comfy.texts == []
        return
    [(server, node_id, text)] = comfy.texts
    assert server is SERVER and node_id == unique_id and text.startswith(shown)
    assert text in (answer["ui"].get("badge", [None])[0], answer["ui"]["text"][0])


# --- IS_CHANGED --------------------------------------------------------------------------


def is_changed(prompt: dict[str, Any], cursor: int) -> Any:
    inputs = {**prompt[LOADER]["inputs"], "cursor": cursor}
    return nodes.BatchImageLoader.IS_CHANGED(prompt=prompt, unique_id=LOADER, **inputs)


def test_a_persons_run_is_never_cached(comfy: FakeComfy, photos: Path) -> None:
    assert is_changed(graph(), -1) != is_changed(graph(), -1)


def test_without_its_prompt_a_loop_step_is_never_cached(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    load(prompt)
    inputs = {**prompt[LOADER]["inputs"], "cursor": 1}
    for hidden in ({"unique_id": LOADER}, {"prompt": prompt}):
        first = nodes.BatchImageLoader.IS_CHANGED(**hidden, **inputs)
        assert first != nodes.BatchImageLoader.IS_CHANGED(**hidden, **inputs)


def test_a_loop_step_is_keyed_by_its_file(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    load(prompt)
    assert is_changed(prompt, 0) == is_changed(prompt, 0)  # the first image too
    first = is_changed(prompt, 1)
    assert first == is_changed(prompt, 1) and f":{photos / 'img2.png'}:" in first
    os.utime(photos / "img2.png", ns=(1, 1))
    assert is_changed(prompt, 1) != first
    assert is_changed(prompt, 99) != is_changed(prompt, 99)  # no such image: run it


# --- the pipelined loop: save behind, decode ahead ----------------------------------------

PIPELINED = pytest.mark.parametrize("loop_mode", ["pipelined"], indirect=True)
HELD = 10.0  # seconds a held write waits for its gate at most: a hang fails, not stalls


def held_writes(
    monkeypatch: pytest.MonkeyPatch,
    gate: threading.Event,
    *,
    wait: float = HELD,
    fail: bool = False,
) -> list[str]:
    """The saver's writes wait for `gate` (`wait` seconds at most), then write or fail like a
    full disk. -> the names written, in order."""
    real = nodes.atomic_write_bytes
    written: list[str] = []

    def write(path: Path, data: bytes) -> None:
        gate.wait(wait)
        if fail:
            raise OSError(28, "No space left on device")
        real(path, data)
        written.append(path.name)

    monkeypatch.setattr(nodes, "atomic_write_bytes", write)
    return written


def step(comfy: FakeComfy) -> dict[str, Any]:
    """The prompt Batch Next queued last."""
    return dict(comfy.queued[-1]["prompt"])


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # no worker left waiting


@PIPELINED
def test_the_saver_returns_before_its_image_is_written(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    written = held_writes(monkeypatch, gate)
    prompt = graph()
    answer = save(prompt, load(prompt), wait=False)
    target = comfy.output / "batch" / "img1.png"
    assert answer["ui"] == {
        "images": [{"filename": "img1.png", "subfolder": "batch", "type": "output"}]
    }
    assert answer["result"] == (str(target),)
    assert written == [] and not target.exists()  # handed over, not written yet
    assert not list(comfy.output.glob("batch_*.jsonl"))  # nor reported
    gate.set()
    settle()
    assert written == ["img1.png"] and target.is_file()
    [line] = read_report(report(comfy))
    assert (line["source"], line["status"]) == ("img1.png", "saved")


@PIPELINED
def test_the_next_image_counts_the_one_being_saved_as_processed(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held_writes(monkeypatch, gate)
    prompt = graph()
    loaded = load(prompt)
    batch = loaded["result"][6]
    save(prompt, loaded, wait=False)
    advance(prompt, batch)
    following = load(step(comfy))
    assert following["ui"]["text"][0].startswith("1/3 (33%) · img2.png")
    assert following["ui"]["progress"] == [0, 3]  # what clients act on: reported ones
    assert comfy.progress[-1][1:] == (2, 3)  # the progress bar: this image among them


def held_saves(comfy: FakeComfy) -> tuple[dict[str, Any], str, Path]:
    """img1 loaded and handed to a save worker that holds it until released (a minute at
    most) -> (its prompt, its batch, the file it will write)."""
    made = pipeline_module.batch_pipeline()
    assert made is not None
    made.saves.hold = 60.0
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded, wait=False)
    target = comfy.output / "batch" / "img1.png"
    assert not target.exists()
    return prompt, loaded["result"][6], target


def written_soon(target: Path) -> bool:
    deadline = time.monotonic() + HELD
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return target.exists()


@PIPELINED
def test_the_next_images_loader_starts_the_save_held_for_it(comfy: FakeComfy, photos: Path) -> None:
    prompt, batch, target = held_saves(comfy)
    advance(prompt, batch)
    assert not target.exists()  # Batch Next does not release it: ComfyUI's work comes next
    following = load(step(comfy))
    assert following["ui"]["state"] == ["running"]
    assert written_soon(target)


@PIPELINED
def test_a_loader_that_halts_starts_the_save_held_too(comfy: FakeComfy, photos: Path) -> None:
    prompt, batch, target = held_saves(comfy)
    advance(prompt, batch)
    stop(comfy, batch)
    assert load(step(comfy))["ui"]["state"] == ["stopped"]
    assert written_soon(target)


@PIPELINED
def test_a_save_failing_behind_the_loop_stops_it_at_the_next_step_and_is_redone_next_run(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    disk = nodes.atomic_write_bytes
    held_writes(monkeypatch, gate, fail=True)
    prompt = graph()
    loaded = load(prompt)
    batch = loaded["result"][6]
    save(prompt, loaded, wait=False)
    advance(prompt, batch)  # the failure is not known yet: the next image is queued
    gate.set()
    settle()
    with pytest.raises(RuntimeError, match="Batch Image Saver could not write .*img1.png"):
        load(step(comfy))
    assert engine().is_stopped(batch) and len(comfy.queued) == 1
    assert [(line["source"], line["status"]) for line in read_report(report(comfy))] == [
        ("img1.png", "failed")
    ]
    monkeypatch.setattr(nodes, "atomic_write_bytes", disk)  # the disk has room again
    assert run_batch(comfy, graph()) == ["img1", "img2", "img10"]
    saved = sorted(p.name for p in (comfy.output / "batch").iterdir())
    assert saved == ["img1.png", "img10.png", "img2.png"]  # the failure is forgotten


@PIPELINED
def test_a_background_save_failing_otherwise_than_on_the_disk_stops_its_batch_at_once(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise ValueError("encoder broke")

    monkeypatch.setattr(nodes, "encode_image", broken)
    prompt = graph()
    loaded = load(prompt)
    batch = loaded["result"][6]
    save(prompt, loaded)  # and settled: the failure happened behind the loop
    assert engine().is_stopped(batch)
    with pytest.raises(RuntimeError, match="encoder broke"):
        load(step(comfy))


@PIPELINED
def test_a_saver_that_finds_no_room_waits_for_it(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    monkeypatch.setattr(pipeline_module, "_pipeline", pipeline_module.make_pipeline(depth=1))
    written = held_writes(monkeypatch, gate)
    prompt = graph()
    first = load(prompt)
    save(prompt, first, wait=False)  # in flight: the worker is full
    advance(prompt, first["result"][6])
    second = load(step(comfy))
    opener = threading.Timer(0.2, gate.set)
    opener.start()
    answer = save(step(comfy), second)  # waits for room (its batch runs), then hands over
    opener.join()
    assert answer["ui"]["images"] == [
        {"filename": "img2.png", "subfolder": "batch", "type": "output"}
    ]
    assert written == ["img1.png", "img2.png"]


@PIPELINED
def test_a_saver_raises_the_failure_of_its_batchs_earlier_save(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held_writes(monkeypatch, gate, fail=True)
    prompt = graph()
    first = load(prompt)
    save(prompt, first, wait=False)
    advance(prompt, first["result"][6])
    second = load(step(comfy))  # the first save has not failed yet
    gate.set()
    settle()
    with pytest.raises(RuntimeError, match="Batch Image Saver could not write .*img1.png"):
        save(step(comfy), second)


@PIPELINED
def test_a_persons_run_of_another_batch_does_not_wait_for_this_ones_saves(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    png(comfy.input / "other" / "o1.png")
    written = held_writes(monkeypatch, gate)
    prompt = graph()
    save(prompt, load(prompt), wait=False)  # held on the disk
    other = load(graph("other"))
    assert other["ui"]["state"] == ["running"] and other["result"][2] == "o1"
    assert written == []  # it did not wait for the first batch's save


@PIPELINED
def test_saves_handed_over_before_a_stop_are_finished(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    """Their prompts ended and named the files in the tab and the history: they are written."""
    written = held_writes(monkeypatch, gate)
    prompt = graph()
    loaded = load(prompt)
    batch = loaded["result"][6]
    save(prompt, loaded, wait=False)
    stop(comfy, batch)
    gate.set()
    settle()
    assert written == ["img1.png"]
    assert [line["status"] for line in read_report(report(comfy))] == ["saved"]
    assert advance(prompt, batch)["ui"]["state"] == ["stopped"] and comfy.waiting == []


@PIPELINED
def test_a_stop_while_the_saver_waits_for_room_leaves_that_image_for_the_next_run(
    comfy: FakeComfy,
    photos: Path,
    monkeypatch: pytest.MonkeyPatch,
    gate: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pipeline_module, "_pipeline", pipeline_module.make_pipeline(depth=1))
    written = held_writes(monkeypatch, gate)
    prompt = graph()
    first = load(prompt)
    batch = first["result"][6]
    save(prompt, first, wait=False)  # in flight: the worker is full
    advance(prompt, batch)
    second = load(step(comfy))
    engine().stop(batch)
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        answer = save(step(comfy), second, wait=False)  # waits for room, sees the stop
    assert answer == {"ui": {"images": []}, "result": ("",)}
    assert [r.getMessage() for r in caplog.records] == [
        f"batch {batch}: stopped while an image waited for the disk; not saved"
    ]
    gate.set()
    settle()
    assert written == ["img1.png"]
    assert [line["source"] for line in read_report(report(comfy))] == ["img1.png"]


@PIPELINED
def test_the_end_of_a_batch_comes_after_its_last_save_is_durable(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    for name in ("img2.png", "img10.png"):
        (photos / name).unlink()
    held_writes(monkeypatch, gate, wait=0.3)  # the disk is slow; nobody opens the gate
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded, wait=False)
    answer = advance(prompt, loaded["result"][6])
    assert answer["ui"]["state"] == ["done"] and answer["ui"]["progress"] == [1, 1]
    assert answer["ui"]["badge"] == ["done: 1 saved, 0 skipped"]
    assert answer["ui"]["text"][0].startswith("done: 1 image in ")
    assert [line["status"] for line in read_report(report(comfy))] == ["saved"]


@PIPELINED
def test_a_last_save_that_fails_is_the_end_of_its_batch_not_done(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    for name in ("img2.png", "img10.png"):
        (photos / name).unlink()
    held_writes(monkeypatch, gate, wait=0.3, fail=True)  # a slow disk, then full
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded, wait=False)
    with pytest.raises(RuntimeError, match="Batch Image Saver could not write .*img1.png"):
        advance(prompt, loaded["result"][6])


@PIPELINED
def test_a_persons_run_starts_after_the_saves_of_an_earlier_run(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    """Stopped with img1 still being written, Run again: img1 is not claimed a second time."""
    held_writes(monkeypatch, gate, wait=0.3)
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded, wait=False)
    engine().stop(loaded["result"][6])
    assert load(graph())["result"][2] == "img2"


@pytest.mark.parametrize(
    ("existing", "outputs", "shown"),
    [
        ("increment", ["a.png", "a_1.png"], [["a.png"], ["a_1.png"]]),
        ("skip", ["a.png"], [["a.png"], []]),
        ("overwrite", ["a.png"], [["a.png"], ["a.png"]]),
    ],
    ids=["increment", "skip", "overwrite"],
)
def test_two_images_with_one_output_name_are_named_as_in_the_serial_loop(
    comfy: FakeComfy,
    monkeypatch: pytest.MonkeyPatch,
    gate: threading.Event,
    existing: str,
    outputs: list[str],
    shown: list[list[str]],
) -> None:
    """a.jpg and a.png both save as a.png; the first is still being written (pipelined)."""
    folder = comfy.input / "photos"
    png(folder / "a.png", (1, 1, 1))
    Image.new("RGB", (4, 3), (200, 0, 0)).save(folder / "a.jpg")
    held_writes(monkeypatch, gate, wait=0.3)
    prompt = graph(existing=existing, subfolder="")
    first = load(prompt)
    answers = [save(prompt, first, wait=False)]
    advance(prompt, first["result"][6])
    answers.append(save(step(comfy), load(step(comfy)), wait=False))
    settle()
    assert [[image["filename"] for image in a["ui"]["images"]] for a in answers] == shown
    assert sorted(p.name for p in comfy.output.glob("*.png")) == outputs
    statuses = [line["status"] for line in read_report(report(comfy))]
    assert statuses == ["saved", "skipped" if existing == "skip" else "saved"]
    if existing == "overwrite":  # the second image (a.png, grey) was written last
        with Image.open(comfy.output / "a.png") as image:
            assert image.getpixel((0, 0)) == (1, 1, 1)


@pytest.mark.parametrize(
    ("on_error", "stems"),
    [("skip", ["img1", "img10"]), ("stop", None)],
    ids=["skip", "stop"],
)
def test_an_unreadable_file_read_ahead_is_handled_as_one_read_on_the_spot(
    comfy: FakeComfy, photos: Path, on_error: str, stems: list[str] | None
) -> None:
    (photos / "img2.png").write_bytes(b"\x89PNG broken")
    prompt = graph()
    prompt[LOADER]["inputs"]["on_error"] = on_error
    if stems is None:
        with pytest.raises(RuntimeError, match="img2.png"):
            run_batch(comfy, prompt)
    else:
        assert run_batch(comfy, prompt) == stems
    statuses = {line["source"]: line["status"] for line in read_report(report(comfy))}
    assert statuses["img2.png"] == "unreadable" and statuses["img1.png"] == "saved"


@PIPELINED
def test_the_loader_decodes_the_next_image_ahead(comfy: FakeComfy, photos: Path) -> None:
    prompt = graph()
    loaded = load(prompt)
    made = pipeline_module.batch_pipeline()
    assert made is not None and made.loads.kept() == [photos / "img2.png"]
    save(prompt, loaded)
    advance(prompt, loaded["result"][6])
    assert load(step(comfy))["result"][2] == "img2"
    assert made.loads.kept() == [photos / "img10.png"]


# --- the interface saved workflows rely on ----------------------------------------------

INTERFACE = Path(__file__).with_name("batch_nodes_interface.json")


def node_interface() -> dict[str, Any]:
    """What ComfyUI reads of each node class, in the order it reads it."""
    return {
        name: {
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS[name],
            "category": cls.CATEGORY,
            "function": cls.FUNCTION,
            "output_node": getattr(cls, "OUTPUT_NODE", False),
            "input_types": cls.INPUT_TYPES(),
            "return_types": list(cls.RETURN_TYPES),
            "return_names": list(getattr(cls, "RETURN_NAMES", ())),
            "description": getattr(cls, "DESCRIPTION", None),
        }
        for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
    }


def test_the_node_interface_is_what_saved_workflows_rely_on() -> None:
    """Input names, their order (a saved workflow's widget values are positional), types,
    defaults and ranges. A deliberate change updates tests/batch_nodes_interface.json, in
    the same commit as a note in the changelog."""
    assert json.dumps(node_interface(), indent=1) + "\n" == INTERFACE.read_text()


def test_as_tensors_adds_the_batch_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = ModuleType("torch")
    torch.from_numpy = lambda array: array  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    image, mask = nodes._as_tensors(np.zeros((3, 4, 3)), np.zeros((3, 4)))
    assert image.shape == (1, 3, 4, 3) and mask.shape == (1, 3, 4)


@pytest.mark.parametrize(
    ("selection", "stems"),
    [
        ({"start_index": 1}, ["img2", "img10"]),
        ({"limit": 2}, ["img1", "img2"]),
        ({"shard_index": 1, "shard_count": 2}, ["img2"]),
        ({"shard_count": 2}, ["img1", "img10"]),
    ],
    ids=["start-index", "limit", "second-shard", "first-shard"],
)
def test_the_loader_goes_through_its_selection(
    comfy: FakeComfy, photos: Path, selection: dict[str, int], stems: list[str]
) -> None:
    prompt = graph()
    prompt[LOADER]["inputs"].update(selection)
    assert run_batch(comfy, prompt) == stems


def test_the_shuffle_follows_the_seed_given_to_the_loader(comfy: FakeComfy, photos: Path) -> None:
    for number in range(20, 40):
        png(photos / f"img{number}.png")
    prompt = graph()
    prompt[LOADER]["inputs"].update(order="shuffle", shuffle_seed=7)
    expected = engine_module.Source(photos, nodes.parse_patterns(""), True, "shuffle", 7).list()
    assert load(prompt)["result"][2] == Path(expected[0]).stem


# --- one file per prompt: what the terminal runner queues ------------------------------


def one_file(name: str) -> dict[str, Any]:
    """The runner's prompt: the loader pinned to one file, no Batch Next."""
    prompt = graph()
    prompt[LOADER]["inputs"]["file"] = name
    del prompt[NEXT]
    return prompt


def test_a_one_file_prompt_loads_only_that_file(comfy: FakeComfy, photos: Path) -> None:
    loaded = load(one_file("img10.png"))
    assert (loaded["result"][2], loaded["result"][4], loaded["result"][5]) == ("img10", 0, 1)
    save(one_file("img10.png"), loaded)
    assert sorted(p.name for p in (comfy.output / "batch").iterdir()) == ["img10.png"]


def test_one_file_prompts_share_one_batch_and_one_report(comfy: FakeComfy, photos: Path) -> None:
    batches = set()
    for name in ("img1.png", "img2.png"):
        loaded = load(one_file(name))
        save(one_file(name), loaded)
        batches.add(loaded["result"][6])
    assert len(batches) == 1
    [report] = comfy.output.glob("batch_*.jsonl")
    # No file reported "missing" because the next prompt names another one.
    assert [(line["source"], line["status"]) for line in read_report(report)] == [
        ("img1.png", "saved"),
        ("img2.png", "saved"),
    ]


def test_a_one_file_prompt_is_a_batch_apart_from_the_folders_loop(
    comfy: FakeComfy, photos: Path
) -> None:
    assert load(one_file("img1.png"))["result"][6] != load(graph())["result"][6]


def test_a_one_file_prompt_of_a_file_done_here_before_says_complete(
    comfy: FakeComfy, photos: Path
) -> None:
    save(one_file("img2.png"), load(one_file("img2.png")))
    assert load(one_file("img2.png"))["ui"]["state"] == ["complete"]


def test_a_one_file_prompt_of_a_missing_file_loads_nothing(comfy: FakeComfy, photos: Path) -> None:
    answer = load(one_file("gone.png"))
    assert answer["ui"]["state"] == ["done"]
    assert answer["result"][0] == "blocked"


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd"], ids=["dotdot", "absolute"])
def test_a_one_file_prompt_cannot_leave_the_folder(
    comfy: FakeComfy, photos: Path, name: str
) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        load(one_file(name))


@PIPELINED
def test_a_one_file_prompt_saves_before_it_ends(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner takes an image as done at its prompt's success: no save behind for it."""
    real, writers = nodes.atomic_write_bytes, []

    def write(path: Path, data: bytes) -> None:
        writers.append(threading.current_thread())
        real(path, data)

    monkeypatch.setattr(nodes, "atomic_write_bytes", write)
    answer = save(one_file("img10.png"), load(one_file("img10.png")), wait=False)
    assert writers == [threading.current_thread()]  # written by the prompt, before it ended
    [line] = read_report(report(comfy))
    assert (line["source"], line["status"]) == ("img10.png", "saved")
    assert Path(answer["result"][0]).is_file()
    assert pipeline_module.batch_pipeline() is not None  # the pipeline is on, and was passed by


# --- the next prompt queued ahead (pipelined) ----------------------------------------


def test_the_loaders_batch_id_output_is_the_one_batch_next_is_looked_for_on() -> None:
    names = nodes.BatchImageLoader.RETURN_NAMES
    assert names[nodes.BATCH_ID_OUTPUT] == "batch_id"


@PIPELINED
def test_the_next_prompt_is_queued_while_the_image_runs_and_only_once(
    comfy: FakeComfy, photos: Path
) -> None:
    prompt = graph()
    loaded = load(prompt)
    settle()
    [ahead] = comfy.queued  # before the saver and Batch Next ran
    expected = {node_id: dict(node) for node_id, node in graph().items()}
    del expected[LOADER]["is_changed"]
    expected[LOADER]["inputs"] = {**expected[LOADER]["inputs"], "cursor": 1}
    assert ahead == {
        "prompt": expected,
        "client_id": TAB,
        "extra_data": {"extra_pnginfo": {"workflow": WORKFLOW}},
    }
    save(prompt, loaded)
    answer = advance(prompt, loaded["result"][6])
    assert comfy.queued == [ahead] and answer["ui"]["state"] == ["running"]
    assert comfy.dropped == []  # its batch runs: the prompt queued ahead stays queued
    assert engine().batches_of_prompt("p1") == [loaded["result"][6]]
    assert load(ahead["prompt"])["result"][2] == "img2"  # let go: it loads its image


@PIPELINED
def test_a_prompt_that_never_reached_its_batch_next_stops_the_batch(
    comfy: FakeComfy, photos: Path
) -> None:
    """Its workflow failed or was cut: the prompt queued ahead loads nothing, as the serial
    loop would never have queued it, and the next Run redoes the image."""
    prompt = graph()
    loaded = load(prompt)  # ... and then a node of the workflow fails: no Batch Next
    settle()
    [ahead] = comfy.queued
    answer = load(ahead["prompt"])
    assert answer["ui"]["state"] == ["stopped"] and answer["result"] == ("blocked",) * 7
    assert "the previous image's prompt did not end" in answer["ui"]["text"][0]
    assert engine().is_stopped(loaded["result"][6])
    assert run_batch(comfy, graph()) == ["img1", "img2", "img10"]


@PIPELINED
def test_a_refused_post_ahead_is_made_again_by_batch_next(
    comfy: FakeComfy,
    photos: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = [RuntimeError("ComfyUI refused the next prompt: 401")]

    def refuse_once(server: Any, body: dict[str, Any]) -> str:
        if refusals:
            raise refusals.pop()
        return comfy.queue_prompt(server, body)

    monkeypatch.setattr(internals, "queue_prompt", refuse_once)
    prompt = graph()
    loaded = load(prompt)
    settle()
    assert comfy.queued == [] and refusals == []
    save(prompt, loaded)
    with caplog.at_level("INFO", logger="comfy_clientid_bridge"):
        assert advance(prompt, loaded["result"][6])["ui"]["state"] == ["running"]
    assert [r.getMessage() for r in caplog.records] == [
        f"batch {loaded['result'][6]}: the next prompt queued ahead failed "
        "(ComfyUI refused the next prompt: 401); queueing it"
    ]
    [body] = comfy.queued
    assert body["prompt"][LOADER]["inputs"]["cursor"] == 1
    assert engine().batches_of_prompt("p1") == [loaded["result"][6]]
    assert load(body["prompt"])["result"][2] == "img2"


@PIPELINED
def test_a_refusal_of_the_next_prompt_fails_batch_next_with_comfyuis_error(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(server: Any, body: dict[str, Any]) -> str:
        raise RuntimeError("ComfyUI refused the next prompt: invalid graph")

    monkeypatch.setattr(internals, "queue_prompt", refuse)
    prompt = graph()
    loaded = load(prompt)
    save(prompt, loaded)
    with pytest.raises(RuntimeError, match="invalid graph"):
        advance(prompt, loaded["result"][6])


@PIPELINED
def test_a_stop_while_the_post_ahead_is_on_its_way_drops_its_prompt(
    comfy: FakeComfy, photos: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    def held(server: Any, body: dict[str, Any]) -> str:
        assert gate.wait(HELD)
        return comfy.queue_prompt(server, body)

    monkeypatch.setattr(internals, "queue_prompt", held)
    prompt = graph()
    loaded = load(prompt)
    stop(comfy, loaded["result"][6])  # finds no queued prompt yet
    gate.set()
    settle()
    assert len(comfy.queued) == 1 and comfy.dropped == ["p1"] and comfy.waiting == []


@pytest.mark.parametrize(
    "rewire",
    [
        pytest.param(lambda g: g.pop(NEXT), id="no-batch-next"),
        pytest.param(
            lambda g: g[NEXT]["inputs"].update(batch_id=["9", 0]), id="batch-id-from-another-node"
        ),
        pytest.param(lambda g: g[NEXT].update(class_type="OtherPack_Next"), id="another-node"),
    ],
)
@PIPELINED
def test_nothing_is_queued_ahead_unless_a_batch_next_takes_this_loaders_batch_id(
    comfy: FakeComfy, photos: Path, rewire: Any
) -> None:
    prompt = graph()
    rewire(prompt)
    load(prompt)
    settle()
    assert comfy.queued == []


@PIPELINED
def test_nothing_is_queued_ahead_of_the_last_image(comfy: FakeComfy, photos: Path) -> None:
    for name in ("img2.png", "img10.png"):
        (photos / name).unlink()
    prompt = graph()
    loaded = load(prompt)
    settle()
    assert comfy.queued == []
    save(prompt, loaded)
    assert advance(prompt, loaded["result"][6])["ui"]["state"] == ["done"]
