"""The uploader: sends the outbox to the central service in batches, at-least-once, deduped by msgid.

docs/design.md item 5, docs/reference/platform.md; the HTTP API and the retry rules are in docs/central-api.md
("Delivery"). A batch is the oldest due records, claimed (``sending``) in one short transaction that
commits before the HTTP call. Each answer settles its record: infcode 0 sent, negative dead with the
reason. A batch the service refuses as invalid (HTTP 400/413/422 with the platform's own JSON error) is
split in halves until the one bad record is found and goes dead alone, so a poison record never blocks
the rest. Anything short of an answer (refused connection, timeout, 5xx, 429, an error page that is not
the platform's JSON, a reply that is not the documented JSON, larger than an answer can be, or whose
per-record answers do not match the records sent one for one) puts every record of the batch back to
pending, due after a capped exponential backoff with full jitter (stored in the row, so it survives
restarts), never before the service's Retry-After. A repeat is sent unchanged and the service answers
it as the first time. docs/security.md, "Hostile platform answers", has what a lying platform or proxy
can and cannot do.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import email.utils
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpcore
import httpx

from sscard.apdu.errors import SSCardError, one_line
from sscard.message.envelope import MSGID_TAKEN, Credentials, Envelope, encode, gateway_headers, iso_time, with_sign_no
from sscard.message.infno import Infno
from sscard.terminal.errors import ConfigError
from sscard.terminal.gateway import test_credentials
from sscard.terminal.queue import Outbox, Outcome, QueuedRecord, cst_time

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_BATCH = 100
DEFAULT_TIMEOUT = 10.0
#: hosts a plain-http URL may name: the reference service on this computer (docs/security.md)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


#: what :func:`shown_url` cuts from a URL httpx cannot parse: from ``//`` to the last ``@`` before any
#: query or fragment (more than the user name and password, never less)
_USERINFO = re.compile(r"//[^?#]*@")


def shown_url(url: str) -> str:
    """``url`` without its user name and password (``http://user:secret@host/`` -> ``http://host/``):
    the only form in which a central service URL is printed, logged or put in an error message
    (convention: docs/security.md, "Hostile platform answers"). A URL that does not parse loses
    everything from ``//`` to its last ``@``."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return _USERINFO.sub("//", str(url), count=1)
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def check_central_url(url: str) -> str:
    """The central service URL, or :class:`ConfigError`: records carry ID numbers and health data,
    so they travel over https (certificates checked); plain http only to this computer, unless
    ``$SSCARD_ALLOW_PLAIN_HTTP=1`` (a site's own encrypted network, its decision: docs/security.md).
    Errors show the URL without its user name and password (:func:`shown_url`)."""
    shown = shown_url(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as err:
        # httpx's reason quotes the part it could not read, which may be a piece of the password
        reason = f" ({err})" if shown == url else ""
        raise ConfigError(f"The central service URL {shown!r} is not a valid URL{reason}") from None
    if parsed.scheme == "https" and parsed.host:
        return url
    if parsed.scheme == "http" and parsed.host:
        if parsed.host in LOOPBACK or os.environ.get("SSCARD_ALLOW_PLAIN_HTTP") == "1":
            return url
        raise ConfigError(
            f"The central service URL must start with https:// (plain http is allowed only to this computer): {shown}"
        )
    raise ConfigError(f"The central service URL must be https://HOST[:PORT] : {shown!r}")
#: how often ``follow`` looks for new records when nothing is due sooner (seconds)
DEFAULT_INTERVAL = 5.0
#: HTTP statuses that mean "this batch is invalid": bisect to find the record (docs/central-api.md), when
#: the body is the platform's own JSON error (:func:`platform_error`); any other body is a service error
INVALID_BATCH = frozenset({400, 413, 422})
#: **convention** the largest answer to a batch read, counted after decompression: a batch is at most 500
#: records (the platform's MAX_BATCH, ``--batch-size`` 1-500), and one record's answer is ~330 bytes on the
#: virtual platform (infcode, inf_refmsgid, two times, err_msg, a registration's mdtrt_id); 8 KiB an item
#: leaves room for 25 times that, e.g. an err_msg of 1,000 Chinese characters as \uXXXX escapes (6 KB).
#: 500 x 8 KiB = 3.9 MiB, taken as 4 MiB. A longer answer is not read on: a protocol error, the batch waits.
MAX_BATCH_ANSWER = 4 * 1024 * 1024
#: **convention** the largest answer to one call (``/api/call``, the key service), after decompression:
#: the longest is a 3201 reconciliation listing a day's settlements (``setl_list``, ~260 bytes each on the
#: virtual platform); 16 MiB holds 64,000 of them for one insurance and clearing type, and any batch answer
MAX_CALL_ANSWER = 16 * 1024 * 1024
#: the most of an error answer (any HTTP status but 200) read: only its first 200 characters are shown,
#: and the platform's own JSON error is a few hundred bytes; the rest of a longer page is not read
MAX_ERROR_PAGE = 64 * 1024
#: what the uploader asks for and undoes (RFC 9110 s8.4.1): each step of the undoing yields at most
#: :data:`_INFLATE_STEP` bytes, so a compressed answer is never inflated whole (a gzip bomb is cut off)
ACCEPT_ENCODING = "gzip, deflate"
_INFLATE_STEP = 64 * 1024
#: zlib's ``wbits`` for each Content-Encoding read (deflate is zlib's format, RFC 9110 s8.4.1.2)
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
#: the longest wait a service's Retry-After can impose (seconds): a longer one is taken as this much,
#: so a wrong header cannot park the queue for years (docs/central-api.md, "Delivery")
MAX_RETRY_AFTER = 3600.0
#: Retry-After delay-seconds: ASCII digits only (``str.isdigit`` also takes "²" and other scripts' digits)
_DELAY_SECONDS = re.compile(r"[0-9]+")


class CentralError(SSCardError):
    """The platform could not be reached or did not answer properly."""

    #: seconds the service asked us to wait (Retry-After), if it said
    retry_after: float | None = None
    #: False when the request certainly did nothing at the platform (it never reached it, or the
    #: platform refused it before any processing); True when it may have been processed and its
    #: answer lost (an online call must then be reversed, never sent again)
    maybe_processed: bool = True


@contextlib.contextmanager
def ledger_errors(db: object) -> Iterator[None]:
    """Opening the virtual platform's ledger at ``db``: an SQLite failure becomes a :class:`CentralError`
    naming the file, in a clerk's words."""
    from sscard.terminal.queue import sqlite_reason

    try:
        yield
    except sqlite3.Error as err:
        raise CentralError(f"The virtual platform's ledger {db} cannot be used: {sqlite_reason(err)}") from None


class CentralUnavailableError(CentralError):
    """The platform is unreachable or did not answer."""

    def __init__(self, message: str | None = None, retry_after: float | None = None, *,
                 maybe_processed: bool = True) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed


class CentralProtocolError(CentralError):
    """The central service answered something that is not its documented JSON."""


class NotSignedInError(CentralError):
    """The central service does not know this terminal's sign-in (9001)."""

    maybe_processed = False


class CentralAuthError(CentralError):
    """The platform's gateway refused this terminal's credentials (HTTP 403)."""

    maybe_processed = False

    def __init__(self, reason: str) -> None:
        super().__init__(f"The platform's gateway refused this terminal's credentials ({reason}): check "
                         "[central] credentials and the computer's clock. Records stay in the queue.")


class CentralRefusedError(CentralError):
    """The central service refused the whole batch as invalid (HTTP 400/413/422)."""

    maybe_processed = False

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"The central service refused the batch (HTTP {status}): {reason}")
        self.reason = f"HTTP {status}: {reason}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 s10.2.3) as seconds from ``now``: delay-seconds or an HTTP-date.

    None when absent or unreadable; never negative, never more than :data:`MAX_RETRY_AFTER`.
    Delay-seconds are ASCII digits only.
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        # more than 9 digits is past the ceiling anyway (and int() refuses thousands of digits)
        return MAX_RETRY_AFTER if len(value) > 9 else min(float(int(value)), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        wait = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, wait), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: the n-th failed attempt waits a uniformly random
    time in [0, min(cap, base * 2**(n-1))] seconds, and never less than the service's Retry-After, itself
    taken as at most ``max_retry_after`` (docs/central-api.md, "Delivery")."""

    base: float = 2.0
    cap: float = 600.0
    max_retry_after: float = MAX_RETRY_AFTER

    def delay(self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones."""
        ceiling = min(self.cap, self.base * 2 ** min(max(attempts - 1, 0), 60))
        jittered = (rng or random).uniform(0, ceiling)
        if retry_after is None or math.isnan(retry_after):
            return jittered
        return max(jittered, min(retry_after, self.max_retry_after))


class Stop(Protocol):
    """What stops :meth:`Uploader.follow`: a :class:`threading.Event` from another thread, or, in a
    command stopped by a signal, terminal/cli/signals.py's flag (an Event is not safe there)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class UploadReport:
    """What one :meth:`Uploader.drain` did: records sent and dead, records still unconfirmed."""

    sent: int = 0
    dead: int = 0
    pending: int = 0
    batches: int = 0
    error: str | None = None
    #: when the next unconfirmed record is due (ISO, Beijing time), None when nothing waits
    next_attempt: str | None = None
    #: the error that stopped the drain (``error`` is its text), for its kind (docs/json.md codes)
    failure: CentralError | None = field(default=None, repr=False, compare=False)

    def counts(self) -> dict[str, Any]:
        """What was done and what waits, for a ``--json`` result (the failure is its error object)."""
        return {"sent": self.sent, "dead": self.dead, "pending": self.pending, "batches": self.batches,
                "next_attempt": self.next_attempt}


#: the monotonic time by which the HTTP call in progress in this thread must be complete (None: no limit)
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("sscard_central_deadline", default=None)


def _until_deadline(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` for one socket operation, cut to what is left of the current call's deadline;
    ``error`` (an httpcore timeout, which httpx reports as its own) once the deadline has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits no longer than the current call's deadline: httpx's
    own timeouts are per socket operation, so a service trickling its answer a byte at a time would
    otherwise keep one call alive indefinitely."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _until_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _until_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with :class:`_DeadlineStream` connections."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _enforce_deadlines(client: httpx.Client) -> bool:
    """Give ``client``'s connection pools the deadline-aware backend; False when it has none we know
    (a custom transport): then only the answer's body is checked against the deadline, chunk by chunk.
    httpx has no public hook for this; the pool's ``_network_backend`` is read for each new connection."""
    done = False
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            if not isinstance(backend, _DeadlineBackend):
                pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
            done = True
    return done


class CentralClient:
    """HTTP to the platform at ``url``: one call, or one batch (docs/platform.md, "HTTP"), each request
    signed for the gateway with ``credentials`` (:func:`message.envelope.gateway_headers`).

    Each call must be over (connected, sent, the whole answer read) within ``timeout`` seconds, and
    before ``deadline`` (a :func:`time.monotonic` time, e.g. the end of a batch's delivery) when set;
    otherwise it is :class:`CentralUnavailableError`, as for a service that does not answer. An answer
    is read at most :data:`MAX_CALL_ANSWER` (a batch's :data:`MAX_BATCH_ANSWER`) bytes far, counted
    after decompression. ``url`` is the URL without its user name and password (:func:`shown_url`):
    those go as HTTP Basic auth only.
    """

    def __init__(self, url: str, *, credentials: Credentials, timeout: float = DEFAULT_TIMEOUT,
                 client: httpx.Client | None = None) -> None:
        parsed = httpx.URL(check_central_url(url))
        #: a user name and password in the URL (a proxy's), sent as HTTP Basic auth as httpx would, and
        #: kept out of ``url``, so that no message, log line or httpx log of a request shows them
        self.auth = httpx.BasicAuth(parsed.username, parsed.password) if parsed.userinfo else None
        self.url = shown_url(url).rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self.http = client or httpx.Client(timeout=timeout)
        #: :func:`time.monotonic` time by which calls must be over (the uploader's batch deadline), or None
        self.deadline: float | None = None
        if not _enforce_deadlines(self.http):
            log.debug("HTTP client without a known connection pool: the deadline is checked on the body only")

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()

    def post(self, path: str, payload: dict[str, Any] | str, *, max_answer: int = MAX_CALL_ANSWER) -> Any:
        """One signed request to ``path`` (``/api/call``, ``/api/batch``, ``/api/keys/...``): its JSON answer.

        The answer is read at most ``max_answer`` bytes far, decompressed (:func:`read_answer`): a longer
        one is :class:`CentralProtocolError`. An error status other than the platform's own is
        :class:`CentralUnavailableError`, never a refusal of what was sent (:func:`platform_error`).
        """
        start = time.monotonic()
        limit = start + self.timeout if self.deadline is None else min(start + self.timeout, self.deadline)
        within = f"within {self.timeout:g} s" if limit == start + self.timeout else "before its batch's deadline"
        token = _DEADLINE.set(limit)
        try:
            headers = {"Content-Type": "application/json", "Accept-Encoding": ACCEPT_ENCODING,
                       **gateway_headers(self.credentials)}
            content = (payload if isinstance(payload, str) else encode(payload)).encode()
            with self.http.stream("POST", self.url + path, content=content, headers=headers,
                                  auth=self.auth or httpx.USE_CLIENT_DEFAULT) as answer:
                status, retry_after = answer.status_code, answer.headers.get("Retry-After")
                body, whole = read_answer(answer, max_answer if status == 200 else MAX_ERROR_PAGE, limit)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:  # no byte of the request went out
            raise CentralUnavailableError(
                f"The platform at {self.url} is unreachable ({type(err).__name__})", maybe_processed=False
            ) from None
        except httpx.TimeoutException as err:
            raise CentralUnavailableError(
                f"The platform at {self.url} did not answer {within} ({type(err).__name__})"
            ) from None
        except httpx.HTTPError as err:
            raise CentralUnavailableError(
                f"The platform at {self.url} is unreachable or hung up ({type(err).__name__})"
            ) from None
        finally:
            _DEADLINE.reset(token)
        if status == 200 and not whole:
            raise CentralProtocolError(
                f"The platform at {self.url} answered more than {max_answer / 2**20:g} MB, more than any "
                "answer it gives: the rest was not read and none of it was used")
        if status == 401:
            raise NotSignedInError()
        if status == 403:
            raise CentralAuthError(_err_msg(body))
        refusal = platform_error(body) if status in INVALID_BATCH and whole else None
        if refusal is not None:
            raise CentralRefusedError(status, refusal)
        if status in INVALID_BATCH:  # a proxy's or gateway's page: it says nothing about what was sent
            raise CentralUnavailableError(
                f"The platform at {self.url} answered HTTP {status} without the platform's own error answer "
                f"(a proxy or gateway on the way?): {_err_msg(body)}", parse_retry_after(retry_after))
        if status != 200:
            raise CentralUnavailableError(f"The platform answered HTTP {status}", parse_retry_after(retry_after))
        return parse_reply(body)

    def call(self, message: dict[str, Any] | str) -> dict[str, Any]:
        """One message (a dict, or its wire text), one platform response (``infcode``, ``err_msg``,
        ``output``...)."""
        response = self.post("/api/call", message)
        if not isinstance(response, dict) or type(response.get("infcode")) is not int:
            raise CentralProtocolError()
        return response

    def batch(self, messages: list[dict[str, Any]]) -> list[Outcome]:
        """Send messages as one batch; one answer for each message sent (:func:`batch_outcomes`), the
        answer read at most :data:`MAX_BATCH_ANSWER` bytes far."""
        response = self.post("/api/batch", {"messages": messages}, max_answer=MAX_BATCH_ANSWER)
        return batch_outcomes(response, {m.get("msgid") for m in messages})


class _Inflater:
    """A Content-Encoding undone (gzip, or deflate: zlib's format, RFC 9110 s8.4.1) a bounded step at a
    time: :meth:`feed` yields pieces of at most :data:`_INFLATE_STEP` bytes, so the caller can stop a
    gzip bomb after its first megabytes instead of holding what it inflates to (httpx's own decoders
    inflate each network read whole: 64 KiB of gzipped zeros are 64 MiB)."""

    def __init__(self, wbits: int) -> None:
        self._zlib = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The bytes ``data`` inflates to, in pieces; nothing after the end of the compressed stream."""
        while not self._zlib.eof:
            piece = self._zlib.decompress(data, _INFLATE_STEP)
            data = self._zlib.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < _INFLATE_STEP:  # a full piece may leave output pending in zlib
                return


def _identity(data: bytes) -> Iterator[bytes]:
    """An answer without Content-Encoding: its bytes as read."""
    yield data


def read_answer(answer: httpx.Response, limit: int, deadline: float) -> tuple[bytearray, bool]:
    """The body of a streamed ``answer``, decompressed as its Content-Encoding says, and whether that is
    all of it: reading stops as soon as it passes ``limit`` bytes (counted after decompression), and
    then its first ``limit`` bytes come with False (never copied: a bytearray). Raw bytes are read
    (``iter_raw``: httpx would inflate each network read whole) and inflated a step at a time by
    :class:`_Inflater`; :class:`httpx.ReadTimeout` once the ``deadline`` (:func:`time.monotonic`) has
    passed; :class:`CentralProtocolError` for an encoding other than :data:`ACCEPT_ENCODING`'s or a
    compressed stream that is not one."""
    codings = [c.strip().lower() for c in answer.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > 1 or (codings and codings[0] not in _WBITS):
        raise CentralProtocolError(f"The platform answered in an encoding this terminal did not ask for "
                                   f"({one_line(', '.join(codings))[:60]}): none of it was used")
    pieces = _Inflater(_WBITS[codings[0]]).feed if codings else _identity
    body = bytearray()
    try:
        for raw in answer.iter_raw():
            for piece in pieces(raw):
                body += piece
                if len(body) > limit:
                    del body[limit:]
                    return body, False
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the call's deadline has passed", request=answer.request)
    except zlib.error:
        raise CentralProtocolError(f"The platform's answer is not the {codings[0]} it says it is: "
                                   "none of it was used") from None
    return body, True


def platform_error(body: bytes | bytearray) -> str | None:
    """The reason of the platform's own error answer (``{"infcode": <negative>, "err_msg": "..."}``,
    docs/central-api.md, "HTTP"), None for any other body: an error page of a proxy or gateway says
    nothing about the records sent, so it never makes one dead (docs/security.md)."""
    try:
        answer = parse_reply(body)
    except CentralProtocolError:
        return None
    if not isinstance(answer, dict) or type(answer.get("infcode")) is not int or answer["infcode"] >= 0:
        return None
    reason = answer.get("err_msg")
    shown = one_line(reason)[:200] if isinstance(reason, str) else ""
    return shown or None


def parse_reply(body: bytes | bytearray) -> Any:
    """A reply body as JSON; :class:`CentralProtocolError` when it is not (bad UTF-8, bad JSON, nested
    too deep for the parser, text that is no Unicode, such as a lone surrogate escape)."""
    try:
        reply = json.loads(body)
        # a lone surrogate ("\ud800") parses, but no UTF-8 text (the journal, a seal) can hold it
        json.dumps(reply, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeDecodeError and UnicodeEncodeError are ValueErrors
        raise CentralProtocolError() from None
    return reply


def batch_outcomes(response: Any, sent: set[Any]) -> list[Outcome]:
    """The per-item answers of a batch reply (docs/central-api.md, "HTTP") for the msgids ``sent``.

    **convention** the reply is taken whole or not at all: exactly one item for each msgid sent, each
    an object with that text msgid and an integer infcode (not a boolean) of 0 or below. Anything else
    (an item twice, say -1 then 0; a msgid that was not sent; one missing; more items than sent; an
    item of another shape) is :class:`CentralProtocolError`, raised before any record is marked, so
    every record of the batch stays pending (docs/security.md, "Hostile platform answers").
    """
    def unusable(what: str) -> CentralProtocolError:
        return CentralProtocolError(f"The platform's answer to the batch of {len(sent)} messages {what}: none of "
                                    "it was used, the records stay in the queue")

    results = response.get("results") if isinstance(response, dict) else None
    if not isinstance(results, list):
        raise unusable("is not its documented JSON (no list of results)")
    outcomes: dict[str, Outcome] = {}
    for item in results:
        msgid = item.get("msgid") if isinstance(item, dict) else None
        infcode = item.get("infcode") if isinstance(item, dict) else None
        if not isinstance(msgid, str) or type(infcode) is not int or infcode > 0:
            raise unusable("is not its documented JSON (an item without a text msgid and an integer infcode "
                           "of 0 or below)")
        if msgid not in sent:
            raise unusable(f"contradicts what was sent (it answers {msgid[:40]!r}, not in the batch)")
        if msgid in outcomes:
            raise unusable(f"contradicts itself (it answers {msgid} twice: infcode {outcomes[msgid].infcode}, "
                           f"then {infcode})")
        outcomes[msgid] = Outcome(msgid, infcode, str(item.get("err_msg") or "")[:500], item)
    if len(outcomes) < len(sent):
        raise unusable(f"answers only {len(outcomes)} of them")
    return list(outcomes.values())


def signin_number(response: dict[str, Any]) -> str | None:
    """The ``output.signinoutb.sign_no`` of a 9001 answer (docs/central-api.md, "HTTP"), or None when
    the answer does not have that shape (any level not an object, the number not non-empty text)."""
    output = response.get("output")
    signinoutb = output.get("signinoutb") if isinstance(output, dict) else None
    sign_no = signinoutb.get("sign_no") if isinstance(signinoutb, dict) else None
    return sign_no if isinstance(sign_no, str) and sign_no else None


def _err_msg(content: bytes | bytearray) -> str:
    """The service's ``err_msg`` from an error answer's body, else the start of the body, on one line
    (:func:`apdu.errors.one_line`: an error page's markup and escape sequences are not the clerk's screen's)."""
    try:
        body = parse_reply(content)
    except CentralProtocolError:
        return one_line(content[:200].decode("utf-8", "replace")) or "no reason given"
    return one_line(str(body.get("err_msg") if isinstance(body, dict) and body.get("err_msg") else body)[:200])


def fresh_msgid(attempt: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``attempt()`` (a call under a msgid just issued), made again, at most twice, while the platform
    answers ``MSGID_TAKEN``: another terminal used that msgid, nothing was done under it, and the next
    attempt issues the next one (docs/central-api.md, "msgid")."""
    for _ in range(2):
        response = attempt()
        if response["infcode"] != MSGID_TAKEN:
            return response
    return attempt()


class SignInRefusedError(CentralError):
    """The platform refused the operator's sign-in: nothing was sent under it."""

    maybe_processed = False


def sign_in(central: CentralClient, outbox: Outbox) -> str:
    """9001 operator sign-in with the station's operator and device (docs/platform.md, "9001"): the
    ``sign_no`` every later message of this session carries. :class:`CentralError` when refused (a
    sign-in moves nothing: it is never reversed, only asked again)."""
    station = outbox.require_station()

    def attempt() -> dict[str, Any]:
        envelope = Envelope(
            infno=Infno.SIGN_IN,
            msgid=outbox.next_msgid(),
            station=station,
            operator=station.operator,
            insured_region=station.region,
            time=outbox.clock(),
            input={"signIn": {"opter_no": station.operator.opter, "mac": "", "ip": "127.0.0.1"}},
        )
        return central.call(envelope.to_dict())

    try:
        response = fresh_msgid(attempt)
    except CentralRefusedError as err:  # a refused sign-in says nothing of the records: never a bisection
        raise SignInRefusedError(f"The platform refused the sign-in ({err.reason})") from None
    if response["infcode"] != 0:
        raise SignInRefusedError(f"The platform refused the sign-in: "
                                 f"{str(response.get('err_msg') or 'no reason given')[:300]}")
    sign_no = signin_number(response)
    if sign_no is None:
        raise CentralProtocolError("The platform accepted the sign-in but sent no sign_no"
                                   " (output.signinoutb.sign_no): records stay in the queue")
    log.info("signed in to %s", central.url)
    return sign_no


class Session:
    """One operator sign-in for a run of calls to ``central`` (the uploader's, a counter's): made at
    the first call, and made again once when the platform answers 401 (it forgot the sign-in; a 401
    means nothing was processed)."""

    def __init__(self, central: CentralClient, outbox: Outbox) -> None:
        self.central = central
        self.outbox = outbox
        self.sign_no: str | None = None

    def sign_in(self) -> str:
        """9001 (:func:`sign_in`); returns and keeps the ``sign_no``."""
        self.sign_no = sign_in(self.central, self.outbox)
        return self.sign_no

    def signed(self) -> str:
        """The ``sign_no``, signing in first when there is none yet."""
        return self.sign_no if self.sign_no is not None else self.sign_in()

    def run(self, call: Callable[[str], T]) -> T:
        """``call(sign_no)``, and once more with a new sign-in when the platform answers 401."""
        try:
            return call(self.signed())
        except NotSignedInError:
            log.info("sign-in expired: signing in again")
            return call(self.sign_in())


class Uploader:
    """Moves records from ``outbox`` to the service at ``url``. Not thread-safe: one per thread.

    ``lease``: how long a claimed batch stays ``sending`` before another uploader may take it again
    (default: three timeouts, at least a minute). A batch's whole delivery (sign-in, the batch, its
    halves) must be over within half the lease, each HTTP call within ``timeout``: a call still going
    then counts as no answer, so no other uploader can claim the batch while it is in flight.
    ``backoff``: the retry policy.
    """

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        *,
        batch_size: int = DEFAULT_BATCH,
        timeout: float = DEFAULT_TIMEOUT,
        lease: float | None = None,
        backoff: Backoff | None = None,
        client: httpx.Client | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.outbox = outbox
        if credentials is None:  # the virtual platform's TEST credentials of the queue's institution
            log.warning("uploading with the TEST gateway credentials: only the virtual platform accepts them")
            credentials = test_credentials(outbox.require_station().fixmedins_code)
        self.central = CentralClient(url, credentials=credentials, timeout=timeout, client=client)
        self.batch_size = batch_size
        self.lease = lease if lease is not None else max(60.0, 3 * timeout)
        #: seconds a batch's delivery may take, well within its lease (docs/central-api.md, "Delivery")
        self.delivery_time = self.lease / 2
        self.backoff = backoff or Backoff()
        self.session = Session(self.central, outbox)
        #: records given a new msgid so far (the platform said theirs was another message's)
        self.rekeyed = 0
        outbox.join_uploaders()

    def close(self) -> None:
        """Close the HTTP connections (the outbox belongs to the caller)."""
        self.central.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sign_no(self) -> str | None:
        return self.session.sign_no

    def sign_in(self) -> str:
        """9001 operator sign-in (:func:`sign_in`); returns and keeps the ``sign_no``."""
        return self.session.sign_in()

    def _send(self, records: list[QueuedRecord]) -> list[Outcome]:
        return self.session.run(lambda sign_no: self.central.batch([with_sign_no(r.envelope, sign_no) for r in records]))

    def _deliver(self, records: list[QueuedRecord]) -> tuple[list[Outcome], CentralError | None]:
        """Send ``records``; a batch refused as invalid is halved until the bad record stands alone and
        is answered dead with the service's reason. Stops at the first failure without an answer."""
        outcomes: list[Outcome] = []
        chunks = [records]
        while chunks:
            chunk = chunks.pop(0)
            try:
                outcomes += self._send(chunk)
            except CentralRefusedError as err:
                if len(chunk) == 1:
                    outcomes.append(Outcome(chunk[0].msgid, -1, f"refused by the central service ({err.reason})"))
                else:
                    half = len(chunk) // 2
                    chunks[:0] = [chunk[:half], chunk[half:]]
            except CentralError as err:
                return outcomes, err
        return outcomes, None

    def upload_batch(self, *, ignore_schedule: bool = False) -> tuple[int, int]:
        """Claim and send the oldest due batch; (sent, dead). 0, 0 when nothing is due.

        Raises :class:`CentralError` after scheduling the next attempt of every unanswered record.
        """
        records = self.outbox.claim(self.batch_size, self.lease, ignore_schedule=ignore_schedule)
        if not records:
            return 0, 0
        self.central.deadline = time.monotonic() + self.delivery_time
        try:
            outcomes, error = self._deliver(records)  # no transaction is open here
        except Exception as err:
            # a bug (say, a reply of a shape nobody checked): the batch goes back to pending with its
            # backoff rather than waiting out its lease as 'sending'; the error itself is not hidden
            log.debug("upload stopped by an unexpected error; the batch goes back to pending", exc_info=True)
            now = self.outbox.now()
            self.outbox.retry_later([(r.msgid, now + self.backoff.delay(r.attempts)) for r in records],
                                    f"the upload stopped: {type(err).__name__}")
            raise
        finally:
            self.central.deadline = None
        answered = {o.msgid for o in outcomes}
        unanswered = [r for r in records if r.msgid not in answered]
        if unanswered:
            retry_after = error.retry_after if error else None
            now = self.outbox.now()
            self.outbox.retry_later(
                [(r.msgid, now + self.backoff.delay(r.attempts, retry_after)) for r in unanswered],
                str(error) if error else "no answer for this record in the batch",
            )
        taken = [o for o in outcomes if o.infcode == MSGID_TAKEN]
        self.rekeyed += len(taken)
        for outcome in taken:  # another terminal's msgid: nothing was done under it; it goes again as its own
            self.outbox.rekey(outcome.msgid, f"re-keyed: {outcome.err_msg or 'msgid used for another message'}")
        outcomes = [o for o in outcomes if o.infcode != MSGID_TAKEN]
        sent, dead = self.outbox.settle(outcomes) if outcomes else (0, 0)
        for outcome in outcomes:
            if outcome.infcode != 0:
                log.warning("record %s refused by the central service: %s", outcome.msgid, outcome.err_msg)
        if error:
            raise error
        return sent, dead

    def drain(
        self,
        max_batches: int | None = None,
        *,
        ignore_schedule: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> UploadReport:
        """Upload batch after batch until nothing is due, a batch fails or ``max_batches`` ran.

        ``progress`` is called with the number of records settled by each batch. Never raises
        :class:`CentralError`: the report carries it (records stay pending, due after their backoff).
        """
        sent = dead = batches = 0
        failure = None
        while max_batches is None or batches < max_batches:
            rekeyed = self.rekeyed
            try:
                batch_sent, batch_dead = self.upload_batch(ignore_schedule=ignore_schedule)
            except CentralError as err:
                failure = err
                break
            if not batch_sent + batch_dead + (self.rekeyed - rekeyed):
                break
            sent, dead, batches = sent + batch_sent, dead + batch_dead, batches + 1
            if progress:
                progress(batch_sent + batch_dead)
        due = self.outbox.next_due()
        when = iso_time(cst_time(due)) if due else None
        counts = self.outbox.counts()
        return UploadReport(sent, dead, counts["pending"] + counts["sending"], batches,
                            str(failure) if failure else None, when, failure)

    def follow(
        self,
        stop: Stop,
        interval: float = DEFAULT_INTERVAL,
        on_report: Callable[[UploadReport], None] | None = None,
    ) -> None:
        """Drain, then sleep until the next record is due (at most ``interval``, to see new records),
        until ``stop`` is set; a batch in flight is finished first. For a thread or ``--follow``."""
        while not stop.is_set():
            report = self.drain()
            if report.error:
                log.info("upload failed (%s); %d records pending", report.error, report.pending)
            if on_report and (report.sent or report.dead or report.error):
                on_report(report)
            due = self.outbox.next_due()
            wait = interval if due is None else min(interval, max(due - self.outbox.now(), 0.0))
            stop.wait(max(wait, 0.05))
