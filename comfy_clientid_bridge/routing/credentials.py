"""Credentials of accepted /prompt submissions, carried to the re-queues their prompts make.

Auth packs (liusida/ComfyUI-Login, fofr/comfyui-basic-auth) refuse every request without
their cookie, token or Basic header, loopback included, so a node's re-queue over HTTP is
answered 401 and its loop stops after one image. Node code runs in the server's own process
and is trusted with everything the server can read already; a request proven to come from
this process (its TCP peer is a socket of ours, see self_connections) and made on the
executor thread acts for the prompt running there; made on a thread that node code started
for a prompt, it acts for that prompt (thread_origin). It is given what that prompt's own
submission carried, and nothing is given to anyone else.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from .middleware import DEFAULT_PROMPT_PATHS, PartExit, _prompt_id, prompt_middleware
from .scope import PromptScope
from .self_connections import SelfConnection, SelfConnections

# The query parameter ComfyUI-Login accepts instead of a Bearer header (password.py).
TOKEN_PARAM = "token"
# Long enough for a prompt to wait its turn in a busy shared queue; a chain renews it with
# every accepted re-queue, and finished prompts leave earlier (see CredentialStore).
DEFAULT_TTL = 12 * 3600.0
MAX_RECORDS = 512


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """What a request authenticated with: its Authorization and Cookie headers as sent
    (which cookie is the session depends on the pack, and these went to this very server
    already), and its `token` query parameter. Never printed: see __repr__."""

    authorization: str | None = None
    cookie: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<hidden>)"

    @classmethod
    def of(cls, request: web.BaseRequest) -> Credentials | None:
        """The request's own credentials; None when it carries none."""
        authorization = request.headers.get("Authorization")
        cookies = request.headers.getall("Cookie", [])
        # Parsing the query costs more than the rest: only when there is one.
        token = request.query.get(TOKEN_PARAM) if request.query_string else None
        if authorization is None and not cookies and token is None:
            return None
        return cls(authorization, "; ".join(cookies) if cookies else None, token)

    def given_to(self, request: web.Request) -> web.Request:
        """A copy of `request` carrying these credentials; its body is not read yet, so
        every middleware and the handler after us read it from the copy as usual."""
        headers = CIMultiDict(request.headers)
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        if self.cookie is not None:
            headers["Cookie"] = self.cookie
        url = request.rel_url
        if self.token is not None:
            url = url.update_query({TOKEN_PARAM: self.token})
        return request.clone(headers=headers, rel_url=url)


class CredentialStore:
    """Credentials by prompt id, in memory only, few and short-lived.

    A record leaves `ttl` seconds after its prompt was accepted, when more than
    `max_records` are held (oldest first), or once its prompt is neither queued nor running
    (`is_live`): then the chain has ended. Finished prompts are swept oldest first whenever
    a record is added, so each addition asks `is_live` about as often as it adds.
    """

    def __init__(
        self,
        *,
        is_live: Callable[[str], bool],
        ttl: float = DEFAULT_TTL,
        max_records: int = MAX_RECORDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records!r}")
        self._is_live, self._ttl, self._max, self._clock = is_live, ttl, max_records, clock
        self._records: OrderedDict[str, tuple[float, Credentials]] = OrderedDict()

    def remember(self, prompt_id: str, credentials: Credentials) -> None:
        self._forget_ended()
        self._records.pop(prompt_id, None)
        self._records[prompt_id] = (self._clock() + self._ttl, credentials)
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    def of_prompt(self, prompt_id: str) -> Credentials | None:
        record = self._records.get(prompt_id)
        if record is None:
            return None
        if record[0] <= self._clock():
            del self._records[prompt_id]
            return None
        return record[1]

    def __len__(self) -> int:
        return len(self._records)

    def _forget_ended(self) -> None:
        """Drops records from the oldest until one whose prompt is live and in time."""
        now = self._clock()
        while self._records:
            prompt_id, (until, _) = next(iter(self._records.items()))
            if until > now and self._is_live(prompt_id):
                return
            del self._records[prompt_id]


class CredentialsPart:
    """On POST /prompt: a request from node code that carries no credentials gets those of
    the prompt it acts for (the one running on the executor; a thread's origin), if that
    prompt's submission carried any. Every accepted submission's credentials (as the
    handler saw them) are remembered under its prompt id, so a chain of re-queues keeps
    them. Its middleware must run outside auth packs' (see `place_outermost`)."""

    def __init__(
        self,
        *,
        store: CredentialStore,
        running_prompt_id: Callable[[], str | None],
        is_worker_thread: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.running_prompt_id = running_prompt_id
        self.is_worker_thread = is_worker_thread

    def enter(
        self, request: web.Request, scope: PromptScope
    ) -> tuple[web.Request, PartExit | None]:
        credentials = Credentials.of(request)
        if credentials is None:
            credentials = self._origin_credentials(scope.connection)
            if credentials is None:
                return request, None
            request = credentials.given_to(request)

        def remember(_scope: PromptScope, response: web.StreamResponse | None) -> None:
            # Only an accepted prompt is answered with its id (ComfyUI's post_prompt).
            prompt_id = None if response is None else _prompt_id(response)
            if prompt_id is not None:
                self.store.remember(prompt_id, credentials)

        return request, remember

    def _origin_credentials(self, connection: SelfConnection | None) -> Credentials | None:
        if connection is None:
            return None  # a browser, a script, a remote client
        if connection.origin is not None:  # a thread that node code started for a prompt
            return self.store.of_prompt(connection.origin.prompt_id)
        if not self.is_worker_thread(connection.thread_name):
            return None  # a thread that acts for no prompt
        origin = self.running_prompt_id()
        return None if origin is None else self.store.of_prompt(origin)


def credentials_middleware(
    *,
    store: CredentialStore,
    connections: SelfConnections,
    running_prompt_id: Callable[[], str | None],
    is_worker_thread: Callable[[str], bool],
    prompt_paths: Iterable[str] = DEFAULT_PROMPT_PATHS,
) -> Middleware:
    """The carrier's part alone in the package's middleware."""
    part = CredentialsPart(
        store=store, running_prompt_id=running_prompt_id, is_worker_thread=is_worker_thread
    )
    return prompt_middleware(parts=[part], connections=connections, prompt_paths=prompt_paths)


def place_outermost(app: web.Application, middleware: Middleware) -> None:
    """Makes `middleware` the first of `app.middlewares`, now and once more at start-up.

    aiohttp runs `app.middlewares` in list order, the first outermost (aiohttp 3.x
    Application._prepare_middleware wraps them in reverse). Packs add theirs at import, in
    the order ComfyUI imports them: ComfyUI-Login appends, comfyui-basic-auth inserts at 0.
    AppRunner.setup runs the on_startup callbacks before it freezes the app (aiohttp 3.x
    web_runner.AppRunner._make_server: startup(), then freeze()), after every custom node
    was imported, so moving ours to the front there puts it outside all of them. Only an
    on_startup callback added after ours that inserts at 0 could still come before it.
    """
    app.middlewares.insert(0, middleware)

    async def move_to_front(app: web.Application) -> None:
        if app.middlewares[0] is not middleware:
            app.middlewares.remove(middleware)
            app.middlewares.insert(0, middleware)

    app.on_startup.append(move_to_front)
