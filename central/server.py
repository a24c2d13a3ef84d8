"""The virtual platform over HTTP: Starlette on uvicorn, on loopback (docs/platform.md, "HTTP").

Every request but ``GET /_stats`` passes the gateway first (its four ``x-tif-*`` headers, checked
before the body is read: HTTP 403), then its body is read (at most :data:`MAX_BODY` bytes: 413) and
handed to the :class:`~central.ledger.Ledger` on the ledger's own thread, one request at a time.

- ``POST /api/call``: one envelope -> one platform response (every transaction).
- ``POST /api/batch``: ``{"messages": [envelope, ...]}`` -> ``{"results": [response, ...]}``, for what
  a terminal queued while the platform was unreachable (``message.envelope.QUEUEABLE``); HTTP 401
  (nothing processed) when a message's ``sign_no`` is not a sign-in of the signing institution, 422
  when a message has no msgid.
- ``POST /api/ec/query``: ``{"qrcode": ...}`` -> an e-voucher token for 1101 (the virtual e-voucher).
- ``POST /api/keys/info``, ``/api/keys/encrypt``: the key service, a remote security module for
  counters without a PSAM (central/keyservice.py).
- ``POST /_control``: ``{"mode": "ok|fail|stall|garbage|drop", "count": n, "seconds": s,
  "retry_after": ...}``: fault switches, only when the service was started with faults enabled
  (``sscard central serve --faults``; development only), and signed like any request.
- ``GET /_stats``: messages stored, repeats answered from the ledger, faulty requests.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central.keyservice import KeyRequestError, KeyService
from central.ledger import Forbidden, Ledger, Rejected, Unanswerable, Unsigned, now_cst

log = logging.getLogger(__name__)

MODES = ("ok", "fail", "stall", "garbage", "drop")
#: answers "garbage" mode cycles through: not JSON, the wrong shape, items that name no message
GARBAGE = (
    b"\x00\xffthis is not json",
    b'{"results": "none"}',
    b"[]",
    b'{"results": [{"msgid": 5, "infcode": "zero"}]}',
)
MAX_BATCH = 500
#: the largest request body read (a full batch of large messages is well under it)
MAX_BODY = 4 * 1024 * 1024
#: hosts the service may listen on: it holds persons' data and money, for development on this computer
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class BadRequest(Exception):
    """A request that is not a call or a batch: answered with ``status`` and nothing processed."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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


@dataclass
class Fault:
    """The next ``count`` requests (None: all) get ``mode``; ``seconds`` is the stall."""

    mode: str = "ok"
    count: int | None = None
    seconds: float = 30.0
    retry_after: str | None = None


