"""Which earlier prompt a re-queue from a timer or thread descends from."""

from __future__ import annotations

import pytest
from fake_comfy import graph

from comfy_clientid_bridge.routing.lineage import (
    Ledger,
    PromptRecord,
    changed_widgets,
    closest_ancestor,
)


def record(client: str | None, index: int, prefix: str = "p", mode: str = "none") -> PromptRecord:
    return PromptRecord(client_id=client, graph=graph(index, prefix, mode))


def chain(client: str, indices: range, prefix: str = "p", mode: str = "none") -> list[PromptRecord]:
    """A run as the bridge records it: each iteration knows the widgets its parent changed."""
    records = [record(client, indices[0], prefix, mode)]
    for index in indices[1:]:
        child = record(client, index, prefix, mode)
        child.step = changed_widgets(records[-1], child)
        records.append(child)
    return records


# (candidates oldest first, the child, the client the child must be given)
SCENARIOS = [
    ([*chain("A", range(0, 2))], record(None, 2), "A"),
    # A finished run with the same settings loses to the run that just started.
    (
        [*chain("OLD", range(0, 4), mode="timer"), record("NEW", 0, mode="timer")],
        record(None, 1, mode="timer"),
        "NEW",
    ),
    # An older run's iteration holds the child's index; it differs in another widget.
    (
        [*chain("U", range(0, 4), mode="uuid4"), *chain("T", range(0, 3), mode="timer")],
        record(None, 3, mode="timer"),
        "T",
    ),
    # Two tabs running the same workflow at once, on different prefixes.
    ([record("A", 0, "a"), record("B", 0, "b")], record(None, 1, "a"), "A"),
    ([*chain("A", range(0, 3), "a"), *chain("B", range(0, 3), "b")], record(None, 3, "a"), "A"),
    # Another workflow shape never qualifies.
    ([record("A", 0)], PromptRecord(client_id=None, graph={"9": {"class_type": "X"}}), None),
    ([], record(None, 1), None),
]
IDS = [
    "single-run",
    "finished-run-same-settings",
    "old-run-aligned-index",
    "concurrent-tabs-first-step",
    "concurrent-tabs-later-step",
    "other-shape",
    "nothing-remembered",
]


@pytest.mark.parametrize(("remembered", "child", "expected"), SCENARIOS, ids=IDS)
def test_closest_ancestor(
    remembered: list[PromptRecord], child: PromptRecord, expected: str | None
) -> None:
    ledger = Ledger()
    for entry in remembered:
        ledger.add(entry)
    origin = closest_ancestor(child, ledger.newest_first())
    assert (origin.client_id if origin else None) == expected


def test_ledger_is_bounded_and_newest_first() -> None:
    ledger = Ledger(size=3)
    for index in range(5):
        ledger.add(record("A", index))
    assert [r.widgets[("3", "index")] for r in ledger.newest_first()] == [4, 3, 2]


@pytest.mark.parametrize("size", [0, -1])
def test_ledger_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="ledger size"):
        Ledger(size=size)


def test_changed_widgets_ignores_links_and_counts_added_keys() -> None:
    grown = graph(1, "p")
    grown["2"]["inputs"]["extra"] = 1
    parent, child = record("A", 0), PromptRecord(client_id="A", graph=grown)
    assert changed_widgets(parent, child) == {("1", "color"), ("3", "index"), ("2", "extra")}


def test_a_discarded_record_is_no_origin() -> None:
    """ComfyUI refused it (400): it never ran, so nothing descends from it."""
    ledger, refused = Ledger(), record("B", 0, "b")
    ledger.add(record("A", 0, "a"))
    ledger.add(refused)
    ledger.discard(refused)
    ledger.discard(refused)  # twice is harmless
    origin = closest_ancestor(record(None, 1, "b"), ledger.newest_first())
    assert origin is not None and origin.client_id == "A"


def test_long_values_are_kept_as_hashes_not_copies() -> None:
    text = "x" * 100_000
    kept = PromptRecord(client_id=None, graph={"1": {"class_type": "T", "inputs": {"text": text}}})
    assert kept.widgets[("1", "text")] == f"#{hash(text)}"
    assert not hasattr(kept, "graph")
