"""What one POST /prompt carries through the package's middleware, for its parts."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .answer_first import Wake
    from .decisions import Decision
    from .lineage import PromptRecord
    from .self_connections import SelfConnection


@dataclass(slots=True)
class PromptScope:
    """One /prompt request in the package's middleware: opened before ComfyUI's handler,
    closed once it has answered. The parts' hooks (on-prompt handlers, the queue's put) run
    in the request's own task and note here what the others read:

    - `connection`: the socket of this process that made the request (node code's), None
      for a browser, a script or a remote client;
    - `refusal`: the guard's 400 answer, when it refuses the body (routing/guard.py);
    - `decision`, `record`: the bridge's decision on node code's request and the ledger's
      record of it; `submitted`: a tab's well-formed body, remembered if accepted
      (routing/decisions.py);
    - `wake`: the executor's wake-up that the queue's put made, held until the answer is
      written (routing/answer_first.py).

    One object and one context variable for all parts: the request path of every prompt
    pays for them, so there is one of each, not one per part.
    """

    connection: SelfConnection | None = None
    refusal: dict[str, Any] | None = None
    decision: Decision | None = None
    record: PromptRecord | None = None
    submitted: dict[str, Any] | None = None
    wake: Wake | None = None


SCOPE: ContextVar[PromptScope | None] = ContextVar("clientid_bridge_prompt_scope", default=None)
