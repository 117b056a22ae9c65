"""Which earlier prompt a re-queued graph descends from."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

Scalar = str | int | float | bool | None
WidgetKey = tuple[str, str]  # (node id, input name)


class PromptRecord:
    """What the bridge remembers of one prompt: its tab, workflow, graph and loop step."""

    __slots__ = ("client_id", "prompt_id", "graph", "extra_pnginfo", "step", "_shape", "_widgets")

    def __init__(
        self,
        *,
        client_id: str | None,
        graph: Mapping[str, Any],
        extra_pnginfo: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        step: frozenset[WidgetKey] | None = None,
    ) -> None:
        self.client_id = client_id
        self.prompt_id = prompt_id
        self.graph = graph
        self.extra_pnginfo = extra_pnginfo
        # The widgets its parent changed to make it; None when it starts a chain.
        self.step = step
        self._shape: frozenset[tuple[str, str]] | None = None
        self._widgets: dict[WidgetKey, Scalar] | None = None

    @property
    def shape(self) -> frozenset[tuple[str, str]]:
        """The graph's (node id, class_type) pairs: what a re-queue copies unchanged."""
        if self._shape is None:
            self._shape = frozenset(
                (str(node_id), str(node.get("class_type")))
                for node_id, node in self.graph.items()
                if isinstance(node, Mapping)
            )
        return self._shape

    @property
    def widgets(self) -> dict[WidgetKey, Scalar]:
        """Widget values; links and nested values say nothing about lineage."""
        if self._widgets is None:
            self._widgets = scalar_widgets(self.graph)
        return self._widgets


def scalar_widgets(graph: Mapping[str, Any]) -> dict[WidgetKey, Scalar]:
    found: dict[WidgetKey, Scalar] = {}
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if value is None or isinstance(value, str | int | float | bool):
                found[(str(node_id), str(name))] = value
    return found


def changed_widgets(parent: PromptRecord, child: PromptRecord) -> frozenset[WidgetKey]:
    a, b = parent.widgets, child.widgets
    missing = object()
    return frozenset(
        key for key in a.keys() | b.keys() if a.get(key, missing) != b.get(key, missing)
    )


def closest_ancestor(
    child: PromptRecord, candidates: Iterable[PromptRecord]
) -> PromptRecord | None:
    """The candidate the re-queued `child` graph was most likely copied from.

    Candidates come newest first, and only those of the same graph shape (node ids and
    class types) qualify. Per client only the newest counts: a loop re-queues from its
    latest iteration. A candidate that already has a known loop step must differ from the
    child in exactly those widgets (iteration k of another run may hold the same index
    as the child, but differs in something else); then the fewest changed widgets wins,
    then the newest (a finished run with the same settings loses to the run just started).
    """
    seen_clients: set[str | None] = set()
    best: PromptRecord | None = None
    best_score = (-1, 0)
    for candidate in candidates:
        if candidate.client_id in seen_clients or candidate.shape != child.shape:
            continue
        seen_clients.add(candidate.client_id)
        changed = changed_widgets(candidate, child)
        consistent = candidate.step is None or candidate.step == changed
        score = (int(consistent), -len(changed))
        if score > best_score:
            best, best_score = candidate, score
    return best


class Ledger:
    """The most recent prompts submitted, newest last, bounded."""

    def __init__(self, *, size: int = 128) -> None:
        if size < 1:
            raise ValueError(f"ledger size must be >= 1, got {size!r}")
        self._records: deque[PromptRecord] = deque(maxlen=size)

    def add(self, record: PromptRecord) -> None:
        self._records.append(record)

    def newest_first(self) -> list[PromptRecord]:
        return list(reversed(self._records))

    def __len__(self) -> int:
        return len(self._records)
