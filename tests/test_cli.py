"""The terminal runner's pure parts: preparing the workflow, reading the websocket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfy_clientid_bridge.tools.cli import LOADER, NEXT, BatchError, Watch, prepare

SAVER = "ClientIdBridge_BatchImageSaver"  # events of other nodes change nothing

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "batch_folder.api.json"


def example() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text()))


def test_prepare_points_the_loader_at_the_folder(tmp_path: Path) -> None:
    graph, loader = prepare(example(), tmp_path)
    assert loader == "1"
    assert graph["1"]["inputs"]["folder"] == str(tmp_path.resolve())
    assert graph["1"]["inputs"]["cursor"] == -1


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ({"nodes": [], "links": []}, "UI workflow"),
        ({"1": {"class_type": "SaveImage", "inputs": {}}}, "exactly one"),
        (
            {"1": {"class_type": LOADER, "inputs": {}}, "2": {"class_type": LOADER, "inputs": {}}},
            "has 2",
        ),
    ],
    ids=["ui-format", "no-loader", "two-loaders"],
)
def test_prepare_refuses_what_it_cannot_run(workflow: dict[str, Any], message: str) -> None:
    with pytest.raises(BatchError, match=message):
        prepare(workflow, Path("."))


def executed(node: str, **output: list[Any]) -> dict[str, Any]:
    return {"type": "executed", "data": {"node": node, "output": output}}


GRAPH = {"1": {"class_type": LOADER}, "2": {"class_type": SAVER}, "4": {"class_type": NEXT}}

# (events, finished, error, line starts with)
CASES = [
    ([], None, None, "waiting"),
    (
        [
            executed(
                "1",
                badge=["3/10 · ETA 0:07"],
                batch_id=["b"],
                text=["3/10 (30%) · x.png · ETA 0:07"],
                progress=[3, 10],
                state=["running"],
                file=["x.png"],
            )
        ],
        None,
        None,
        "[#########.....................",
    ),
    (
        [executed("4", badge=["done: 10 saved, 0 skipped"], state=["done"])],
        "done: 10 saved, 0 skipped",
        None,
        "done",
    ),
    ([executed("4", badge=["stopped: 4/10"], state=["stopped"])], "stopped: 4/10", None, "stopped"),
    (
        [executed("1", badge=["already complete: ..."], state=["complete"])],
        "already complete: ...",
        None,
        "already",
    ),
    (
        [{"type": "execution_error", "data": {"node_type": "X", "exception_message": "boom "}}],
        None,
        "X: boom",
        "waiting",
    ),
    ([executed("9", badge=["9/9 · ETA 0:00"])], None, None, "waiting"),
    (
        [executed("1", badge=["image 3 was already processed"], state=["duplicate"])],
        None,
        None,
        "image 3",
    ),
]


@pytest.mark.parametrize(
    ("events", "finished", "error", "line"),
    CASES,
    ids=["nothing", "progress", "done", "stopped", "halted", "error", "foreign-node", "duplicate"],
)
def test_watch(
    events: list[dict[str, Any]], finished: str | None, error: str | None, line: str
) -> None:
    watch = Watch(GRAPH, "1")
    for event in events:
        watch.on_event(event)
    assert (watch.finished, watch.error) == (finished, error)
    assert watch.line().startswith(line)


@pytest.mark.parametrize(
    ("state", "succeeded"),
    [("done", True), ("complete", True), ("stopped", False), ("busy", False), ("unknown", False)],
)
def test_only_a_finished_batch_succeeds(state: str, succeeded: bool) -> None:
    watch = Watch(GRAPH, "1")
    watch.on_event(executed("1", badge=["x"], state=[state]))
    assert watch.succeeded is succeeded and watch.finished == "x"
