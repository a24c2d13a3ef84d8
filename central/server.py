"""The virtual platform over HTTP: Starlette on uvicorn, on loopback (docs/platform.md, "HTTP" and
"Strangers and oversize requests").

A request passes these, in this order, before anything of its body is parsed:

1. its head (request line and headers): at most :data:`MAX_HEAD` bytes in :data:`MAX_HEADERS` lines
   (431), complete within ``Bounds.head_seconds`` (408): :class:`_Protocol`, uvicorn's with bounds;
2. the gateway: its four ``x-tif-*`` headers (403, and the connection closed: its body is never
   read). Only ``GET /_stats`` is answered without them, ``Bounds.stats_per_second`` times a second;
3. its institution's :class:`Bounds`: requests a second, ledger bytes a minute (429, ``Retry-After``);
4. its body, read chunk by chunk up to the endpoint's cap (413 as soon as it passes it, the rest never
   read), all of it within ``Bounds.body_seconds`` (408);

then the body is parsed and handed to the :class:`~central.ledger.Ledger` on the ledger's own thread,
one request at a time (so one parsed body is in memory at a time), and what the request grew the
ledger by is charged to its institution. At most ``Bounds.connections`` connections at once (503).

- ``POST /api/call``: one envelope -> one platform response (every transaction).
- ``POST /api/batch``: ``{"messages": [envelope, ...]}`` -> ``{"results": [response, ...]}``, for what
  a terminal queued while the platform was unreachable (``message.infno.QUEUEABLE``); HTTP 401
  (nothing processed) when a message's ``sign_no`` is not a sign-in of the signing institution, 422
  when a message has no msgid.
- ``POST /api/ec/query``: ``{"qrcode": ...}`` -> an e-voucher token for 1101 (the virtual e-voucher).
- ``POST /api/keys/info``, ``/api/keys/encrypt``: the key service, a remote security module for
  counters without a PSAM (central/keyservice.py).
- ``POST /_control``: ``{"mode": "ok|fail|stall|garbage|drop", "count": n, "seconds": s,
  "retry_after": ..., "infno": ...}``: fault switches, only when the service was started with faults
  enabled (``sscard central serve --faults``; development only), and signed like any request; every
  part is checked before anything is set (400, nothing changed).
- ``GET /_stats``: messages stored, repeats answered from the ledger, faulty requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import ipaddress
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sscard.central.keyservice import KeyRequestError, KeyService
from sscard.central.ledger import Forbidden, Ledger, Rejected, Unanswerable, Unsigned, now_cst
from sscard.message.envelope import ascii_digits
from sscard.message.infno import CODES

log = logging.getLogger(__name__)
T = TypeVar("T")

MODES = ("ok", "fail", "stall", "garbage", "drop")
#: answers "garbage" mode cycles through: not JSON, the wrong shape, items that name no message
GARBAGE = (
    b"\x00\xffthis is not json",
    b'{"results": "none"}',
    b"[]",
    b'{"results": [{"msgid": 5, "infcode": "zero"}]}',
)
MAX_BATCH = 500
#: the largest body of a call or a batch (convention): a batch of 500 records as terminals queue them
#: is ~0.5 MiB (a registration with diagnoses, ~1 KiB on the wire), so 2 MiB is four times that
MAX_BODY = 2 * 1024 * 1024
#: the largest body of the other signed endpoints: an e-voucher query, a key request and a fault switch
#: are each under 1 KiB
MAX_SMALL_BODY = 16 * 1024
#: the largest request head, request line and headers (bytes), and its most header lines: a terminal
#: sends about 600 bytes in 9 lines; past them the connection is answered 431 and closed
MAX_HEAD = 16 * 1024
MAX_HEADERS = 64
#: the longest ``retry_after`` a fault switch takes: delay-seconds, an HTTP-date (29) or any other text
MAX_RETRY_AFTER_TEXT = 64


@dataclass(frozen=True)
class Bounds:
    """What the virtual platform lets a caller make it do (docs/platform.md, "Strangers and oversize
    requests"; the figures are this project's convention). Each is far above what real counters need:
    a counter sends a few requests a minute (a sale is three calls, storing about 7 KB of ledger), its
    uploader batches of at most 500 queued records (about 1.6 KB of ledger each).

    Per institution (whoever holds its gateway credentials; the TEST ones are public):
    ``requests_per_second`` sustained, bursts of ``request_burst``; ``ledger_bytes_per_minute`` of
    ledger growth sustained, bursts of ``ledger_burst``. Per request: a call's or a batch's body at
    most ``max_body`` bytes, any other ``max_small_body``; its head within ``head_seconds`` of its first
    byte (or of the connection), its body within ``body_seconds`` of its head. For the service:
    ``connections`` served at once, and ``stats_per_second`` answers to the unsigned ``GET /_stats``.
    """

    max_body: int = MAX_BODY
    max_small_body: int = MAX_SMALL_BODY
    #: a hospital of 100 counters makes ~5 requests a second; the project's bench (bench/settle.py: 8
    #: terminals of one institution, ~930 requests a second for 4 s) stays inside the burst
    requests_per_second: float = 500.0
    request_burst: int = 5_000
    #: a hospital of 100 counters, a sale a minute each, grows the ledger ~0.7 MB a minute; the burst
    #: takes the bench's 10 000 queued records (16 MB) at once
    ledger_bytes_per_minute: int = 32 * 1024 * 1024
    ledger_burst: int = 32 * 1024 * 1024
    #: a developer's counters, the tests, the bench's 8 terminals: each keeps one connection
    connections: int = 32
    head_seconds: float = 10.0
    body_seconds: float = 10.0
    stats_per_second: float = 20.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"Bounds.{field.name} must be a positive number, not {value!r}")
        if self.request_burst < 1 or self.stats_per_second < 1 or self.connections < 2:
            raise ValueError("Bounds.request_burst and stats_per_second must be at least 1, connections at least 2")


class HostRefused(ValueError):
    """An address the virtual platform does not listen on: empty, or not this computer's loopback
    while remote use is not allowed (docs/platform.md, "Strangers and oversize requests")."""


class BadRequest(Exception):
    """A request refused before anything was processed: answered with ``status``, ``message`` and
    ``headers``."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class Limited(BadRequest):
    """An institution past one of its :class:`Bounds`: HTTP 429 with ``Retry-After`` (whole seconds,
    at least 1), nothing processed."""

    def __init__(self, message: str, wait: float) -> None:
        self.retry_after = max(1, math.ceil(wait))
        super().__init__(HTTPStatus.TOO_MANY_REQUESTS, f"{message}: try again in {self.retry_after} s",
                         {"Retry-After": str(self.retry_after)})


def is_loopback(host: str) -> bool:
    """``host`` is this computer only: ``localhost`` or an address of 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """The address the virtual platform may listen on (docs/platform.md, "Strangers and oversize
    requests"): loopback, or with ``allow_remote`` any address named; an empty one never (it would be
    every interface without saying so). :class:`HostRefused` otherwise."""
    if not host.strip():
        raise HostRefused("an empty host names no address (it would be every interface): give 127.0.0.1 or ::1,"
                          " or, with remote use allowed, the address to listen on (0.0.0.0 for every interface)")
    if not allow_remote and not is_loopback(host):
        raise HostRefused(f"{host!r} is not this computer's loopback: the virtual platform holds persons' data and"
                          " accepts the public TEST credentials, so it listens on 127.0.0.1 or ::1 unless remote use"
                          " is explicitly allowed (--allow-remote)")


def parse_json(body: bytes) -> Any:
    """A request body as JSON (an empty body is ``null``); :class:`BadRequest` when it is not JSON."""
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise BadRequest(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None


def parse_request(path: str, body: bytes) -> tuple[list[Any], bool]:
    """The messages of a POST to ``/api/call`` (one) or ``/api/batch`` (1 to MAX_BATCH), and whether it was
    one call; :class:`BadRequest` for anything else. The messages themselves are checked one by one later."""
    if path not in ("/api/call", "/api/batch"):
        raise BadRequest(HTTPStatus.NOT_FOUND, "not found")
    payload = parse_json(body)
    if path == "/api/call":
        return [payload], True
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_BATCH:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"a batch is {{\"messages\": [1 to {MAX_BATCH}]}}")
    return messages, False


# --- bounds ---------------------------------------------------------------------------------------------

class TokenBucket:
    """``rate`` units a second, held up to ``capacity`` (full at first): a token bucket. Thread-safe: the
    event loop takes from it, the ledger's thread charges it."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.level = float(capacity)
        self.stamp = clock()
        self.lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` is there (0: it is now); nothing taken."""
        with self.lock:
            self._refill()
            return max(0.0, (amount - self.level) / self.rate)

    def take(self, amount: float = 1.0) -> float:
        """Take ``amount`` and return 0, or take nothing and return the seconds until it would be there."""
        with self.lock:
            self._refill()
            if self.level >= amount:
                self.level -= amount
                return 0.0
            return (amount - self.level) / self.rate

    def charge(self, amount: float) -> None:
        """Take ``amount`` whatever is left: below zero it is a debt, paid back by time."""
        with self.lock:
            self._refill()
            self.level -= amount


class _Allowance:
    """One institution's :class:`Bounds` as it uses them: its requests and its ledger bytes."""

    def __init__(self, institution: str, bounds: Bounds) -> None:
        self.institution = institution
        self.bounds = bounds
        self.requests = TokenBucket(bounds.requests_per_second, bounds.request_burst)
        self.ledger = TokenBucket(bounds.ledger_bytes_per_minute / 60, bounds.ledger_burst)

    def check_ledger(self) -> None:
        """:class:`Limited` while the institution has grown the ledger by more than its bound."""
        wait = self.ledger.wait(1)
        if wait:
            raise Limited(f"{self.institution} has grown the ledger by more than its "
                          f"{self.bounds.ledger_bytes_per_minute / 2**20:g} MiB a minute", wait)

    def admit(self) -> None:
        """One request more, or :class:`Limited` (nothing taken when the ledger bound refuses it)."""
        self.check_ledger()
        wait = self.requests.take()
        if wait:
            raise Limited(f"{self.institution} sends more than its {self.bounds.requests_per_second:g} requests a "
                          "second", wait)


@dataclass
class _Caller:
    """A request whose gateway headers hold: who signed it, its nonce (``spent`` once used up), its
    institution's allowance, and whether its body was read whole (``read``; if not, the connection is
    closed after the answer, so what is left of the body is never read)."""

    institution: str
    paasid: str
    nonce: str
    allowance: _Allowance
    spent: bool = False
    read: bool = False


class _HeadRefused(Exception):
    """A request head past :data:`MAX_HEAD` or :data:`MAX_HEADERS` (raised inside the HTTP parser)."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with bounds on each request's head (docs/platform.md,
    "Strangers and oversize requests"): at most :data:`MAX_HEAD` bytes in :data:`MAX_HEADERS` header
    lines (431 and the connection closed, the lines already parsed dropped with it), complete within
    ``bounds.head_seconds`` of its first byte, or of the connection for its first request (408 and
    closed; a connection that sent nothing is just closed). Without them a stranger could make the
    service keep a megabyte of header lines per megabyte sent, or hold connections (of the bounded
    number) for ever with a head that never ends. ``bounds`` is set per service (:meth:`bounded`)."""

    bounds: ClassVar[Bounds] = Bounds()

    @classmethod
    def bounded(cls, bounds: Bounds) -> type[_Protocol]:
        return type("_BoundedProtocol", (cls,), {"bounds": bounds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_size = 0
        self._head_begun = False
        self._head_refusal: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._head_begun = True
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CR LF
        if len(self.headers) >= MAX_HEADERS:
            self._refuse_head(f"a request carries at most {MAX_HEADERS} header lines")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._head_begun = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refused: ours (431) when it was the head's bounds."""
        if self._head_refusal is None:
            super().send_400_response(msg)
        else:
            self._answer_and_close(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, self._head_refusal)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            self._refuse_head(f"a request's line and headers are at most {MAX_HEAD} bytes")

    def _refuse_head(self, why: str) -> NoReturn:
        self._head_refusal = why
        raise _HeadRefused(why)  # the parser stops: uvicorn then calls send_400_response

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.bounds.head_seconds, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_begun:
            self.transport.close()
            return
        self._answer_and_close(HTTPStatus.REQUEST_TIMEOUT,
                               f"a request's line and headers must arrive within {self.bounds.head_seconds:g} s")

    def _answer_and_close(self, status: HTTPStatus, message: str) -> None:
        body = json.dumps({"infcode": -1, "err_msg": message}).encode()
        head = (f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()


# --- faults ---------------------------------------------------------------------------------------------

@dataclass
class Fault:
    """The next ``count`` requests (None: all) get ``mode``; ``seconds`` is the stall."""

    mode: str = "ok"
    count: int | None = None
    seconds: float = 30.0
    retry_after: str | None = None


def fault_switch(mode: object = "ok", count: object = None, seconds: object = 30.0, retry_after: object = None,
                 infno: object = None) -> tuple[str | None, Fault]:
    """The transaction a fault switch aims at (None: any request) and its :class:`Fault`, every part
    checked before anything is set (docs/platform.md, "Fault switches"); :class:`ValueError` naming the
    part otherwise. ``retry_after`` becomes a response header, so it is 1 to
    :data:`MAX_RETRY_AFTER_TEXT` printable ASCII characters (delay-seconds, an HTTP-date or any other
    text, for a terminal's parser to meet), or whole seconds."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"unknown fault mode {str(mode)[:20]!r}: one of {', '.join(MODES)}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise ValueError("seconds must be a number from 0 to 3600")
    if isinstance(retry_after, int) and not isinstance(retry_after, bool) and retry_after >= 0:
        retry_after = str(retry_after)
    if retry_after is not None and not (isinstance(retry_after, str) and 0 < len(retry_after) <= MAX_RETRY_AFTER_TEXT
                                        and retry_after.isascii() and retry_after.isprintable()):
        raise ValueError(f"retry_after must be whole seconds or 1 to {MAX_RETRY_AFTER_TEXT} printable ASCII characters"
                         " (it becomes the Retry-After header)")
    if infno is not None and not (isinstance(infno, str) and infno in CODES):
        raise ValueError("infno must be a transaction code (docs/platform.md, \"Transactions\")")
    return infno, Fault(mode, count, float(seconds), retry_after)


def _first_infno(messages: list[Any]) -> str | None:
    """The infno of a call's message (or a batch's first), to aim a fault at one transaction."""
    infno = messages[0].get("infno") if messages and isinstance(messages[0], dict) else None
    return infno if isinstance(infno, str) else None


# --- HTTP -----------------------------------------------------------------------------------------------

#: set while a request's answer is being dropped on purpose, so uvicorn's complaint about it is not logged
_DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("central_dropping", default=False)


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _DROPPING.get()


class _Endpoint:
    """An ASGI endpoint whose handler returns a response, or None to drop the connection unanswered
    (the status line is sent, then the connection is closed: an answer lost after the work was done)."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response | None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self.handler(Request(scope, receive))
        if response is None:
            _DROPPING.set(True)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
            return
        await response(scope, receive, send)


def _error(status: int, message: str, headers: dict[str, str] | None = None, *, close: bool = False) -> JSONResponse:
    """The platform's refusal; ``close``: the connection is closed after it (a body left unread)."""
    if close:
        headers = {**(headers or {}), "Connection": "close"}
    return JSONResponse({"infcode": -1, "err_msg": message}, status_code=status, headers=headers)


class _Server(uvicorn.Server):
    """uvicorn with our own signal handling: SIGINT and SIGTERM only ask it to stop (a plain attribute
    set in the handler: nothing that takes a lock), and the signal is not raised again afterwards, so
    ``sscard central serve`` ends with exit 0. Off the main thread, no handler is installed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in signals}

        def stop(*_: object) -> None:
            self.should_exit = True

        for s in signals:
            signal.signal(s, stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class CentralService:
    """The virtual platform on ``host:port`` (port 0: any free port), its ledger at ``db_path``.

    ``host`` is this computer's loopback unless ``allow_remote`` (docs/platform.md, "Strangers and
    oversize requests"). ``faults``: the fault switches may be used (development only). ``bounds``: what
    a caller may make it do (:class:`Bounds`). ``clock``: the ledger's "now".
    :class:`HostRefused` (a :class:`ValueError`) for a host it does not listen on, :class:`OSError` when
    the port cannot be taken, :class:`sqlite3.Error` when the ledger cannot be used.
    """

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *, faults: bool = False,
                 allow_remote: bool = False, bounds: Bounds | None = None,
                 clock: Callable[[], Any] = now_cst) -> None:
        check_host(host, allow_remote)
        self.bounds = bounds or Bounds()
        self.ledger = Ledger(db_path, clock=clock)
        #: the remote security module (central/keyservice.py)
        self.keys = KeyService()
        self.faults = faults
        #: the faults set, by the transaction they aim at (None: any request)
        self.fault_plan: dict[str | None, Fault] = {}
        self.fault_lock = threading.Lock()
        self.faulty_requests = 0
        #: each institution's bounds in use, made at its first signed request (touched on the event loop)
        self.allowances: dict[str, _Allowance] = {}
        #: the unsigned GET /_stats, for anyone
        self.strangers = TokenBucket(self.bounds.stats_per_second, self.bounds.stats_per_second)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.socket = socket.socket(family, socket.SOCK_STREAM)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            bound, bound_port = self.socket.getsockname()[:2]
            if not allow_remote and not is_loopback(bound):  # a name that resolved elsewhere
                raise HostRefused(f"{host!r} is {bound}, not this computer's loopback (--allow-remote to serve it)")
            self.socket.listen(512)
        except BaseException:
            with contextlib.suppress(AttributeError, OSError):
                self.socket.close()
            self.executor.shutdown()
            self.ledger.close()
            raise
        self.app = Starlette(routes=[
            Route("/api/call", _Endpoint(self._call), methods=["POST"]),
            Route("/api/batch", _Endpoint(self._call), methods=["POST"]),
            Route("/api/ec/query", _Endpoint(self._voucher), methods=["POST"]),
            Route("/api/keys/info", _Endpoint(self._keys_info), methods=["POST"]),
            Route("/api/keys/encrypt", _Endpoint(self._keys_encrypt), methods=["POST"]),
            Route("/_control", _Endpoint(self._control), methods=["POST"]),
            Route("/_stats", _Endpoint(self._stats), methods=["GET"]),
        ])
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                http=_Protocol.bounded(self.bounds), limit_concurrency=self.bounds.connections,
                                timeout_graceful_shutdown=1, timeout_keep_alive=30, server_header=False)
        self.server = _Server(config)
        logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
        self.thread: threading.Thread | None = None
        #: where terminals reach it (kept after it stops, for a service restarted on the same port)
        self.url = f"http://[{bound}]:{bound_port}" if ":" in bound else f"http://{bound}:{bound_port}"

    # --- running ----------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (main thread) or :meth:`stop`; then close."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.close()

    def start(self) -> CentralService:
        """Serve in a background thread; returns once it accepts requests."""
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="central", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the virtual platform did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving (requests in flight get a second to finish), then close the ledger."""
        self.server.should_exit = True
        if self.thread:
            self.thread.join()
        self.close()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self.socket.close()
        self.ledger.close()

    def __enter__(self) -> CentralService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults (development only) ------------------------------------------------------------------

    def set_fault(self, mode: str = "ok", count: int | None = None, seconds: float = 30.0,
                  retry_after: str | int | None = None, infno: str | None = None) -> None:
        """Misbehave for the next ``count`` requests (None: until told otherwise), or the next ``count``
        carrying transaction ``infno`` (a call's message, a batch's first); ``fail`` answers carry
        ``Retry-After: retry_after`` when given. ``ok`` clears the fault set for ``infno`` (docs/platform.md,
        "Fault switches"). :class:`ValueError` for any part not as :func:`fault_switch` takes it, and then
        nothing is changed."""
        if not self.faults:
            raise PermissionError("the fault switches are off: start the virtual platform with faults enabled")
        self._apply_fault(*fault_switch(mode, count, seconds, retry_after, infno))

    def _apply_fault(self, infno: str | None, fault: Fault) -> None:
        with self.fault_lock:
            if fault.mode == "ok":
                self.fault_plan.pop(infno, None)
            else:
                self.fault_plan[infno] = fault

    def take_fault(self, infno: str | None = None) -> Fault:
        """The fault for a request carrying ``infno``, counting it down."""
        with self.fault_lock:
            key = infno if infno in self.fault_plan else None
            fault = self.fault_plan.get(key)
            if fault is None:
                return Fault()
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    del self.fault_plan[key]
            self.faulty_requests += 1
            return Fault(fault.mode, None, fault.seconds, fault.retry_after)

    # --- the gateway, the bounds, the body ----------------------------------------------------------

    async def _ledger(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def _caller(self, request: Request) -> _Caller:
        """Who signed this request, from its headers alone (:class:`Forbidden`: the gateway refuses it)."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        institution, paasid = self.ledger.authenticate(headers)
        allowance = self.allowances.get(institution)
        if allowance is None:
            allowance = self.allowances[institution] = _Allowance(institution, self.bounds)
        return _Caller(institution, paasid, headers["x-tif-nonce"], allowance)

    async def _body(self, caller: _Caller, request: Request, limit: int) -> bytes:
        """The caller's body once its institution's bounds admit one request more (:class:`Limited`),
        read chunk by chunk: 413 as soon as it passes ``limit`` bytes (or says it will), 408 when it is
        not all there within ``Bounds.body_seconds``; :class:`ClientDisconnect` when the caller hangs up."""
        caller.allowance.admit()
        too_large = BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body here is at most {limit} bytes")
        length = request.headers.get("content-length")
        if length is not None and not (ascii_digits(length) and len(length) <= 12 and int(length) <= limit):
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self.bounds.body_seconds):
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limit:
                        raise too_large
                    body += chunk
        except TimeoutError:
            raise BadRequest(HTTPStatus.REQUEST_TIMEOUT, "the request's body did not arrive within "
                                                         f"{self.bounds.body_seconds:g} s") from None
        caller.read = True
        return bytes(body)

    def _metered(self, caller: _Caller, work: Callable[[], T], *, check: bool = True) -> T:
        """``work`` on the ledger's thread, what it grew the ledger by charged to the caller's institution
        (the ledger runs one request at a time, so the growth is this one's); ``check``: first
        :class:`Limited` when the institution is past its ledger bound."""
        if check:
            caller.allowance.check_ledger()
        before = self.ledger.size()
        try:
            return work()
        finally:
            caller.allowance.ledger.charge(max(0, self.ledger.size() - before))

    async def _spend_nonce(self, caller: _Caller) -> None:
        """Use the caller's nonce up in a transaction of its own, committed without waiting for the disk (it
        moves nothing; docs/platform.md, "Gateway"), charged to its institution's ledger bytes;
        :class:`Forbidden` when it was used before."""
        def spend() -> None:
            with self.ledger.transaction(durable=False) as conn:
                self.ledger._use_nonce(conn, caller.paasid, caller.nonce)

        await self._ledger(lambda: self._metered(caller, spend, check=False))
        caller.spent = True

    async def _refused(self, caller: _Caller, refusal: BadRequest) -> Response:
        """A signed request refused after the gateway let it through (its bounds, its body, 401, 422, a
        fault): its nonce is used up all the same, since the signature covers no body and the same
        headers must not carry another one (HTTP 403 instead when the nonce was used before). When its
        body was not read whole, the connection is closed after the answer."""
        close = not caller.read
        if not caller.spent:
            try:
                await self._spend_nonce(caller)
            except Forbidden as err:
                return _error(HTTPStatus.FORBIDDEN, str(err), close=close)
        return _error(refusal.status, str(refusal), refusal.headers, close=close)

    # --- handlers ---------------------------------------------------------------------------------

    def _process(self, caller: _Caller, path: str, body: bytes) -> tuple[Fault, list[dict[str, Any]], bool]:
        """On the ledger's thread: the caller's institution within its ledger bound (:class:`Limited`), its
        body parsed (:class:`BadRequest`; only here, so one parsed body is in memory at a time), the fault
        it meets taken, and, unless that fails it, its messages processed (its nonce used up in the same
        transaction), metered: (the fault, the answers, whether it was one call)."""
        caller.allowance.check_ledger()
        messages, single = parse_request(path, body)
        fault = self.take_fault(_first_infno(messages) if self.fault_plan else None)
        if fault.mode == "fail":
            return fault, [], single
        answers = self._metered(caller, lambda: self.ledger.process(
            caller.institution, messages, nonce=(caller.paasid, caller.nonce), batch=not single), check=False)
        return fault, answers, single

    async def _call(self, request: Request) -> Response | None:
        try:
            caller = self._caller(request)
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err), close=True)
        path = request.url.path
        try:
            body = await self._body(caller, request, self.bounds.max_body)
            fault, answers, single = await self._ledger(lambda: self._process(caller, path, body))
        except Forbidden as err:  # its nonce was used before (the ledger's transaction)
            return _error(HTTPStatus.FORBIDDEN, str(err))
        except BadRequest as err:
            return await self._refused(caller, err)
        except Unsigned as err:
            return await self._refused(caller, BadRequest(HTTPStatus.UNAUTHORIZED, str(err)))
        except Unanswerable as err:
            return await self._refused(caller, BadRequest(HTTPStatus.UNPROCESSABLE_ENTITY, str(err)))
        except ClientDisconnect:  # the caller hung up mid-body: its headers are used up all the same
            return await self._refused(caller, BadRequest(HTTPStatus.BAD_REQUEST, "the client hung up"))
        if fault.mode == "fail":  # nothing processed, the nonce used up (the headers carry nothing more)
            later = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return await self._refused(caller, BadRequest(HTTPStatus.SERVICE_UNAVAILABLE,
                                                          "service unavailable (told to fail)", later))
        if fault.mode == "stall":
            await asyncio.sleep(fault.seconds)
        if fault.mode == "drop":
            return None
        if fault.mode == "garbage":
            return Response(GARBAGE[self.faulty_requests % len(GARBAGE)], media_type="application/json")
        return _json(answers[0] if single else {"results": answers})

    async def _signed_json(self, request: Request) -> Any:
        """A signed request's JSON body (of at most ``Bounds.max_small_body`` bytes), its nonce used up;
        or the refusal :class:`Response` to send."""
        try:
            caller = self._caller(request)
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err), close=True)
        try:
            body = await self._body(caller, request, self.bounds.max_small_body)
            await self._spend_nonce(caller)
            return parse_json(body)
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err))
        except BadRequest as err:
            return await self._refused(caller, err)
        except ClientDisconnect:
            return await self._refused(caller, BadRequest(HTTPStatus.BAD_REQUEST, "the client hung up"))

    async def _voucher(self, request: Request) -> Response | None:
        payload = await self._signed_json(request)
        if isinstance(payload, Response):
            return payload
        qrcode = payload.get("qrcode") if isinstance(payload, dict) else None
        if not isinstance(qrcode, str) or not 0 < len(qrcode) <= 512:
            return _error(HTTPStatus.BAD_REQUEST, 'an e-voucher query is {"qrcode": "..."}')
        try:
            output = await self._ledger(lambda: self.ledger.voucher_token(qrcode))
        except Rejected as err:
            return _json({"infcode": -1, "err_msg": str(err), "output": {}})
        return _json({"infcode": 0, "err_msg": "", "output": output})

    async def _keys_info(self, request: Request) -> Response | None:
        payload = await self._signed_json(request)
        return payload if isinstance(payload, Response) else _json(self.keys.info())

    async def _keys_encrypt(self, request: Request) -> Response | None:
        payload = await self._signed_json(request)
        if isinstance(payload, Response):
            return payload
        try:
            return _json(self.keys.encrypt(payload))
        except KeyRequestError as err:
            return _error(HTTPStatus.BAD_REQUEST, str(err))

    async def _control(self, request: Request) -> Response | None:
        if not self.faults:
            return _error(HTTPStatus.NOT_FOUND, "not found (the fault switches are off)")
        payload = await self._signed_json(request)
        if isinstance(payload, Response):
            return payload
        if not isinstance(payload, dict) or set(payload) - {"mode", "count", "seconds", "retry_after", "infno"}:
            return _error(HTTPStatus.BAD_REQUEST, "a control request is {mode, count, seconds, retry_after, infno}")
        try:
            infno, fault = fault_switch(**payload)
        except ValueError as err:  # nothing set
            return _error(HTTPStatus.BAD_REQUEST, str(err))
        self._apply_fault(infno, fault)
        return _json({"mode": fault.mode})

    async def _stats(self, request: Request) -> Response | None:
        wait = self.strangers.take()
        if wait:
            limited = Limited(f"GET /_stats is answered {self.bounds.stats_per_second:g} times a second", wait)
            return _error(limited.status, str(limited), limited.headers)
        messages = await self._ledger(self.ledger.count)
        return _json({"messages": messages, "repeats": self.ledger.repeats, "faulty_requests": self.faulty_requests})


def _json(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False).encode(), media_type="application/json; charset=utf-8")
