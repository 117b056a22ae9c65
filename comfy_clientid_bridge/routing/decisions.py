"""The bridge's decisions: which tab a programmatic /prompt submission belongs to."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .lineage import Ledger, PromptRecord, changed_widgets, closest_ancestor
from .scope import SCOPE, PromptScope
from .self_connections import SelfConnection

logger = logging.getLogger(__name__)

# Keys of extra_data that may be carried from an origin to its re-queue. Everything else
# (api_key_comfy_org, auth_token_comfy_org, ...) is never copied, logged or reported.
CARRIED_KEY = "extra_pnginfo"


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # "rewrite" | "keep" | "untouched"
    reason: str
    client_id: str | None = None
    origin_prompt_id: str | None = None


def printable(text: str | None) -> str | None:
    """Ids as a log file can hold them: JSON allows lone surrogates, UTF-8 files do not."""
    return None if text is None else text.encode("ascii", "backslashreplace").decode("ascii")


def short(client_id: str | None) -> str | None:
    """Enough of a client id to tell tabs apart in logs, not enough to take one over."""
    return None if client_id is None else printable(client_id[:8])


@dataclass
class Bridge:
    """Decides and applies the origin tab of programmatic submissions.

    `executing` gives the prompt running now, `is_connected` says whether a client id has
    an open websocket, and `is_worker_thread` whether a thread name is ComfyUI's executor.
    """

    executing: Callable[[], PromptRecord | None]
    is_connected: Callable[[str], bool]
    is_worker_thread: Callable[[str], bool]
    ledger: Ledger = field(default_factory=Ledger)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("submissions", "programmatic", "rewrite", "keep", "untouched"), 0
        )
    )
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))

    def on_prompt(self, json_data: Any) -> Any:
        """ComfyUI on-prompt handler: returns the (possibly rewritten) request JSON."""
        self.counts["submissions"] += 1
        scope = SCOPE.get()  # the package's middleware opened it: whether node code made it
        if scope is None or scope.connection is None:
            if not _well_formed(json_data):
                return json_data
            if scope is None:  # no middleware to settle it later: remember it now
                self.ledger.add(_record(json_data))
            else:
                scope.submitted = json_data
            return json_data
        self.counts["programmatic"] += 1
        scope.decision, scope.record = self.decide(json_data, scope.connection)
        self.counts[scope.decision.action] += 1
        return json_data

    def settle(
        self, scope: PromptScope, status: int, prompt_id_of: Callable[[], str | None]
    ) -> None:
        """ComfyUI answered. Node code's request: its record gets the prompt id, or leaves
        the ledger if refused, and its decision is reported. A tab's accepted prompt is
        remembered; refused ones never are."""
        accepted = status == 200
        if scope.connection is not None:
            prompt_id = prompt_id_of() if accepted else None
            if scope.record is not None:
                if accepted:
                    scope.record.prompt_id = prompt_id
                else:
                    self.ledger.discard(scope.record)
            self.report(scope, prompt_id, status)
        elif accepted and scope.submitted is not None:
            # A tab's accepted prompt: kept as it is, compared (and its id read) only if a
            # re-queue from a thread ever needs its lineage.
            self.ledger.add(_record(scope.submitted, prompt_id_of))

    def decide(
        self, json_data: Any, connection: SelfConnection
    ) -> tuple[Decision, PromptRecord | None]:
        """Rewrites `json_data` in place when it belongs to a known tab; the ledger's record."""
        if not _well_formed(json_data):
            return Decision("untouched", "malformed body: left to ComfyUI"), None
        child = _record(json_data)
        if child.client_id is not None and self.is_connected(child.client_id):
            self.ledger.add(child)
            return Decision("keep", "names a connected client", child.client_id), child
        origin, how = self._origin(child, connection)
        self.ledger.add(child)  # after the search: a prompt is not its own origin
        if origin is None:
            return Decision("untouched", "no origin prompt found"), child
        child.step = changed_widgets(origin, child)
        if origin.client_id is None:
            reason = f"origin ({how}) has no client"
            return Decision("untouched", reason, None, origin.prompt_id), child
        why = "stale client_id" if child.client_id is not None else "no client_id"
        json_data["client_id"] = child.client_id = origin.client_id
        child.extra_pnginfo = _carry_workflow(json_data, origin)
        reason = f"{why}; origin by {how}"
        return Decision("rewrite", reason, origin.client_id, origin.prompt_id), child

    def _origin(
        self, child: PromptRecord, connection: SelfConnection
    ) -> tuple[PromptRecord | None, str]:
        origin = connection.origin
        if origin is not None:
            # A thread that node code started while that prompt ran: it acts for it, even
            # if another tab's prompt runs by now (routing/thread_origin.py).
            record = PromptRecord(
                client_id=origin.client_id,
                prompt_id=origin.prompt_id,
                graph=origin.graph,
                extra_pnginfo=origin.extra_pnginfo,
            )
            return record, "thread's origin"
        if self.is_worker_thread(connection.thread_name):
            executing = self.executing()
            if executing is not None:
                # Node code runs on the executor thread: the prompt running now made this call.
                return executing, "executing prompt"
        # A thread of unknown origin: by now another tab's prompt may be running, so follow
        # the graph the re-queue copied.
        return closest_ancestor(child, self.ledger.newest_first()), "graph lineage"

    def report(self, scope: PromptScope, prompt_id: str | None, status: int) -> None:
        """Logs and keeps one line per programmatic decision, once the response is known."""
        decision, connection = scope.decision, scope.connection
        if decision is None or connection is None:  # ComfyUI refused the body before us
            return
        entry = {
            "at": round(time.time(), 3),
            "action": decision.action,
            "reason": decision.reason,
            "prompt_id": printable(prompt_id),
            "status": status,
            "client": short(decision.client_id),
            "origin_prompt_id": printable(decision.origin_prompt_id),
            "thread": connection.thread_name,
        }
        self.recent.append(entry)
        level = logging.INFO if decision.action == "rewrite" else logging.DEBUG
        logger.log(
            level,
            "clientid_bridge: prompt %s %s -> client %s (origin %s; %s)",
            entry["prompt_id"],
            decision.action,
            entry["client"],
            entry["origin_prompt_id"],
            decision.reason,
        )

    def status(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "remembered_prompts": len(self.ledger),
            "recent": list(self.recent),
        }


