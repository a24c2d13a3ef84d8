"""The reference central service: what the uploader talks to in development and tests.

DESIGN.md, "The central service": accepts batches over HTTP on loopback, dedupes on msgid permanently
(its own SQLite file, so across restarts: an accepted msgid is answered as the first time, a rejected
one is judged again), answers per item, and can be told to fail, stall, return
garbage or drop the connection. The HTTP API, the answers and the fault modes are in
docs/central-api.md; the envelope is the platform's (central-service.md).

- ``POST /api/call``: one envelope -> one platform response (used for 9001 sign-in).
- ``POST /api/batch``: ``{"messages": [envelope, ...]}`` -> ``{"results": [response + "msgid"]}``;
  HTTP 401 (nothing processed) when a message carries an unknown ``sign_no``; HTTP 422 (nothing
  processed) when a message has no msgid, so no per-item answer could name it.
- ``POST /_control``: ``{"mode": "ok|fail|stall|garbage|drop", "count": n, "seconds": s,
  "retry_after": "5" or an HTTP-date}`` (``retry_after`` goes with ``fail``).
- ``GET /_stats``: messages stored, repeats answered from the ledger, faulty requests.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import socket
import sqlite3
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from terminal.envelope import (
    AMOUNTS,  # each settlement's amounts in input.data, checked as yuan with two decimals
    CST,
    INF_TIME,
    INFNO,
    REGION_RE,
    RecordError,
    msgid_time,
    parse_yuan,
)

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
MAX_BODY = 16 * 1024 * 1024
#: seconds an idle keep-alive connection is kept open
IDLE_TIMEOUT = 30
#: how often the serving loop checks for stop() (seconds)
POLL = 0.05
REQUIRED = (
    "infno", "msgid", "mdtrtarea_admvs", "insuplc_admdvs", "opter_type", "opter", "opter_name",
    "inf_time", "fixmedins_code", "fixmedins_name", "sign_no", "input",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, digest TEXT NOT NULL,
    envelope TEXT NOT NULL, response TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signins (sign_no TEXT PRIMARY KEY, fixmedins_code TEXT, opter TEXT, at TEXT);
"""


class Rejected(Exception):
    """One message is invalid: it is answered with infcode -1 and this message."""


class Unsigned(Exception):
    """A message carries a sign_no the service never issued: the batch is refused with HTTP 401."""


class Unanswerable(Exception):
    """A message has no msgid, so no per-item answer can name it: the batch is refused with HTTP 422."""


class BadRequest(Exception):
    """A request that is not a call or a batch (central-service.md, "HTTP"): answered with ``status``."""

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


