"""Which earlier prompt a re-queued graph descends from."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Scalar = str | int | float | bool | None
WidgetKey = tuple[str, str]  # (node id, input name)


# Longer widget values (prompt texts, inline images) are kept as a hash: the ledger holds
# what lineage compares, never whole request bodies.
MAX_KEPT_VALUE = 256


class PromptRecord:
    """What the bridge remembers of one prompt: its tab, workflow, graph shape and loop step.

    The comparable parts (shape, widgets) are worked out on first use, then the graph is let
    go: a tab's submission costs the request path nothing, and only lineage pays.
    """

    __slots__ = (
        "client_id",
        "extra_pnginfo",
        "step",
        "_prompt_id",
        "_prompt_id_of",
        "_graph",
        "_shape",
        "_widgets",
    )

    def __init__(
        self,
        *,
        client_id: str | None,
        graph: Mapping[str, Any],
        extra_pnginfo: Mapping[str, Any] | None = None,
        prompt_id: str | None = None,
        prompt_id_of: Callable[[], str | None] | None = None,
        step: frozenset[WidgetKey] | None = None,
    ) -> None:
        self.client_id = client_id
        self.extra_pnginfo = extra_pnginfo
        # The widgets its parent changed to make it; None when it starts a chain.
        self.step = step
        self._prompt_id, self._prompt_id_of = prompt_id, prompt_id_of
        self._graph: Mapping[str, Any] | None = graph
        self._shape: frozenset[tuple[str, str]] | None = None
        self._widgets: dict[WidgetKey, Scalar] | None = None

    @property
    def prompt_id(self) -> str | None:
        if self._prompt_id is None and self._prompt_id_of is not None:
            self._prompt_id, self._prompt_id_of = self._prompt_id_of(), None
        return self._prompt_id

    @prompt_id.setter
    def prompt_id(self, value: str | None) -> None:
        self._prompt_id, self._prompt_id_of = value, None

    @property
    def shape(self) -> frozenset[tuple[str, str]]:
        """The graph's (node id, class_type) pairs: what a re-queue copies unchanged."""
        if self._shape is None:
            self._shape, self._widgets = self._compare_parts()
        return self._shape

    @property
    def widgets(self) -> dict[WidgetKey, Scalar]:
        if self._widgets is None:
            self._shape, self._widgets = self._compare_parts()
        return self._widgets

    def _compare_parts(self) -> tuple[frozenset[tuple[str, str]], dict[WidgetKey, Scalar]]:
        graph, self._graph = self._graph or {}, None  # the request body is not kept
        shape = frozenset(
            (str(node_id), str(node.get("class_type")))
            for node_id, node in graph.items()
            if isinstance(node, Mapping)
        )
        return shape, scalar_widgets(graph)


def scalar_widgets(graph: Mapping[str, Any]) -> dict[WidgetKey, Scalar]:
    """Widget values; links and nested values say nothing about lineage."""
    found: dict[WidgetKey, Scalar] = {}
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if isinstance(value, str) and len(value) > MAX_KEPT_VALUE:
                found[(str(node_id), str(name))] = f"#{hash(value)}"
            elif value is None or isinstance(value, str | int | float | bool):
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

    def discard(self, record: PromptRecord) -> None:
        """Forgets a submission ComfyUI refused: it never ran, so it is nobody's origin."""
        try:
            self._records.remove(record)
        except ValueError:  # already pushed out by newer ones
            pass

    def newest_first(self) -> list[PromptRecord]:
        return list(reversed(self._records))

    def __len__(self) -> int:
        return len(self._records)
