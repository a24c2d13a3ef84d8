"""The uploader: sends the outbox to the central service in batches, at-least-once, deduped by msgid.

DESIGN.md item 5 and "The central service". A batch is the oldest pending records; each answer settles
its record (infcode 0 sent, negative rejected for good). Anything short of an answer (refused
connection, timeout, HTTP error, a reply that is not the documented JSON) leaves every record of the
batch pending, to be sent again unchanged: the service answers a repeated msgid as the first time.
The HTTP API is in docs/central-api.md.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from apdu.errors import SSCardError
from terminal.envelope import Envelope, encode, with_sign_no
from terminal.queue import Outbox, Outcome, QueuedRecord

log = logging.getLogger(__name__)

DEFAULT_BATCH = 100
DEFAULT_TIMEOUT = 10.0


class CentralError(SSCardError):
    """The central service could not be reached or did not answer properly. Records stay in the queue."""

    exit_code = 14


class CentralUnavailableError(CentralError):
    """The central service is unreachable: records stay in the local queue and are sent later."""


class CentralProtocolError(CentralError):
    """The central service answered something that is not its documented JSON."""


class NotSignedInError(CentralError):
    """The central service does not know this terminal's sign-in (9001)."""


@dataclass(frozen=True)
class UploadReport:
    """What one :meth:`Uploader.drain` did: records sent and rejected, records still pending."""

    sent: int = 0
    rejected: int = 0
    pending: int = 0
    batches: int = 0
    error: str | None = None


class CentralClient:
    """HTTP to the central service at ``url``: one call, or one batch (docs/central-api.md, "HTTP")."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        try:
            answer = self.http.post(
                self.url + path, content=encode(payload).encode(), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as err:
            raise CentralUnavailableError(
                f"The central service at {self.url} is unreachable ({type(err).__name__}): records stay in the queue"
            ) from None
        if answer.status_code == 401:
            raise NotSignedInError()
        if answer.status_code != 200:
            raise CentralUnavailableError(f"The central service answered HTTP {answer.status_code}: records stay in the queue")
        try:
            return answer.json()
        except ValueError:
            raise CentralProtocolError() from None

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One message, one platform response (``infcode``, ``err_msg``, ``output``...)."""
        response = self._post("/api/call", message)
        if not isinstance(response, dict) or not isinstance(response.get("infcode"), int):
            raise CentralProtocolError()
        return response

    def batch(self, messages: list[dict[str, Any]]) -> list[Outcome]:
        """Send messages as one batch; the answers for the messages sent (others are ignored)."""
        response = self._post("/api/batch", {"messages": messages})
        results = response.get("results") if isinstance(response, dict) else None
        if not isinstance(results, list):
            raise CentralProtocolError()
        sent = {m["msgid"] for m in messages}
        outcomes = [
            Outcome(r["msgid"], r["infcode"], str(r.get("err_msg") or ""), r)
            for r in results
            if isinstance(r, dict) and r.get("msgid") in sent and isinstance(r.get("infcode"), int)
        ]
        if not outcomes:
            raise CentralProtocolError("The central service answered none of the messages sent")
        return outcomes


class Uploader:
    """Moves records from ``outbox`` to the service at ``url``. Not thread-safe: one per thread."""

    def __init__(
        self,
        outbox: Outbox,
        url: str,
        *,
        batch_size: int = DEFAULT_BATCH,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.Client | None = None,
    ) -> None:
        self.outbox = outbox
        self.central = CentralClient(url, timeout=timeout, client=client)
        self.batch_size = batch_size
        self.sign_no: str | None = None

    def close(self) -> None:
        self.central.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sign_in(self) -> str:
        """9001 operator sign-in with the station's operator; returns and keeps the ``sign_no``."""
        station = self.outbox.require_station()
        envelope = Envelope(
            infno="9001",
            msgid=self.outbox.next_msgid(),
            station=station,
            operator=station.operator,
            insured_region=station.region,
            time=self.outbox.clock(),
            input={"signIn": {"opter_no": station.operator.opter, "mac": "", "ip": ""}},
        )
        response = self.central.call(envelope.to_dict())  # _post encodes Fen amounts as yuan
        sign_no = (response.get("output") or {}).get("signinoutb", {}).get("sign_no")
        if response["infcode"] != 0 or not isinstance(sign_no, str):
            raise CentralError(f"The central service refused the sign-in: {response.get('err_msg') or 'no sign_no'}")
        log.info("signed in to %s", self.central.url)
        self.sign_no = sign_no
        return sign_no

    def _send(self, records: list[QueuedRecord]) -> list[Outcome]:
        if self.sign_no is None:
            self.sign_in()
        try:
            return self.central.batch([with_sign_no(r.envelope, self.sign_no or "") for r in records])
        except NotSignedInError:
            log.info("sign-in expired: signing in again")
            self.sign_in()
            return self.central.batch([with_sign_no(r.envelope, self.sign_no or "") for r in records])

    def upload_batch(self) -> tuple[int, int]:
        """Send the oldest pending batch; (sent, rejected). 0, 0 when nothing is pending.

        Raises :class:`CentralError` after noting the failure on every record of the batch.
        """
        records = self.outbox.pending(limit=self.batch_size)
        if not records:
            return 0, 0
        try:
            outcomes = self._send(records)
        except CentralError as err:
            self.outbox.note_failure((r.msgid for r in records), str(err))
            raise
        answered = {o.msgid for o in outcomes}
        unanswered = [r.msgid for r in records if r.msgid not in answered]
        if unanswered:
            self.outbox.note_failure(unanswered, "no answer for this record in the batch")
        sent, rejected = self.outbox.settle(outcomes)
        for outcome in outcomes:
            if outcome.infcode != 0:
                log.warning("record %s rejected by the central service: %s", outcome.msgid, outcome.err_msg)
        return sent, rejected

    def drain(self, max_batches: int | None = None) -> UploadReport:
        """Upload batch after batch until the queue is empty, a batch fails or ``max_batches`` ran.

        Never raises :class:`CentralError`: the report carries it (records stay pending).
        """
        sent = rejected = batches = 0
        error = None
        while max_batches is None or batches < max_batches:
            try:
                batch_sent, batch_rejected = self.upload_batch()
            except CentralError as err:
                error = str(err)
                break
            if not batch_sent + batch_rejected:
                break
            sent, rejected, batches = sent + batch_sent, rejected + batch_rejected, batches + 1
        return UploadReport(sent, rejected, self.outbox.counts()["pending"], batches, error)

    def run(self, stop: threading.Event, interval: float = 30.0, max_backoff: float = 300.0) -> None:
        """Drain every ``interval`` seconds until ``stop`` is set; after a failure wait twice as long
        (up to ``max_backoff``) so an unreachable service is not hammered. For a background thread."""
        wait = interval
        while not stop.is_set():
            report = self.drain()
            wait = min(wait * 2, max_backoff) if report.error else interval
            if report.error:
                log.info("upload failed (%s); %d records pending, retry in %.0f s", report.error, report.pending, wait)
            stop.wait(wait)
