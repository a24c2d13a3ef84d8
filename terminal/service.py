"""``sscard serve``: the local service hospital software talks to (docs/service.md).

Starlette on uvicorn, on loopback only. Two doors, one card session:

- **the reader convention** (:mod:`terminal.convention`), for software written against the vendors'
  reader libraries: ``POST /api/convention`` and WebSocket ``/ws`` take ``{"function":
  "iReadCardBas", "iType": 3}`` and answer ``{"function", "success", "code", "pOutInfo"}``;
- **our JSON API**, for new code: ``GET /api/readers``, ``POST /api/read``, ``POST /api/auth``,
  ``POST /api/verify-pin``; errors as ``{"error": {"code", "exit_code", "message"}}``; and card
  events (``{"subscribe": "events"}`` on ``/ws``: inserted and removed, per PC/SC reader).

Safe against web pages that are not the hospital's (cross-site WebSocket hijacking is the attack the
vendors' services leave open): every HTTP request and WebSocket upgrade is refused (403) unless its
``Host`` is this loopback address (DNS rebinding), and either its ``Origin`` is on the allow-list
(exact scheme://host:port; no wildcard, CORS answered for that origin only) or, with no ``Origin`` (a
non-browser client), it carries the per-install token (``Authorization: Bearer``; a 0600 file,
``sscard serve --print-token``). Bodies and WebSocket messages are bounded; a reader serves one card
session at a time (a second request waits, then is told the reader is busy: never interleaved
APDUs); PINs in requests are never logged.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from sscard.apdu.errors import SSCardError
from sscard.drivers.connection import CARD_TIMEOUT_S, forgive, give_up
from sscard.drivers.errors import CardUnresponsiveError, ReaderError
from sscard.message.envelope import CST
from sscard.terminal import hsmread
from sscard.terminal.card import Identity, SocialSecurityCard
from sscard.terminal.cardsecurity import check_genuine, unlocker
from sscard.terminal.cli.exits import INTERNAL, USAGE, error_object
from sscard.terminal.config import TerminalConfig
from sscard.terminal.convention import (
    AUTO_CONTACT_FIRST,
    AUTO_CONTACTLESS_FIRST,
    CONTACT,
    CONTACTLESS,
    READER,
    STEP1,
    STEP2,
    ConventionError,
    Request as Call,
    card_bas,
    code_of,
    reply,
)
from sscard.terminal.errors import ConfigError
from sscard.terminal.hsmread import HeldRead, step1, step2
from sscard.terminal.keystore import KeyStore
from sscard.terminal.private import read_private_file
from sscard.terminal.readers import SIM_PREFIX, atr_text, open_connection

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the largest request body or WebSocket message taken (bytes)
MAX_BODY = 64 * 1024
#: hosts the service listens on: this computer only
LOOPBACK = ("127.0.0.1", "::1")
DEFAULT_PORT = 8940
#: the counter page's files (package data)
STATIC = Path(__file__).resolve().parent / "static"
#: what anyone on this computer may fetch without an origin or the token: the page's own files
PUBLIC = ("/", "/static/")
#: seconds a request waits for a reader busy with another one
BUSY_WAIT = 10.0
#: how often a request's card wait is looked at
CARD_POLL_S = 0.1
#: seconds a request's body may take to arrive once its headers have: a client that sends its
#: headers and then dribbles or stops would hold a connection (on loopback 64 KiB take well under 1 ms)
BODY_TIME_S = 10.0


class ReaderBusyError(ReaderError):
    """The reader is busy with another request."""


class SlowRequestError(ConventionError):
    """The request's body did not arrive in time."""


class ServiceError(ConfigError):
    """The service cannot start as asked (an address not on loopback, a bad origin, the token file)."""


# --- the token -------------------------------------------------------------------------------------

