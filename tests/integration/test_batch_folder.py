"""On a real ComfyUI: a folder through loader -> saver, one image per prompt, to the end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from integration.support import comfy_fixture, comfyui_found
from PIL import Image

from comfy_clientid_bridge.batch.state import read_report
from comfy_clientid_bridge.tools.demo import post, single_graph, wait_idle
from comfy_clientid_bridge.tools.launcher import REPO, ROUTED, Comfy, Tab, running_comfyui

pytestmark = pytest.mark.integration
EXAMPLE = REPO / "examples" / "batch_folder.api.json"
WORKFLOW = {"nodes": [{"id": 1, "type": "ClientIdBridge_BatchImageLoader"}], "marker": "ui-graph"}
SAVER = "2"


comfy_paths = comfyui_found()  # tests here that start their own ComfyUI
comfy = comfy_fixture(REPO)


def make_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """12 files: one corrupt, two in a subfolder, one RGBA, one EXIF-rotated. -> sizes."""
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}
    for number in range(1, 8):
        name = f"img{number}.png"
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / name)
        expected[f"img{number}"] = (30, 20)
    Image.new("RGBA", (16, 12), (255, 0, 0, 128)).save(folder / "alpha.png")
    expected["alpha"] = (16, 12)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 40x20 photo stands upright as 20x40
    Image.new("RGB", (40, 20), (0, 0, 255)).save(folder / "rotated.jpg", exif=exif.tobytes())
    expected["rotated"] = (20, 40)
    for name in ("s1.png", "s2.png"):
        Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "sub" / name)
        expected[f"sub/{Path(name).stem}"] = (8, 8)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return expected


def batch_graph(folder: Path, **saver: Any) -> dict[str, Any]:
    graph = json.loads(EXAMPLE.read_text())
    graph["1"]["inputs"].update(folder=str(folder), recursive=True)
    graph["2"]["inputs"].update(saver)
    return graph


def _reject(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON; the browser's JSON.parse fails on it")


async def run(comfy: Comfy, graph: dict[str, Any], *, until_idle: bool = True) -> tuple[Tab, Tab]:
    async with aiohttp.ClientSession() as session:
        tab_a = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        tab_b = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listeners = [asyncio.create_task(tab.listen()) for tab in (tab_a, tab_b)]
        extra = {"extra_pnginfo": {"workflow": WORKFLOW}}
        await post(
            session, comfy.url, {"prompt": graph, "client_id": tab_a.client_id, "extra_data": extra}
        )
        await post(
            session, comfy.url, {"prompt": single_graph("foreign"), "client_id": tab_b.client_id}
        )
        if until_idle:
            await wait_idle(session, comfy.url)
        for route in ("/history", "/queue"):  # what the browser parses: strict JSON only
            async with session.get(comfy.url + route) as response:
                json.loads(await response.text(), parse_constant=_reject)
        for tab in (tab_a, tab_b):
            await tab.close()
        await asyncio.gather(*listeners, return_exceptions=True)
    return tab_a, tab_b


def saver_images(tab: Tab) -> list[dict[str, Any]]:
    return [
        image
        for e in tab.of_type("executed")
        if e["node"] == SAVER
        for image in e["output"]["images"]
    ]


@pytest.mark.parametrize("bridge", ["on", "off"])
async def test_folder_of_twelve(tmp_path: Path, comfy_paths: None, bridge: str) -> None:
    folder = tmp_path / "photos"
    expected = make_folder(folder)
    env = {"COMFY_CLIENTID_BRIDGE": "1" if bridge == "on" else "0"}
    with running_comfyui(tmp_path / "comfy", packs=[REPO], env=env) as comfy:
        tab_a, tab_b = await run(comfy, batch_graph(folder, suffix="_x", subfolder="out"))
        log = comfy.log_text()
    outputs = sorted(
        p.relative_to(comfy.output / "out").as_posix()
        for p in (comfy.output / "out").rglob("*.png")
    )
    assert outputs == sorted(f"{stem}_x.png" for stem in expected)
    for stem, size in expected.items():
        with Image.open(comfy.output / "out" / f"{stem}_x.png") as image:
            assert image.size == size and image.mode == "RGB"
            assert json.loads(image.info["workflow"]) == WORKFLOW
            assert (
                json.loads(image.info["prompt"])["1"]["class_type"]
                == "ClientIdBridge_BatchImageLoader"
            )
    [report] = list(comfy.output.glob("batch_*.jsonl"))
    lines = read_report(report)
    assert len(lines) == 12
    assert [line["status"] for line in lines].count("unreadable") == 1
    # The tab that started it was shown every saved image, and nothing of tab B's prompt.
    shown = saver_images(tab_a)
    assert (
        sorted(f"{i['subfolder']}/{i['filename']}".removeprefix("out/") for i in shown) == outputs
    )
    assert [i["filename"] for i in saver_images(tab_b)] == ["foreign_00001_.png"]  # its own
    assert not tab_b.prompt_ids(ROUTED) & tab_a.prompt_ids(ROUTED)
    assert "done: 12 images" in log or "12 images in" in log
    assert "comfy_clientid_bridge/" not in log


async def test_sigkill_mid_batch_with_saves_in_flight_then_restart_saves_each_image_once(
    tmp_path: Path, comfy_paths: None
) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for number in range(12):  # noise saved at level 9: the save worker is the slow part
        pixels = rng.integers(0, 255, (900, 900, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"n{number:02}.png", compress_level=0)
    graph = batch_graph(folder, compress_level=9, subfolder="big")
    root = tmp_path / "comfy"
    with running_comfyui(root, packs=[REPO]) as comfy:
        async with aiohttp.ClientSession() as session:
            tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
            listener = asyncio.create_task(tab.listen())
            await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
            for _ in range(1200):
                if len(saver_images(tab)) >= 4:  # the 4th image just handed to the worker
                    break
                await asyncio.sleep(0.01)
            os.kill(comfy.process.pid, signal.SIGKILL)
            comfy.process.wait()
            handed = {image["filename"] for image in saver_images(tab)}
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    report = next((root / "output").glob("batch_*.jsonl"))
    reported = {line["output"] for line in read_report(report) if line["status"] == "saved"}
    on_disk = {
        p.relative_to(root / "output").as_posix() for p in (root / "output" / "big").glob("*")
    }
    assert 1 <= len(reported) < 12, "the kill must land mid-batch"
    assert {f"big/{name}" for name in handed} - reported, "the kill must land with saves in flight"
    assert reported <= on_disk  # a reported image is on disk (hidden temp files aside)
    for name in on_disk:
        if not Path(name).name.startswith("."):
            with Image.open(root / "output" / name) as image:
                image.load()  # a truncated file under a real name would raise here
    with running_comfyui(root, packs=[REPO]) as comfy:
        async with aiohttp.ClientSession() as session:
            await post(session, comfy.url, {"prompt": graph})
            await wait_idle(session, comfy.url, timeout=180)
    outputs = sorted(p.name for p in (root / "output" / "big").glob("*.png"))
    assert outputs == [f"n{number:02}_out.png" for number in range(12)]  # no _1 duplicates
    for name in outputs:
        with Image.open(root / "output" / "big" / name) as image:
            image.load()  # a truncated file would raise here
    saved = [line for line in read_report(report) if line["status"] == "saved"]
    assert sorted(line["source"] for line in saved) == [f"n{number:02}.png" for number in range(12)]


def slow_folder(folder: Path, count: int) -> Path:
    """Noise PNGs saved at level 9: slow enough to act on a batch mid-way."""
    folder.mkdir()
    rng = np.random.default_rng(2)
    for number in range(count):
        pixels = rng.integers(0, 255, (900, 900, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{number:02}.png", compress_level=0)
    return folder


async def stop_by(how: str, session: aiohttp.ClientSession, url: str, tab: Tab) -> None:
    if how == "cancel":  # the frontend's cancel button
        response = await session.post(f"{url}/api/interrupt", json={})
    elif how == "clear-queue":
        response = await session.post(f"{url}/api/queue", json={"clear": True})
    else:
        loader = next(e for e in tab.of_type("executed") if e["node"] == "1")
        batch = loader["output"]["batch_id"][0]
        response = await session.post(f"{url}/api/clientid_bridge/batch/{batch}/stop")
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("how", ["cancel", "clear-queue", "stop-route"])
async def test_stopping_a_batch(comfy: Comfy, tmp_path: Path, how: str, own_subfolder: str) -> None:
    folder = slow_folder(tmp_path / "slow", 10)
    graph = batch_graph(folder, compress_level=9, subfolder=own_subfolder)
    out = comfy.output / own_subfolder
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
        for _ in range(600):
            if len(list(out.glob("*.png"))) >= 2:
                break
            await asyncio.sleep(0.05)
        await stop_by(how, session, comfy.url, tab)
        await wait_idle(session, comfy.url)
        count = len(list(out.glob("*.png")))
        await asyncio.sleep(2)
        assert len(list(out.glob("*.png"))) == count < 10  # no orphaned iteration went on
        async with session.get(f"{comfy.url}/queue") as response:
            queue = await response.json()
        assert not queue["queue_running"] and not queue["queue_pending"]
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)


async def test_a_stop_with_saves_in_flight_keeps_the_report_true_and_run_again_saves_the_rest(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    """The saves handed to the worker before the Stop are finished and reported; the next Run
    saves the others, each once ("increment" would write c03_out_1.png for an image twice)."""
    folder = slow_folder(tmp_path / "inflight", 8)
    graph = batch_graph(folder, compress_level=9, subfolder=own_subfolder, existing="increment")
    out = comfy.output / own_subfolder
    async with aiohttp.ClientSession() as session:
        tab = await Tab(session, comfy.url, uuid.uuid4().hex).open()
        listener = asyncio.create_task(tab.listen())
        await post(session, comfy.url, {"prompt": graph, "client_id": tab.client_id})
        for _ in range(1200):
            if len(saver_images(tab)) >= 3:
                break
            await asyncio.sleep(0.01)
        await stop_by("stop-route", session, comfy.url, tab)
        await wait_idle(session, comfy.url)
        await asyncio.sleep(1)  # longer than the worker takes to finish what it was handed
        handed = {image["filename"] for image in saver_images(tab)}
        await tab.close()
        await asyncio.gather(listener, return_exceptions=True)
    [report] = [
        path
        for path in comfy.output.glob("batch_*.jsonl")
        if f'"{own_subfolder}/' in path.read_text()
    ]
    saved = {Path(line["output"]).name for line in read_report(report) if line["status"] == "saved"}
    assert handed <= saved  # what the tab was shown is on disk and in the report
    assert saved == {p.name for p in out.glob("*.png")} and len(saved) < 8
    tab, _ = await run(comfy, graph)
    assert sorted(p.name for p in out.glob("*.png")) == [f"c{n:02}_out.png" for n in range(8)]
    redone = [e["output"]["file"][0] for e in tab.of_type("executed") if e["node"] == "1"]
    assert sorted(redone) == sorted(
        f"c{n:02}.png" for n in range(8) if f"c{n:02}_out.png" not in saved
    )


async def test_two_tabs_starting_the_same_batch_process_each_image_once(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    """Two tabs (or Auto Queue) queue the same workflow: one loop, no image twice."""
    folder = slow_folder(tmp_path / "twice", 6)
    graph = batch_graph(folder, compress_level=1, subfolder=own_subfolder, existing="increment")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            await post(session, comfy.url, {"prompt": graph, "client_id": uuid.uuid4().hex})
        await wait_idle(session, comfy.url, timeout=120)
    outputs = sorted(p.name for p in (comfy.output / own_subfolder).glob("*.png"))
    assert outputs == [f"c{number:02}_out.png" for number in range(6)]  # no _1 copies


async def test_an_image_batch_is_saved_one_file_each(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    """B > 1 (here core RepeatImageBatch makes 2 of each): one file per image, `_0`, `_1`."""
    folder = tmp_path / "repeat"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / name)
    graph = batch_graph(folder, subfolder=own_subfolder)
    graph["5"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}}
    graph["2"]["inputs"]["images"] = ["5", 0]
    tab_a, _ = await run(comfy, graph)
    outputs = sorted(p.name for p in (comfy.output / own_subfolder).glob("*.png"))
    assert outputs == ["a_out_0.png", "a_out_1.png", "b_out_0.png", "b_out_1.png"]
    assert len(saver_images(tab_a)) == 4


async def test_run_again_after_new_files_processes_only_the_new_ones(
    comfy: Comfy, tmp_path: Path, own_subfolder: str
) -> None:
    """3 images run; 2 more dropped in (one sorts first); Run again: 5 outputs, none twice."""
    folder = tmp_path / "grows"
    folder.mkdir()
    for name in ("b1.png", "b2.png", "b3.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / name)
    # "increment" would write b1_out_1.png if any image were processed twice.
    graph = batch_graph(folder, subfolder=own_subfolder, existing="increment")
    out = comfy.output / own_subfolder
    await run(comfy, graph)
    assert sorted(p.name for p in out.glob("*.png")) == [f"b{n}_out.png" for n in (1, 2, 3)]

    for name in ("a0.png", "b4.png"):
        Image.new("RGB", (8, 8), (4, 5, 6)).save(folder / name)
    tab, _ = await run(comfy, graph)
    outputs = sorted(p.name for p in out.glob("*.png"))
    assert outputs == ["a0_out.png", *(f"b{n}_out.png" for n in (1, 2, 3, 4))]
    loaded = [e["output"]["file"][0] for e in tab.of_type("executed") if e["node"] == "1"]
    assert loaded == ["a0.png", "b4.png"]

    tab, _ = await run(comfy, graph)  # nothing new: already complete, nothing written
    [loader] = [e["output"] for e in tab.of_type("executed") if e["node"] == "1"]
    assert loader["state"] == ["complete"]
    assert sorted(p.name for p in out.glob("*.png")) == outputs