def _first_infno(body: bytes) -> str | None:
    """The infno of a call's message (or a batch's first), to aim a fault at one transaction."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("messages"), list) and payload["messages"]:
        payload = payload["messages"][0]
    infno = payload.get("infno") if isinstance(payload, dict) else None
    return infno if isinstance(infno, str) else None


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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
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

    ``faults``: the fault switches may be used (development only). ``clock``: the ledger's "now".
    :class:`OSError` when the port cannot be taken, :class:`ValueError` for a host not on loopback,
    :class:`sqlite3.Error` when the ledger cannot be used.
    """

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0, *, faults: bool = False,
                 clock: Callable[[], Any] = now_cst) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the virtual platform listens on this computer only (127.0.0.1, ::1), not {host!r}")
        self.ledger = Ledger(db_path, clock=clock)
        #: the remote security module (central/keyservice.py)
        self.keys = KeyService()
        self.faults = faults
        #: the faults set, by the transaction they aim at (None: any request)
        self.fault_plan: dict[str | None, Fault] = {}
        self.fault_lock = threading.Lock()
        self.faulty_requests = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.socket = socket.socket(family, socket.SOCK_STREAM)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(512)
            bound, bound_port = self.socket.getsockname()[:2]
        except BaseException:
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
                  retry_after: str | None = None, infno: str | None = None) -> None:
        """Misbehave for the next ``count`` requests (None: until told otherwise), or the next ``count``
        carrying transaction ``infno`` (a call's message, a batch's first); ``fail`` answers carry
        ``Retry-After: retry_after`` when given. ``ok`` clears the fault set for ``infno`` (docs/platform.md,
        "Fault switches")."""
        if not self.faults:
            raise PermissionError("the fault switches are off: start the virtual platform with faults enabled")
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}: one of {', '.join(MODES)}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise ValueError("seconds must be a number from 0 to 3600")
        if infno is not None and not isinstance(infno, str):
            raise ValueError("infno must be a transaction code")
        with self.fault_lock:
            if mode == "ok":
                self.fault_plan.pop(infno, None)
            else:
                self.fault_plan[infno] = Fault(mode, count, float(seconds),
                                               None if retry_after is None else str(retry_after)[:64])

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

    # --- handlers ---------------------------------------------------------------------------------

    async def _ledger(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def _authenticated(self, request: Request, *, spend: bool = True) -> tuple[str, str, bytes]:
        """(institution, paasid, body) of a signed request, the body read only after the signature holds.
        ``spend``: use its nonce up now (:class:`Forbidden` when used before); a call's nonce is used up
        in the ledger's transaction instead, or by :meth:`_refused` when it never gets that far."""
        institution, paasid = self.ledger.authenticate({k.lower(): v for k, v in request.headers.items()})
        if spend:
            await self._spend_nonce(paasid, request.headers.get("x-tif-nonce", ""))
        length = request.headers.get("content-length")
        if length is not None and (not length.isascii() or not length.isdigit() or int(length) > MAX_BODY):
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} bytes")
        return institution, paasid, bytes(body)

    async def _spend_nonce(self, paasid: str, nonce: str) -> None:
        """Use a request's nonce up in a transaction of its own; :class:`Forbidden` when used before."""
        def spend() -> None:
            with self.ledger.transaction() as conn:
                self.ledger._use_nonce(conn, paasid, nonce)

        await self._ledger(spend)

    async def _refused(self, request: Request, status: int, message: str) -> Response:
        """A signed call refused before the ledger's transaction kept its nonce (a bad body, 401, 422):
        the nonce is used up all the same, since the signature covers no body and the same headers
        must not carry another one (HTTP 403 instead when the nonce was used before)."""
        try:
            await self._spend_nonce(request.headers.get("x-tif-paasid", ""), request.headers.get("x-tif-nonce", ""))
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err))
        return _error(status, message)

    async def _call(self, request: Request) -> Response | None:
        try:
            institution, paasid, body = await self._authenticated(request, spend=False)
            messages, single = parse_request(request.url.path, body)
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err))
        except BadRequest as err:
            return await self._refused(request, err.status, str(err))
        except ClientDisconnect:  # the caller hung up mid-body: its headers are used up all the same
            await self._refused(request, HTTPStatus.BAD_REQUEST, "the client hung up")
            return None
        fault = self.take_fault(_first_infno(body) if self.fault_plan else None)
        if fault.mode == "fail":  # nothing processed, the nonce used up (the headers carry nothing more)
            later = {"Retry-After": fault.retry_after} if fault.retry_after else None
            refused = await self._refused(request, HTTPStatus.SERVICE_UNAVAILABLE, "service unavailable (told to fail)")
            return refused if refused.status_code == HTTPStatus.FORBIDDEN else _error(
                HTTPStatus.SERVICE_UNAVAILABLE, "service unavailable (told to fail)", later)
        nonce = (paasid, request.headers.get("x-tif-nonce", ""))
        try:
            answers = await self._ledger(lambda: self.ledger.process(institution, messages, nonce=nonce,
                                                                     batch=not single))
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err))
        except Unsigned as err:
            return await self._refused(request, HTTPStatus.UNAUTHORIZED, str(err))
        except Unanswerable as err:
            return await self._refused(request, HTTPStatus.UNPROCESSABLE_ENTITY, str(err))
        if fault.mode == "stall":
            await asyncio.sleep(fault.seconds)
        if fault.mode == "drop":
            return None
        if fault.mode == "garbage":
            return Response(GARBAGE[self.faulty_requests % len(GARBAGE)], media_type="application/json")
        return _json(answers[0] if single else {"results": answers})

    async def _signed_json(self, request: Request) -> Any:
        """A signed request's JSON body (its nonce used up), or the error :class:`Response` to send."""
        try:
            _institution, _paasid, body = await self._authenticated(request)
            return parse_json(body)
        except Forbidden as err:
            return _error(HTTPStatus.FORBIDDEN, str(err))
        except BadRequest as err:
            return _error(err.status, str(err))

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
            self.set_fault(**payload)
        except (TypeError, ValueError) as err:
            return _error(HTTPStatus.BAD_REQUEST, str(err))
        return _json({"mode": payload.get("mode", "ok")})

    async def _stats(self, request: Request) -> Response | None:
        return _json({"messages": self.ledger.count(), "repeats": self.ledger.repeats,
                      "faulty_requests": self.faulty_requests})


def _json(body: Any) -> Response:
    return Response(json.dumps(body, ensure_ascii=False).encode(), media_type="application/json; charset=utf-8")