def default_token_path() -> Path:
    """``$XDG_CONFIG_HOME/sscard/service.token`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "sscard" / "service.token"


def load_token(path: Path) -> str:
    """The per-install token at ``path``, made (32 random bytes, URL-safe text) when there is none: the
    file 0600, its folder 0700; an existing one must be its owner's alone (as the key file)."""
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        except FileExistsError:
            pass  # another process made it meanwhile
        except OSError as err:
            raise ServiceError(f"Cannot make the service token {path}: {err.strerror or err}") from None
    token = read_private_file(path, "service token file", 1024, ServiceError).decode("ascii", "replace").strip()
    if len(token) < 32:
        raise ServiceError(f"The service token file {path} holds no token (delete it: a new one is made)")
    return token


def check_origin(origin: str) -> str:
    """An allow-list entry: ``scheme://host[:port]`` exactly as browsers send it (no path, no wildcard)."""
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if origin == "*" or "*" in origin or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.path or parts.query or parts.fragment or parts.username:
        raise ServiceError(f"--allow-origin {origin!r}: give scheme://host[:port] exactly, as the hospital's "
                           "page is served (no wildcard, no path)")
    return origin.rstrip("/")


# --- errors in our JSON API ------------------------------------------------------------------------

def error_body(err: SSCardError) -> dict[str, Any]:
    """``{"error": {"code", "exit_code", "message"}}``: the error schema of every CLI ``--json``
    (:func:`terminal.cli.exits.error_object`)."""
    return {"error": error_object(err)}


def _status(err: SSCardError) -> int:
    if isinstance(err, ReaderBusyError):
        return 409
    if isinstance(err, SlowRequestError):
        return 408
    if isinstance(err, ConventionError):
        return 400
    return 422


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False).encode(), status_code=status, headers=headers,
                    media_type="application/json; charset=utf-8")


# --- the guard -----------------------------------------------------------------------------------

class Guard:
    """ASGI middleware: the Host, Origin and token checks and the body bound (module docstring)."""

    def __init__(self, app: Any, *, origins: tuple[str, ...], token: str, port: Callable[[], int]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.token = token.encode()
        self.port = port

    def _refusal(self, scope: Any, headers: dict[str, str]) -> str | None:
        port = self.port()
        hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}
        if headers.get("host", "") not in hosts:
            return "this service answers requests addressed to 127.0.0.1 (or localhost) only"
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "GET" and (path == "/" or path.startswith("/static/")):
            return None  # the counter page's files: no data in them
        origin = headers.get("origin")
        if origin is not None:
            return None if origin in self.origins else f"pages from {origin[:80]} may not use this service"
        given = headers.get("authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].strip().encode(), self.token):
            return "a client that is not a browser page needs this installation's token (sscard serve --print-token)"
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if scope["type"] == "http" and scope["method"] == "OPTIONS" and origin in self.origins:
            await _preflight(origin)(scope, receive, send)
            return
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            log.info("refused %s %s: %s", scope["type"], scope.get("path"), refusal)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # the handshake gets HTTP 403
                return
            body = {"error": {"code": "forbidden", "exit_code": USAGE, "message": refusal}}
            await _json(body, 403)(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY):
            body = {"error": {"code": "too_large", "exit_code": USAGE, "message": f"a request is at most {MAX_BODY} bytes"}}
            await _json(body, 413)(scope, receive, send)
            return
        if origin is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"access-control-allow-origin", origin.encode("latin-1")),
                                                  (b"vary", b"Origin")]}
            await send(message)

        await self.app(scope, receive, with_cors)


