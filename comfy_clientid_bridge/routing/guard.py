"""Refuses the /prompt bodies ComfyUI would accept and then die of: 400, in its own shape.

Core's post_prompt (server.py, v0.3.64 and 0.8.0) queues a prompt once its graph validates,
whatever the types of the other fields. Some types then stop the server for everyone: a
client_id that is not hashable ends the event loop's publish task (`sid in self.sockets`)
and with it the process; on releases before 0.3.69, an extra_data that is not an object
ends the executor thread (`"client_id" in extra_data`, or a later `.pop` on it), and the
queue never moves again. `refusal()` names exactly those bodies (tests/test_guard.py has
the table; tests/integration/test_fuzz_prompt.py checks it against real servers).

How a refusal happens without a second JSON parse and without changing any other answer:
our on-prompt handler (core hands it the parsed body) notes the refusal in the scope the
package's middleware opened for the request (routing/scope.py), and hands core the body
defused (no client_id, an empty extra_data, no prompt_id of its own). Core then validates
the graph as always: an invalid graph gets core's own 400, byte for byte, as the defused
fields play no part in it. A valid one reaches `prompt_queue.put`, which we wrap: for a
request with a noted refusal it raises `Refused` instead of queueing, and the package's
middleware (routing/middleware.py, where the guard is one part) answers our 400. Should
the wrapper be missing, the defused body is what runs, and it harms nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from .middleware import DEFAULT_PROMPT_PATHS, Answered, prompt_middleware
from .scope import SCOPE

logger = logging.getLogger(__name__)

# Its own switch: the bridge's (COMFY_CLIENTID_BRIDGE=0) turns routing off, not this.
GUARD_SWITCH = "COMFY_CLIENTID_BRIDGE_GUARD"

JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def error_answer(field: str, expected: str, got: Any) -> dict[str, Any]:
    """ComfyUI's own error shape (server.py post_prompt's no_prompt answer), naming the field."""
    return {
        "error": {
            "type": "invalid_prompt",
            "message": f"Invalid {field}: expected {expected}",
            "details": f"{field} must be {expected}, got {json_type(got)}",
            "extra_info": {"field": field, "expected": expected, "got": json_type(got)},
        },
        "node_errors": {},
    }


def _core_answers_first(body: Any) -> bool:
    """Whether core answers this body itself before anything is queued: not an object,
    no graph, or a `number` that float() refuses (server.py post_prompt, both releases)."""
    if not isinstance(body, dict) or "prompt" not in body:
        return True
    if "number" not in body:
        return False
    try:
        float(body["number"])
    except (TypeError, ValueError, OverflowError):
        return True
    return False


# What core's executor and history code look up in a queued extra_data (execution.py
# execute_async and PromptQueue.task_done, v0.3.64): a hit on a string or a list fails.
LOOKED_UP_KEYS = ("client_id", "auth_token_comfy_org", "api_key_comfy_org")


def _kills_the_executor(extra_data: Any) -> bool:
    """Whether a non-object extra_data, queued as it is, ends the executor thread (v0.3.64):
    `key in extra_data` raises on what is not a container, and a key found in a string or
    an array is then read or popped as if from a dict. Other strings and arrays run (their
    nodes' hidden inputs fail inside the node, which core reports as a node error)."""
    if not isinstance(extra_data, (str, list)):
        return True
    return any(key in extra_data for key in LOOKED_UP_KEYS)


def _number(body: dict[str, Any], next_number: float) -> float:
    """The number core gives the body's queue item (post_prompt: "number", else the
    server's counter, negated for a truthy "front")."""
    if "number" in body:
        return float(body["number"])
    return -next_number if body.get("front") else next_number


def _unorderable(item: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    try:
        item < other  # noqa: B015 - what heapq does with two queue items
    except TypeError:
        return True
    return False


def queue_tie(
    body: Any,
    *,
    waiting: Iterable[tuple[Any, ...]],
    next_number: float,
    extra_data_stamped: bool,
) -> dict[str, Any] | None:
    """Our 400 answer for a body whose queue item heapq could not order against one that
    is waiting: same number and prompt_id, then dicts that differ (execution.py
    PromptQueue.put/get). The failing comparison leaves the item in the heap and ends the
    executor thread at its next get, so the queue stalls for good.

    Only a body that chooses its prompt_id can tie (core's own are uuid4). Where core stamps
    create_time into extra_data, two items with one key always differ there.
    """
    if _core_answers_first(body) or "prompt_id" not in body:
        return None
    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict) and ("client_id" in body or extra_data_stamped):
        return None  # core's own 500 when it writes into it: never queued
    key = (_number(body, next_number), str(body["prompt_id"]))
    if "client_id" in body:
        extra_data = {**extra_data, "client_id": body["client_id"]}
    for item in waiting:
        if item[:2] != key:
            continue
        mine = (*key, body["prompt"], extra_data, *item[4:])
        if extra_data_stamped or _unorderable(mine, item) or _unorderable(item, mine):
            return error_answer(
                "prompt_id", "an id that no waiting prompt with the same number has", key[1]
            )
    return None


def refusal(body: Any, *, extra_data_stamped: bool) -> dict[str, Any] | None:
    """Our 400 answer for a body core would queue and then die of; None for any other body.

    `extra_data_stamped`: core writes into every accepted extra_data before queueing it
    (`create_time`, ComfyUI 0.3.69 and later), so one that is not an object is core's own
    500 there, never queued.
    """
    if _core_answers_first(body):
        return None
    if "extra_data" in body and not isinstance(body["extra_data"], dict):
        extra_data = body["extra_data"]
        if "client_id" in body or extra_data_stamped or not _kills_the_executor(extra_data):
            return None  # core's own 500 (it writes into it) or a prompt that runs
        return error_answer("extra_data", "an object", extra_data)
    where = body if "client_id" in body else body.get("extra_data", {})
    client_id = where.get("client_id")
    if isinstance(client_id, (dict, list)):
        field = "client_id" if where is body else "extra_data.client_id"
        return error_answer(field, "a string", client_id)
    return None


class Refused(Answered):
    """Raised by the queue's put for a request whose body the guard refused."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__(answer["error"]["details"])
        self.answer = answer

    def response(self) -> web.StreamResponse:
        logger.warning("clientid_bridge: refused a prompt: %s", self)
        return web.json_response(self.answer, status=400)


def refusing_put(put: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """PromptQueue.put that raises `Refused` instead of queueing a refused request's item;
    puts from anywhere else (node code, other packs) pass as they are."""

    def guarded_put(item: Any) -> Any:
        scope = SCOPE.get()
        if scope is not None and scope.refusal is not None:
            raise Refused(scope.refusal)
        return put(item)

    return guarded_put


@dataclass(frozen=True)
class QueueView:
    """What the tie check reads of core's queue (internals.waiting_items and
    internals.next_prompt_number)."""

    waiting: Callable[[], Iterable[tuple[Any, ...]]]
    next_number: Callable[[], float]


def guard_on_prompt(
    *, extra_data_stamped: bool, queue: QueueView | None = None
) -> Callable[[Any], Any]:
    """The on-prompt handler: a refused body is noted in the request's scope and goes on
    defused (core validates it; the put refuses it). Outside the package's middleware (no
    scope: nothing would answer the refusal) every body passes as it is."""

    def on_prompt(json_data: Any) -> Any:
        answer = refusal(json_data, extra_data_stamped=extra_data_stamped)
        if answer is None and queue is not None and isinstance(json_data, dict):
            if "prompt_id" in json_data:  # the only bodies that can tie (see queue_tie)
                answer = queue_tie(
                    json_data,
                    waiting=queue.waiting(),
                    next_number=queue.next_number(),
                    extra_data_stamped=extra_data_stamped,
                )
        scope = SCOPE.get()
        if answer is None or scope is None:
            return json_data
        scope.refusal = answer
        defused = {k: v for k, v in json_data.items() if k != "prompt_id"}
        return {**defused, "client_id": None, "extra_data": {}}

    return on_prompt


def request_guard_middleware(*, paths: Iterable[str] = DEFAULT_PROMPT_PATHS) -> Middleware:
    """The package's middleware with the guard alone (it needs no part of its own: the
    scope and the answer to `Refused` are the middleware's): a refused body gets 400 in
    ComfyUI's error shape; all else passes untouched."""
    return prompt_middleware(parts=[], connections=None, prompt_paths=paths)


def install_request_guard(
    app: web.Application,
    *,
    add_on_prompt_handler: Callable[[Callable[[Any], Any]], Any],
    extra_data_stamped: bool,
    queue: QueueView,
    wrap_put: Callable[[Callable[[Callable[[Any], Any]], Callable[[Any], Any]]], None],
    switched_on: bool,
) -> bool:
    """Installs the put wrapper now and the on-prompt handler at start-up, after every
    pack's (so it judges the body core will use); whether it did (False: switched off).
    The package's middleware answers its refusals."""
    if not switched_on:
        logger.info("clientid_bridge: request guard off (%s)", GUARD_SWITCH)
        return False
    handler = guard_on_prompt(extra_data_stamped=extra_data_stamped, queue=queue)

    async def add_handler_last(_: web.Application) -> None:
        add_on_prompt_handler(handler)

    wrap_put(refusing_put)
    app.on_startup.append(add_handler_last)
    return True
