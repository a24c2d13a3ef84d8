"""The uploader: sends the outbox to the central service in batches, at-least-once, deduped by msgid.

DESIGN.md item 5 and "The central service"; the HTTP API and the retry rules are in docs/central-api.md
("Delivery"). A batch is the oldest due records, claimed (``sending``) in one short transaction that
commits before the HTTP call. Each answer settles its record: infcode 0 sent, negative dead with the
reason. A batch the service refuses as invalid (HTTP 400/413/422) is split in halves until the one bad
record is found and goes dead alone, so a poison record never blocks the rest. Anything short of an
answer (refused connection, timeout, 5xx, 429, a reply that is not the documented JSON) puts every
record of the batch back to pending, due after a capped exponential backoff with full jitter (stored
in the row, so it survives restarts), never before the service's Retry-After. A repeat is sent
unchanged and the service answers it as the first time.
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpcore
import httpx

from apdu.errors import ConfigError, SSCardError
from message.envelope import MSGID_TAKEN, Credentials, Envelope, encode, gateway_headers, iso_time, with_sign_no
from terminal.gateway import test_credentials
from terminal.queue import Outbox, Outcome, QueuedRecord, cst_time

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_BATCH = 100
DEFAULT_TIMEOUT = 10.0
#: hosts a plain-http URL may name: the reference service on this computer (docs/security.md)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_central_url(url: str) -> str:
    """The central service URL, or :class:`ConfigError`: records carry ID numbers and health data,
    so they travel over https (certificates checked); plain http only to this computer, unless
    ``$SSCARD_ALLOW_PLAIN_HTTP=1`` (a site's own encrypted network, its decision: docs/security.md)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as err:
        raise ConfigError(f"The central service URL {url!r} is not a valid URL ({err})") from None
    if parsed.scheme == "https" and parsed.host:
        return url
    if parsed.scheme == "http" and parsed.host:
        if parsed.host in LOOPBACK or os.environ.get("SSCARD_ALLOW_PLAIN_HTTP") == "1":
            return url
        raise ConfigError(
            f"The central service URL must start with https:// (plain http is allowed only to this computer): {url}"
        )
    raise ConfigError(f"The central service URL must be https://HOST[:PORT] : {url!r}")
#: how often ``follow`` looks for new records when nothing is due sooner (seconds)
DEFAULT_INTERVAL = 5.0
#: HTTP statuses that mean "this batch is invalid": bisect to find the record (docs/central-api.md)
INVALID_BATCH = frozenset({400, 413, 422})
#: the longest wait a service's Retry-After can impose (seconds): a longer one is taken as this much,
#: so a wrong header cannot park the queue for years (docs/central-api.md, "Delivery")
MAX_RETRY_AFTER = 3600.0
#: Retry-After delay-seconds: ASCII digits only (``str.isdigit`` also takes "²" and other scripts' digits)
_DELAY_SECONDS = re.compile(r"[0-9]+")


class CentralError(SSCardError):
    """The platform could not be reached or did not answer properly."""

    exit_code = 14
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
    from terminal.queue import sqlite_reason

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
            when = when.replace(tzinfo=dt.timezone.utc)
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
    otherwise it is :class:`CentralUnavailableError`, as for a service that does not answer.
    """

    def __init__(self, url: str, *, credentials: Credentials, timeout: float = DEFAULT_TIMEOUT,
                 client: httpx.Client | None = None) -> None:
        self.url = check_central_url(url).rstrip("/")
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

    def post(self, path: str, payload: dict[str, Any] | str) -> Any:
        """One signed request to ``path`` (``/api/call``, ``/api/batch``, ``/api/keys/...``): its JSON answer."""
        start = time.monotonic()
        limit = start + self.timeout if self.deadline is None else min(start + self.timeout, self.deadline)
        within = f"within {self.timeout:g} s" if limit == start + self.timeout else "before its batch's deadline"
        token = _DEADLINE.set(limit)
        try:
            headers = {"Content-Type": "application/json", **gateway_headers(self.credentials)}
            content = (payload if isinstance(payload, str) else encode(payload)).encode()
            with self.http.stream("POST", self.url + path, content=content, headers=headers) as answer:
                status, retry_after = answer.status_code, answer.headers.get("Retry-After")
                body = bytearray()
                for chunk in answer.iter_bytes():
                    body += chunk
                    if time.monotonic() > limit:
                        raise httpx.ReadTimeout("the call's deadline has passed", request=answer.request)
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
        if status == 401:
            raise NotSignedInError()
        if status == 403:
            raise CentralAuthError(_err_msg(bytes(body)))
        if status in INVALID_BATCH:
            raise CentralRefusedError(status, _err_msg(bytes(body)))
        if status != 200:
            raise CentralUnavailableError(f"The platform answered HTTP {status}", parse_retry_after(retry_after))
        return parse_reply(bytes(body))

    def call(self, message: dict[str, Any] | str) -> dict[str, Any]:
        """One message (a dict, or its wire text), one platform response (``infcode``, ``err_msg``,
        ``output``...)."""
        response = self.post("/api/call", message)
        if not isinstance(response, dict) or type(response.get("infcode")) is not int:
            raise CentralProtocolError()
        return response

    def batch(self, messages: list[dict[str, Any]]) -> list[Outcome]:
        """Send messages as one batch; the answers for the messages sent (others are ignored)."""
        response = self.post("/api/batch", {"messages": messages})
        return batch_outcomes(response, {m.get("msgid") for m in messages})


def parse_reply(body: bytes) -> Any:
    """A reply body as JSON; :class:`CentralProtocolError` when it is not (bad UTF-8, bad JSON, nested
    too deep for the parser)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise CentralProtocolError() from None


def batch_outcomes(response: Any, sent: set[Any]) -> list[Outcome]:
    """The per-item answers of a batch reply (docs/central-api.md, "HTTP") for the msgids ``sent``.

    An item counts only with a string msgid that was sent and an integer infcode (not a boolean);
    anything else in the reply is ignored. :class:`CentralProtocolError` when no item counts.
    """
    results = response.get("results") if isinstance(response, dict) else None
    if not isinstance(results, list):
        raise CentralProtocolError()
    outcomes = [
        Outcome(r["msgid"], r["infcode"], str(r.get("err_msg") or "")[:500], r)
        for r in results
        if isinstance(r, dict) and isinstance(r.get("msgid"), str) and r["msgid"] in sent
        and type(r.get("infcode")) is int
    ]
    if not outcomes:
        raise CentralProtocolError("The central service answered none of the messages sent")
    return outcomes


def signin_number(response: dict[str, Any]) -> str | None:
    """The ``output.signinoutb.sign_no`` of a 9001 answer (docs/central-api.md, "HTTP"), or None when
    the answer does not have that shape (any level not an object, the number not non-empty text)."""
    output = response.get("output")
    signinoutb = output.get("signinoutb") if isinstance(output, dict) else None
    sign_no = signinoutb.get("sign_no") if isinstance(signinoutb, dict) else None
    return sign_no if isinstance(sign_no, str) and sign_no else None


def _err_msg(content: bytes) -> str:
    """The service's ``err_msg`` from an error answer's body, else the start of the body."""
    try:
        body = parse_reply(content)
    except CentralProtocolError:
        return content[:200].decode("utf-8", "replace") or "no reason given"
    return str(body.get("err_msg") if isinstance(body, dict) and body.get("err_msg") else body)[:200]


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
            infno="9001",
            msgid=outbox.next_msgid(),
            station=station,
            operator=station.operator,
            insured_region=station.region,
            time=outbox.clock(),
            input={"signIn": {"opter_no": station.operator.opter, "mac": "", "ip": "127.0.0.1"}},
        )
        return central.call(envelope.to_dict())

    response = fresh_msgid(attempt)
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