def _preflight(origin: str) -> Response:
    return Response(status_code=204, headers={
        "access-control-allow-origin": origin, "vary": "Origin", "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "content-type", "access-control-max-age": "600"})


class _Server(uvicorn.Server):
    """uvicorn whose SIGINT/SIGTERM only ask it to stop (a plain attribute set), the signal not raised
    again afterwards: ``sscard serve`` ends with exit 0. Off the main thread, no handler is installed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def stop(*_: object) -> None:
            self.should_exit = True

        for s in previous:
            signal.signal(s, stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# --- the service -----------------------------------------------------------------------------------

class ReaderService:
    """The service on ``host:port`` (port 0: any free port) for the card in ``reader`` (and
    ``contactless``, when configured), checking cards with ``keys``; ``terminal_no`` and ``device``
    are what iReadCardBas reports; ``origins`` the allow-list; ``token`` the per-install token;
    ``exclusive``: hold PC/SC readers exclusively while a call uses them (``sscard --exclusive serve``).
    :class:`ServiceError` for a host not on loopback; :class:`OSError` when the port is taken."""

    def __init__(self, *, reader: str, keys: KeyStore, token: str, origins: tuple[str, ...] = (),
                 contactless: str | None = None, terminal_no: int = 0, device: str = "", host: str = "127.0.0.1",
                 port: int = 0, busy_wait: float = BUSY_WAIT, card_timeout: float = CARD_TIMEOUT_S,
                 body_time: float = BODY_TIME_S, config: TerminalConfig | None = None,
                 central_url: str | None = None, exclusive: bool = False) -> None:
        if host not in LOOPBACK:
            raise ServiceError(f"the service listens on this computer only (127.0.0.1 or ::1), not {host!r}")
        self.reader, self.contactless, self.exclusive = reader, contactless, exclusive
        self.keys = keys
        self.terminal_no, self.device = terminal_no, device
        #: the terminal the counter functions record for (journal, platform); None: card functions only
        self.config = config
        self.central_url = central_url
        self.busy_wait, self.card_timeout, self.body_time = busy_wait, card_timeout, body_time
        self._locks: dict[str, asyncio.Lock] = {}
        #: reader -> why: a card given up on, its command still stuck on a worker thread (the reader
        #: stays locked until the thread is back: nothing is sent to the card meanwhile)
        self._stuck: dict[str, str] = {}
        #: reader -> the card session an iReadCardBas_HSM_Step1 left for its Step2 (terminal/hsmread.py):
        #: changed only under the reader's lock (looked at without it to route a Step2), let go of by the
        #: next call on that reader, by :meth:`_expire` after HELD_S seconds, or when the service stops
        self._held: dict[str, HeldRead] = {}
        self._expiring: set[asyncio.Task[None]] = set()
        #: one counter transaction at a time, whichever reader (the terminal's journal and sign-in are one)
        self._flow_lock = threading.Lock()
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._cards: dict[str, str | None] = {}  # reader -> ATR of the card in it, as the events tell
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(64)
            self.port = self.socket.getsockname()[1]
        except BaseException:
            self.socket.close()
            raise
        self.url = f"http://{'[::1]' if ':' in host else '127.0.0.1'}:{self.port}"
        app = Starlette(routes=[
            Route("/api/convention", self._convention_http, methods=["POST"]),
            Route("/api/readers", self._readers, methods=["GET"]),
            Route("/api/read", self._read, methods=["POST"]),
            Route("/api/auth", self._auth, methods=["POST"]),
            Route("/api/verify-pin", self._verify_pin, methods=["POST"]),
            Route("/api/register", self._counter("register"), methods=["POST"]),
            Route("/api/settle", self._counter("settle"), methods=["POST"]),
            Route("/api/purchase", self._counter("purchase"), methods=["POST"]),
            Route("/api/refund", self._counter("refund"), methods=["POST"]),
            Route("/api/reconcile", self._counter("reconcile"), methods=["POST"]),
            Route("/api/queue", self._counter("queue"), methods=["POST"]),
            WebSocketRoute("/ws", self._ws),
            Route("/", self._page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ])
        own = (f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}", f"http://[::1]:{self.port}")
        guarded = Guard(app, origins=(*own, *(check_origin(o) for o in origins)), token=token, port=lambda: self.port)
        server_config = uvicorn.Config(guarded, log_config=None, access_log=False, lifespan="off", ws_max_size=MAX_BODY,
                                       timeout_graceful_shutdown=1, server_header=False,
                                       ws="websockets-sansio", proxy_headers=False)
        self.server = _Server(server_config)
        self.thread: threading.Thread | None = None

    # --- running ---

    def serve(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (main thread) or :meth:`stop`."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopping.set()
            self.socket.close()
            self._let_go_held()

    @property
    def stuck(self) -> list[str]:
        """Why each reader whose card command is still unanswered was given up on (empty: none)."""
        return list(self._stuck.values())

    def start(self) -> ReaderService:
        """Serve in a background thread; returns once it accepts requests."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="serve",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the service did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.should_exit = True
        if self.thread:
            self.thread.join()
        self.socket.close()
        if self._watcher:
            self._watcher.join(timeout=5)
        self._let_go_held()

    def _let_go_held(self) -> None:
        """Disconnect the card sessions still waiting for a Step2 (the service stops)."""
        for spec in list(self._held):
            self._drop_held(spec)

    def _expire(self, spec: str, held: HeldRead | None) -> None:
        """HELD_S seconds after a Step1: its card session let go of, if it is still the one held."""
        if held is None or self._held.get(spec) is not held:
            return

        async def let_go() -> None:
            async with self._locks.setdefault(spec, asyncio.Lock()):
                if self._held.get(spec) is held:
                    await anyio.to_thread.run_sync(self._drop_held, spec)

        task = asyncio.ensure_future(let_go())
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    def _drop_held(self, spec: str) -> HeldRead | None:
        held = self._held.pop(spec, None)
        if held is not None:
            try:
                held.close()
            except SSCardError as err:  # a card pulled meanwhile: nothing is left to let go
                log.info("the card session held for Step2 on %s: %s", spec, err)
        return held

    def __enter__(self) -> ReaderService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one card session at a time per reader ---

    async def _with_reader(self, spec: str, work: Callable[[], T], *, keep_held: bool = False) -> T:
        """``work()`` on a worker thread while no other request uses reader ``spec``; waits up to
        ``busy_wait`` seconds for it, then :class:`ReaderBusyError`. A card session held for an
        iReadCardBas_HSM_Step2 is let go first, unless ``keep_held`` (the Step2 itself).

        A card (or PSAM) that leaves one command unanswered for ``card_timeout`` seconds is given up
        on (:func:`drivers.connection.give_up`): the request is answered
        :class:`CardUnresponsiveError` at once, and the work cannot go on past that command even if
        the card answers later (a flow records nothing after it: no money moves behind the client's
        back). The reader stays locked until the stuck thread is back; meanwhile its requests are
        told the card does not answer. The service itself goes on (the CLI's watchdog, which ends
        the process, is off under ``sscard serve``)."""
        if spec in self._stuck:
            raise CardUnresponsiveError(self._stuck[spec])
        lock = self._locks.setdefault(spec, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), self.busy_wait)
        except TimeoutError:
            raise ReaderBusyError(f"The reader {spec} is busy with another request: try again") from None
        sender: list[int] = []  # the worker thread, while it does this work

        def run() -> T:
            sender.append(threading.get_ident())
            try:
                if not keep_held:
                    self._drop_held(spec)
                return work()
            finally:
                sender.clear()
                forgive(threading.get_ident())

        # abandon_on_cancel: the service stopping does not wait for a thread stuck on a card
        job = asyncio.ensure_future(anyio.to_thread.run_sync(run, abandon_on_cancel=True))
        try:
            while not job.done():
                await asyncio.wait({job}, timeout=CARD_POLL_S)
                thread = next(iter(sender), None)  # the worker may be clearing it right now
                err = give_up(thread, self.card_timeout) if thread is not None and not job.done() else None
                if err is not None:
                    self._stuck[spec] = str(err)
                    log.warning("%s: its request answered, the reader held until the command is back", err)
                    raise err
            return job.result()
        finally:
            if job.done():
                lock.release()
            else:  # stuck in a card command, or the client went away: the reader is free when it is back

                def back(done: asyncio.Future[T]) -> None:
                    if done.cancelled():  # the service is stopping: the thread may be stuck still
                        return
                    done.exception()  # retrieved: its error went to the client already, or nowhere
                    self._stuck.pop(spec, None)
                    lock.release()

                job.add_done_callback(back)

    def _present(self, spec: str) -> tuple[SocialSecurityCard, Any]:
        """The card in ``spec``, selected (not yet checked): its session and connection."""
        connection = open_connection(spec, exclusive=self.exclusive)
        card = SocialSecurityCard(connection)
        try:
            card.select()
        except BaseException:
            connection.disconnect()
            raise
        return card, connection

    def _identity(self, spec: str, *, genuine: bool = True) -> tuple[Identity, str]:
        card, connection = self._present(spec)
        with connection:
            algorithm = ""
            if genuine:
                algorithm = check_genuine(card, self.keys).algorithm.value
            return card.read_identity(unlocker(self.keys)), algorithm

    def _order(self, itype: int) -> list[str]:
        """The readers to try for an iType, in order (module :mod:`terminal.convention`)."""
        contact = [self.reader]
        contactless = [self.contactless] if self.contactless else []
        if itype == CONTACT:
            return contact
        if itype == CONTACTLESS:
            if not contactless:
                raise ConventionError("this terminal has no contactless reader (iType 2)", READER)
            return contactless
        if itype == AUTO_CONTACT_FIRST:
            return contact + contactless
        if itype == AUTO_CONTACTLESS_FIRST:
            return contactless + contact
        raise ConventionError(f"unknown iType {itype}", READER)

    async def call(self, message: Any) -> dict[str, Any]:
        """One convention call (:mod:`terminal.convention`): its reply, never an exception."""
        function = message.get("function") if isinstance(message, dict) else None
        try:
            request = Call.parse(message)
            readers = self._order(request.itype)
            step2 = request.function == STEP2
            if step2:  # the reader whose card Step1 holds
                readers = [spec for spec in readers if spec in self._held] or readers[:1]
            error: SSCardError | None = None
            for spec in readers:  # automatic: the next reader when there is no card in this one
                try:
                    work = functools.partial(self._run, request, spec)
                    out = await self._with_reader(spec, work, keep_held=step2)
                    if request.function == STEP1:  # its card session is let go of when Step2 does not come
                        asyncio.get_running_loop().call_later(hsmread.HELD_S, self._expire, spec, self._held.get(spec))
                    return reply(request.function, 0, out)
                except SSCardError as err:
                    error = err
                    if code_of(err) != -2:
                        break
            raise error or ConventionError("no reader", READER)
        except SSCardError as err:
            return reply(str(function or ""), code_of(err), str(err))
        except Exception as err:  # a bug: a reply all the same, the details in the log
            log.error("convention call failed", exc_info=True)
            return reply(str(function or ""), -99, f"internal error ({type(err).__name__})")

    def _run(self, request: Call, spec: str) -> str:
        if request.function == "iReadCardBas":
            identity, _algorithm = self._identity(spec)
            return card_bas(identity, self.terminal_no, self.device)
        if request.function == STEP2:
            held = self._held.pop(spec, None)
            if held is None:
                raise ConventionError(f"{STEP2} finishes an {STEP1} on this reader: call {STEP1} first")
            with held:
                return card_bas(step2(held, request.p_key or ""), self.terminal_no, self.device)
        card, connection = self._present(spec)
        if request.function == STEP1:
            try:
                self._held[spec] = held = step1(card)
            except BaseException:
                connection.disconnect()
                raise
            return held.out
        with connection:
            if request.function == "iReadBankNumber":
                return f"{card.read_bank_account().pan}|"
            if request.function == "iVerifyPIN":
                card.verify_pin(request.pin or "")
            else:
                from sscard.apdu.pin import check_new_pin

                check_new_pin(request.new_pin or "")
                card.change_pin(request.old_pin or "", request.new_pin or "")
        return ""

    # --- HTTP ---

    async def _body(self, request: Request) -> Any:
        body = bytearray()
        try:
            with anyio.fail_after(self.body_time):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise ConventionError(f"a request is at most {MAX_BODY} bytes")
        except TimeoutError:
            raise SlowRequestError(f"the request's body did not arrive within {self.body_time:g} s") from None
        try:
            return json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise ConventionError("the body is not JSON") from None

    async def _api(self, request: Request, work: Callable[[dict[str, Any]], Any]) -> Response:
        try:
            payload = await self._body(request)
            if not isinstance(payload, dict):
                raise ConventionError("the body is a JSON object")
            return _json(await work(payload))
        except SSCardError as err:
            return _json(error_body(err), _status(err))
        except Exception as err:  # a bug: the error schema all the same, the details in the log
            log.error("%s failed", request.url.path, exc_info=True)
            return _json({"error": {"code": "internal", "exit_code": INTERNAL,
                                    "message": f"internal error ({type(err).__name__}): see the service's log"}}, 500)

    def _spec(self, payload: dict[str, Any]) -> str:
        spec = payload.get("reader", self.reader)
        if not isinstance(spec, str) or not spec or len(spec) > 256:
            raise ConventionError("reader must be a reader spec (as --reader takes it)")
        return spec

    async def _convention_http(self, request: Request) -> Response:
        try:
            payload = await self._body(request)
        except ConventionError as err:
            return _json(reply("", code_of(err), str(err)), _status(err))
        return _json(await self.call(payload))

    async def _readers(self, request: Request) -> Response:
        def look() -> list[dict[str, Any]]:
            """The configured virtual reader (its card always in), then the PC/SC readers; ``configured``
            marks the one requests use when they name none."""
            from sscard.drivers import pcsc

            found: list[dict[str, Any]] = []
            if self.reader.startswith(SIM_PREFIX):
                with open_connection(self.reader, exclusive=self.exclusive) as virtual:
                    found.append({"reader": self.reader, "kind": "virtual", "card": True,
                                  "atr": atr_text(virtual.atr), "configured": True})
            try:
                with pcsc.Context() as context:
                    configured = None
                    if not found:
                        with contextlib.suppress(SSCardError):  # not there now: none is marked
                            configured = pcsc.resolve(self.reader, context)
                    found += [{"reader": status.name, "kind": "pc/sc", "card": status.present,
                               "atr": atr_text(status.atr), "configured": status.name == configured}
                              for status in context.status(context.readers())]
            except SSCardError:
                pass  # no PC/SC service: the virtual reader alone
            return found

        return _json({"readers": await anyio.to_thread.run_sync(look)})

    async def _read(self, request: Request) -> Response:
        async def work(payload: dict[str, Any]) -> Any:
            spec = self._spec(payload)
            identity, algorithm = await self._with_reader(spec, lambda: self._identity(spec))
            return {"reader": spec, "genuine": True, "algorithm": algorithm,
                    "identity": identity.to_dict(redact=bool(payload.get("redact", False)))}

        return await self._api(request, work)

    async def _auth(self, request: Request) -> Response:
        async def work(payload: dict[str, Any]) -> Any:
            spec = self._spec(payload)

            def check() -> str:
                card, connection = self._present(spec)
                with connection:
                    return check_genuine(card, self.keys).algorithm.value

            return {"reader": spec, "genuine": True, "algorithm": await self._with_reader(spec, check),
                    "test_keys": self.keys.test_only}

        return await self._api(request, work)

    async def _verify_pin(self, request: Request) -> Response:
        async def work(payload: dict[str, Any]) -> Any:
            spec = self._spec(payload)
            pin = payload.get("pin")
            if not isinstance(pin, str) or not pin:
                raise ConventionError("verify-pin needs the holder's PIN (\"pin\")")

            def verify() -> None:
                card, connection = self._present(spec)
                with connection:
                    card.verify_pin(pin)

            await self._with_reader(spec, verify)
            return {"reader": spec, "verified": True}

        return await self._api(request, work)

    # --- the counter functions (the page's, and new code's) ---

    def _counter(self, name: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            async def work(payload: dict[str, Any]) -> Any:
                if self.config is None:
                    raise ServiceError("this service has no terminal configuration: start it with --config to "
                                       "register, settle, sell, refund or reconcile")
                run = getattr(self, f"_{name}")
                if name in ("register", "settle", "purchase"):
                    spec = self._spec(payload)
                    return await self._with_reader(spec, lambda: self._at_counter(run, payload, spec))
                return await anyio.to_thread.run_sync(lambda: self._at_counter(run, payload, None))

            return await self._api(request, work)

        return endpoint

    def _at_counter(self, run: Callable[..., Any], payload: dict[str, Any], spec: str | None) -> dict[str, Any]:
        """A counter function on this worker thread, with its own journal and platform session (a
        SQLite connection belongs to one thread); what the clerk would have read comes back as
        ``messages``. The unknown entries of the journal are resolved first, as a counter command does."""
        from sscard.terminal.flows.common import ScriptedClerk, open_site

        config = self.config
        if config is None:
            raise ServiceError("this service has no terminal configuration")
        pin = payload.get("pin")
        if pin is not None and not isinstance(pin, str):
            raise ConventionError("pin must be text")
        confirm = payload.get("confirm", False)
        if not isinstance(confirm, bool):
            raise ConventionError("confirm must be true or false")
        clerk = ScriptedClerk([pin] if pin else [], agrees=confirm)
        if not self._flow_lock.acquire(timeout=self.busy_wait):
            raise ReaderBusyError("The counter is busy with another transaction (its card may not answer): try again")
        try:
            with open_site(config, self.keys, self.central_url, say=clerk.say) as site:
                result = run(site, clerk, payload, spec)
        finally:
            self._flow_lock.release()
        body = result.to_dict() if hasattr(result, "to_dict") else result
        return {**body, "messages": clerk.said}

    @staticmethod
    def _items(payload: dict[str, Any]) -> list[Any]:
        from sscard.terminal.flows.settlement import Item, parse_money

        items = payload.get("items")
        if not isinstance(items, list) or not items or len(items) > 200:
            raise ConventionError("items must be a list of {name, quantity, price}")
        parsed = []
        for item in items:
            if not isinstance(item, dict):
                raise ConventionError("each item is {name, quantity, price}")
            name, quantity, price = item.get("name"), item.get("quantity"), item.get("price")
            if not isinstance(name, str) or not name.strip() or isinstance(quantity, bool) \
                    or not isinstance(quantity, int) or not 1 <= quantity <= 9999 or not isinstance(price, str):
                raise ConventionError("each item is {name: text, quantity: 1-9999, price: yuan as text like \"12.50\"}")
            parsed.append(Item(name.strip(), quantity, parse_money(price)))
        return parsed

    @staticmethod
    def _text(payload: dict[str, Any], key: str) -> str:
        value = payload.get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > 100:
            raise ConventionError(f"{key} is missing")
        return value

    def _register(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        from sscard.terminal.flows.desk import register

        with open_connection(spec, exclusive=self.exclusive) as connection:
            return register(connection, site, str(payload.get("type") or "outpatient"), self._text(payload, "department"),
                            clerk, require_pin=bool(payload.get("pin")) or bool(self.config and self.config.desk_requires_pin))

    def _settle(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        from sscard.terminal.flows.desk import settle_visit

        with open_connection(spec, exclusive=self.exclusive) as connection:
            return settle_visit(connection, site, self._text(payload, "visit"), self._text(payload, "bill"),
                                self._items(payload), clerk)

    def _purchase(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        from sscard.terminal.flows.pharmacy import purchase

        with open_connection(spec, exclusive=self.exclusive) as connection:
            return purchase(connection, site, self._text(payload, "sale"), self._items(payload), clerk)

    def _refund(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        from sscard.terminal.flows import desk, pharmacy

        if payload.get("bill"):
            return desk.refund(site, self._text(payload, "bill"), clerk)
        return pharmacy.refund(site, self._text(payload, "sale"), clerk)

    def _reconcile(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        import datetime as dt

        from sscard.terminal.reconcile import reconcile

        day = payload.get("date") or dt.datetime.now(CST).date().isoformat()
        try:
            when = dt.date.fromisoformat(str(day))
        except ValueError:
            raise ConventionError("date is yyyy-mm-dd") from None
        return reconcile(site.online(), [site.outbox], when)

    def _queue(self, site: Any, clerk: Any, payload: dict[str, Any], spec: str | None) -> Any:
        return {"counts": site.outbox.counts(), "unknown": len(site.outbox.unknown_calls())}

    async def _page(self, request: Request) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": "default-src 'self'; connect-src 'self' ws://127.0.0.1:*"
                                                            " ws://localhost:*; img-src 'self' data:"})

    # --- WebSocket ---

    async def _ws(self, socket_: WebSocket) -> None:
        await socket_.accept()
        events: asyncio.Queue[dict[str, Any]] | None = None
        pusher: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    message = json.loads(await socket_.receive_text())
                except (ValueError, RecursionError):
                    await socket_.send_json(reply("", -99, "a message is a JSON object"))
                    continue
                if isinstance(message, dict) and message.get("subscribe") == "events":
                    await socket_.send_json({"subscribed": "events"})
                    if events is None:
                        events = self._subscribe()
                        pusher = asyncio.create_task(self._push(socket_, events))
                    continue
                await socket_.send_json(await self.call(message))
        except WebSocketDisconnect:
            pass
        finally:
            if pusher is not None:
                pusher.cancel()
            if events is not None:
                self._subscribers.discard(events)

    async def _push(self, socket_: WebSocket, events: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                await socket_.send_json(await events.get())

    def _subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new subscriber's queue, which first tells of each card already in a reader (``present``)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        for reader, atr in self._cards.items():
            _offer(queue, {"event": "present", "reader": reader, "atr": atr})
        self._subscribers.add(queue)
        if self._watcher is None:
            loop = asyncio.get_running_loop()
            self._watcher = threading.Thread(target=self._watch, args=(loop,), name="card-events", daemon=True)
            self._watcher.start()
        return queue

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """PC/SC insertions and removals (:func:`drivers.pcsc.watch`) to every subscriber, until stopped."""
        from sscard.drivers import pcsc

        for event in pcsc.watch(poll_s=0.2):
            if self._stopping.is_set():
                return
            if event.kind == pcsc.TICK:
                continue
            body = {"event": event.kind, "reader": event.reader, "atr": atr_text(event.atr)}
            with contextlib.suppress(RuntimeError):  # the loop closed: the service is stopping
                loop.call_soon_threadsafe(self._publish, body)

    def _publish(self, body: dict[str, Any]) -> None:
        """An event to every subscriber, and into what a new subscriber is told first; on the event loop,
        so that a subscription sees each event either in that first account or as it comes, never lost."""
        if body["event"] in ("inserted", "present"):
            self._cards[body["reader"]] = body["atr"]
        elif body["event"] == "removed":
            self._cards.pop(body["reader"], None)
        elif body["event"] == "service-lost":
            self._cards.clear()
        for queue in self._subscribers:
            _offer(queue, body)


def _offer(queue: asyncio.Queue[dict[str, Any]], body: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a subscriber that does not read loses old events, not the service
        queue.put_nowait(body)