def digest(message: dict[str, Any]) -> str:
    """What makes two messages "the same": every field but the session's ``sign_no``."""
    body = {k: v for k, v in message.items() if k != "sign_no"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Ledger:
    """The service's SQLite store: every answered message (dedupe) and every sign-in. An accepted
    message is final (its repeat gets the first answer); a rejected one is judged again when it comes
    back, and the row holds the latest judgement."""

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the ledger at ``path``; :class:`sqlite3.Error` when it is damaged, not a
        database or cannot be opened (the connection is closed again)."""
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            self.serial = self.conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        except BaseException:
            self.conn.close()
            raise
        self.lock = threading.Lock()
        #: messages answered from the ledger (a repeated msgid): the uploader's retries
        self.repeats = 0

    def close(self) -> None:
        self.conn.close()

    def _now(self) -> str:
        return dt.datetime.now(CST).strftime(INF_TIME)

    def _refmsgid(self) -> str:
        self.serial += 1
        return f"CENTRAL{dt.datetime.now(CST):%Y%m%d%H%M%S}{self.serial:09d}"

    def known_sign_no(self, sign_no: str) -> bool:
        return self.conn.execute("SELECT 1 FROM signins WHERE sign_no = ?", [sign_no]).fetchone() is not None

    def process(self, messages: list[Any]) -> list[dict[str, Any]]:
        """Answer each message, deduping on msgid; one transaction for the whole batch."""
        nameless = [i for i, m in enumerate(messages) if not isinstance(m, dict) or not isinstance(m.get("msgid"), str)]
        if nameless:
            raise Unanswerable(f"message {nameless[0] + 1} of the batch has no msgid: no answer could name it")
        with self.lock:
            unsigned = [m for m in messages if isinstance(m, dict) and m.get("infno") != "9001"
                        and not self.known_sign_no(str(m.get("sign_no", "")))]
            if unsigned:
                raise Unsigned(f"sign_no {unsigned[0].get('sign_no')!r} unknown: sign in first (9001)")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                answers = [self._answer(m) for m in messages]
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return answers

    def _answer(self, message: Any) -> dict[str, Any]:
        msgid = message.get("msgid") if isinstance(message, dict) else None
        if isinstance(msgid, str):
            row = self.conn.execute("SELECT digest, response FROM messages WHERE msgid = ?", [msgid]).fetchone()
            first = json.loads(row[1]) if row else None
            # only an acceptance is final; a rejected msgid is judged again (its cause may have been fixed
            # and the record revived with 'sscard queue retry-dead'), and its row replaced
            if first is not None and first.get("infcode") == 0:
                if row[0] == digest(message):
                    self.repeats += 1
                    return first  # a repeat: the same answer as the first time
                return self._response(msgid, -1, "msgid already used for a different message")
        try:
            output = self._execute(message)
        except Rejected as err:
            response = self._response(msgid, -1, str(err))
        else:
            response = self._response(msgid, 0, "", output)
        if _valid_msgid(msgid):
            self.conn.execute(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                [msgid, str(message.get("infno")), digest(message), json.dumps(message, ensure_ascii=False),
                 json.dumps(response, ensure_ascii=False), self._now()],
            )
        return response

    def _response(self, msgid: Any, infcode: int, err_msg: str, output: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "msgid": msgid,
            "infcode": infcode,
            "inf_refmsgid": self._refmsgid(),
            "refmsg_time": self._now(),
            "respond_time": self._now(),
            "err_msg": err_msg,
            "output": output or {},
        }

    def _execute(self, message: Any) -> dict[str, Any]:
        """Validate one message and produce its output (docs/central-api.md, "HTTP")."""
        if not isinstance(message, dict):
            raise Rejected("a message must be a JSON object")
        missing = [f for f in REQUIRED if f not in message]
        if missing:
            raise Rejected(f"missing fields: {', '.join(missing)}")
        not_text = [f for f in REQUIRED if f != "input" and not isinstance(message[f], str)]
        if not_text:
            raise Rejected(f"{', '.join(not_text)} must be text")
        infno, msgid, body = message["infno"], message["msgid"], message["input"]
        if infno not in INFNO:
            raise Rejected(f"unknown infno {infno!r}")
        if not isinstance(body, dict):
            raise Rejected("input must be a JSON object")
        try:
            msgid_time(msgid)
            dt.datetime.strptime(str(message["inf_time"]), INF_TIME)
            data = body.get("data")
            for key in AMOUNTS.get(infno, ()):
                parse_yuan(data.get(key) if isinstance(data, dict) else None)
        except (RecordError, ValueError) as err:
            raise Rejected(str(err)) from None
        if msgid[:12] != message["fixmedins_code"]:
            raise Rejected("msgid does not start with the institution code")
        for key in ("mdtrtarea_admvs", "insuplc_admdvs"):
            if not REGION_RE.fullmatch(str(message[key])):
                raise Rejected(f"{key} must be a 6-digit region code")
        if infno == "9001":
            sign_no = f"S{msgid}"
            self.conn.execute("INSERT OR IGNORE INTO signins VALUES (?, ?, ?, ?)",
                              [sign_no, message["fixmedins_code"], message["opter"], self._now()])
            return {"signinoutb": {"sign_time": self._now(), "sign_no": sign_no}}
        return {"cross_region": message["insuplc_admdvs"] != message["mdtrtarea_admvs"]}

    def count(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT count(*) FROM messages").fetchone()[0]

    def message(self, msgid: str) -> dict[str, Any] | None:
        """The envelope first received under ``msgid``, or None."""
        with self.lock:
            row = self.conn.execute("SELECT envelope FROM messages WHERE msgid = ?", [msgid]).fetchone()
        return json.loads(row[0]) if row else None


def _valid_msgid(msgid: Any) -> bool:
    """Only a well-formed msgid is stored: it is the dedupe key."""
    try:
        msgid_time(msgid)
    except RecordError:
        return False
    return True


class _Server(ThreadingHTTPServer):
    """An HTTP server whose clients may hang up mid-request (an uploader killed or timed out): that is
    one log line, not socketserver's traceback on stderr."""

    def handle_error(self, request: Any, client_address: tuple[str, int]) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError)):
            log.info("client %s:%s hung up: %s", *client_address[:2], err)
        else:
            log.error("error serving %s:%s", *client_address[:2], exc_info=True)