def _well_formed(json_data: Any) -> bool:
    """The shapes ComfyUI itself accepts; anything else is ComfyUI's to answer."""
    if not isinstance(json_data, dict) or not isinstance(json_data.get("prompt"), dict):
        return False
    client_id = json_data.get("client_id")
    extra = json_data.get("extra_data", {})
    return (client_id is None or isinstance(client_id, str)) and isinstance(extra, dict)


def _record(
    json_data: dict[str, Any], prompt_id_of: Callable[[], str | None] | None = None
) -> PromptRecord:
    """A well-formed submission as the ledger keeps it (never its other extra_data keys)."""
    pnginfo = json_data.get("extra_data", {}).get(CARRIED_KEY)
    prompt_id = json_data.get("prompt_id")
    return PromptRecord(
        client_id=json_data.get("client_id"),
        graph=json_data["prompt"],
        extra_pnginfo=pnginfo if isinstance(pnginfo, Mapping) else None,
        prompt_id=prompt_id if isinstance(prompt_id, str) else None,
        prompt_id_of=prompt_id_of,
    )


def _carry_workflow(json_data: dict[str, Any], origin: PromptRecord) -> Mapping[str, Any] | None:
    """Gives the re-queue its origin's UI workflow, so saved images embed it."""
    extra = json_data.setdefault("extra_data", {})
    target = extra.get(CARRIED_KEY)
    source = origin.extra_pnginfo
    if source and "workflow" in source:
        if target is None:
            target = extra[CARRIED_KEY] = dict(source)
        elif isinstance(target, dict) and "workflow" not in target:
            target["workflow"] = source["workflow"]
    return target if isinstance(target, Mapping) else None