class CentralService:
    """The service on ``host:port`` (port 0: any free port), storing its ledger at ``db_path``."""

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ledger = Ledger(db_path)
        self.fault = Fault()
        self.fault_lock = threading.Lock()
        self.stopping = threading.Event()
        self.faulty_requests = 0
        try:
            self.server = _Server((host, port), _handler(self))
        except BaseException:
            self.ledger.close()
            raise
        self.server.daemon_threads = False  # server_close() joins the handlers before the ledger closes
        self.connections: set[socket.socket] = set()
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def wait(self, stop: threading.Event) -> None:
        """Serve in a background thread until ``stop`` is set, then stop cleanly (``sscard central serve``)."""
        self.start()
        try:
            while not stop.wait(POLL * 10):
                pass
        finally:
            self.stop()

    def start(self) -> CentralService:
        """Serve in a background thread."""
        self.thread = threading.Thread(target=self.server.serve_forever, args=(POLL,), name="central", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        if self.thread:
            self.thread.join()
        self.close()

    def close(self) -> None:
        """Hang up every open connection (a client must not reach a closed ledger), then close."""
        self.stopping.set()
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server.server_close()
        self.ledger.close()

    def __enter__(self) -> CentralService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_fault(
        self, mode: str = "ok", count: int | None = None, seconds: float = 30.0, retry_after: str | None = None
    ) -> None:
        """Misbehave for the next ``count`` requests (None: until told otherwise); ``fail`` answers
        carry ``Retry-After: retry_after`` when given (docs/central-api.md, "Fault modes")."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}: one of {', '.join(MODES)}")
        with self.fault_lock:
            self.fault = Fault(mode, count, seconds, None if retry_after is None else str(retry_after))

    def take_fault(self) -> Fault:
        """The fault for this request, counting it down."""
        with self.fault_lock:
            fault = self.fault
            if fault.mode == "ok":
                return fault
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.fault = Fault()
            self.faulty_requests += 1
            return Fault(fault.mode, None, fault.seconds, fault.retry_after)

    def garbage(self) -> bytes:
        return GARBAGE[self.faulty_requests % len(GARBAGE)]


def _handler(service: CentralService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "sscard-central/1"
        timeout = IDLE_TIMEOUT
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

        def setup(self) -> None:
            super().setup()
            service.connections.add(self.connection)

        def finish(self) -> None:
            service.connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"infcode": -1, "err_msg": message}, headers)

        def _body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
            if not 0 <= length <= MAX_BODY:
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a request body is at most {MAX_BODY} bytes")
            return self.rfile.read(length)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path != "/_stats":
                return self._error(HTTPStatus.NOT_FOUND, "not found")
            self._send(HTTPStatus.OK, {"messages": service.ledger.count(), "repeats": service.ledger.repeats,
                                       "faulty_requests": service.faulty_requests})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = self._body()
                if self.path == "/_control":
                    return self._control(parse_json(body))
                messages, single = parse_request(self.path, body)
            except BadRequest as err:
                return self._error(err.status, str(err))
            self._serve(messages, single)

        def _serve(self, messages: list[Any], single: bool) -> None:
            fault = service.take_fault()
            if fault.mode == "fail":
                later = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return self._error(HTTPStatus.SERVICE_UNAVAILABLE, "service unavailable (told to fail)", later)
            try:
                answers = service.ledger.process(messages)
            except Unsigned as err:
                return self._error(HTTPStatus.UNAUTHORIZED, str(err))
            except Unanswerable as err:
                return self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(err))
            if fault.mode == "stall" and service.stopping.wait(fault.seconds):
                return
            if fault.mode == "drop":
                self.close_connection = True
                return
            if fault.mode == "garbage":
                return self._send(HTTPStatus.OK, service.garbage())
            self._send(HTTPStatus.OK, answers[0] if single else {"results": answers})

        def _control(self, payload: Any) -> None:
            try:
                service.set_fault(**payload)
            except (TypeError, ValueError) as err:
                return self._error(HTTPStatus.BAD_REQUEST, str(err))
            self._send(HTTPStatus.OK, {"mode": service.fault.mode})

    return Handler
