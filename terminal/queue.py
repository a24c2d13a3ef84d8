"""The local outbox: registrations and purchases, durable in SQLite until the central service has them.

DESIGN.md item 5: records are queued locally and uploaded later in batches; the terminal keeps working
while the central service is unreachable. Each record is queued as its final platform envelope (wire
JSON) with its msgid fixed at that moment (central-service.md, "Delivery"), so a repeat after a lost
answer is byte-for-byte the same message and the service can dedupe it.

Durability (docs/central-api.md, "The local queue"): WAL journal with ``synchronous=FULL``, so a record
:meth:`Outbox.add` returned survives a crash or power cut; ``busy_timeout`` lets the desk application
and an uploader process share the file. One :class:`Outbox` per thread (SQLite connections are not
shared); any number of processes.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from apdu.errors import ConfigError, SSCardError, mask
from terminal.envelope import (
    CST,
    MSGID_TIME,
    SEQ_PER_SECOND,
    Envelope,
    Operator,
    Station,
    msgid,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PENDING, SENT, REJECTED = "pending", "sent", "rejected"
STATUSES = (PENDING, SENT, REJECTED)
BUSY_TIMEOUT_MS = 5000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    msgid TEXT PRIMARY KEY,
    infno TEXT NOT NULL,
    created_at TEXT NOT NULL,
    card_sn TEXT,
    insured_region TEXT NOT NULL,
    treatment_region TEXT NOT NULL,
    envelope TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '{PENDING}' CHECK (status IN ('{PENDING}', '{SENT}', '{REJECTED}')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at TEXT,
    infcode INTEGER,
    reply TEXT
);
CREATE INDEX IF NOT EXISTS records_status ON records (status);
CREATE INDEX IF NOT EXISTS records_card ON records (card_sn);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class QueueError(SSCardError):
    """The local record queue cannot be used (disk full, file damaged or locked)."""

    exit_code = 13


@dataclass(frozen=True)
class QueuedRecord:
    """One row of the outbox. ``envelope`` is the wire JSON as queued (``sign_no`` empty)."""

    msgid: str
    infno: str
    created_at: dt.datetime
    card_sn: str | None
    insured_region: str
    treatment_region: str
    envelope: str
    status: str
    attempts: int
    last_error: str | None
    done_at: dt.datetime | None
    infcode: int | None
    reply: dict[str, Any] | None

    @property
    def cross_region(self) -> bool:
        """Insured region differs from the treatment region (DESIGN.md item 6)."""
        return self.insured_region != self.treatment_region

    @property
    def input(self) -> dict[str, Any]:
        """The transaction body as sent (amounts as yuan strings)."""
        return json.loads(self.envelope)["input"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields for lists and the kiosk: no ID number, the card code masked."""
        return {
            "msgid": self.msgid,
            "infno": self.infno,
            "created_at": self.created_at.isoformat(sep=" "),
            "card_sn": mask(self.card_sn, 6, 4) if self.card_sn else None,
            "cross_region": self.cross_region,
            "insured_region": self.insured_region,
            "treatment_region": self.treatment_region,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedRecord:
        return cls(
            **{
                **row,
                "created_at": dt.datetime.fromisoformat(row["created_at"]),
                "done_at": dt.datetime.fromisoformat(row["done_at"]) if row["done_at"] else None,
                "reply": json.loads(row["reply"]) if row["reply"] else None,
            }
        )


@dataclass(frozen=True)
class Outcome:
    """The central service's answer for one message: ``infcode`` 0 accepted, negative rejected."""

    msgid: str
    infcode: int
    err_msg: str = ""
    reply: dict[str, Any] | None = None


def now_cst() -> dt.datetime:
    return dt.datetime.now(CST)


class Outbox:
    """The queue file at ``path``; ``station`` (this terminal) is saved in it for later openers.

    ``create=False`` refuses a missing file (for inspection commands). ``clock`` returns an aware
    datetime; tests pass a fake one.
    """

    def __init__(
        self,
        path: str | Path,
        station: Station | None = None,
        *,
        create: bool = True,
        clock: Callable[[], dt.datetime] = now_cst,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        if not create and not self.path.is_file():
            raise QueueError(f"No record queue at {self.path}")
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000))
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            self.station = self._station(station)

    # --- set-up ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """SQLite failures become a :class:`QueueError` a clerk can act on."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            log.debug("queue %s failed", doing, exc_info=True)
            raise QueueError(f"The record queue {self.path} cannot {doing}: {err}") from None

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: takes the write lock first, so read-then-write never deadlocks."""
        with self._errors(doing):
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(f"The record queue {self.path} was written by a newer version (schema {version})")
        if version < SCHEMA_VERSION:
            with self._write("be created") as conn:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _station(self, station: Station | None) -> Station | None:
        saved = self._meta("station")
        if station is None:
            return Station.from_json(saved) if saved else None
        if saved != station.to_json():
            with self._write("save the terminal's settings") as conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('station', ?)", [station.to_json()])
        return station

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ------------------------------------------------------------------------------------

    def require_station(self) -> Station:
        """The terminal settings saved in the queue; :class:`ConfigError` if there are none."""
        if self.station is None:
            raise ConfigError(f"The record queue {self.path} has no terminal settings (institution, region)")
        return self.station

    def _allocate(self, conn: sqlite3.Connection, now: dt.datetime) -> str:
        """The next msgid, inside the caller's transaction (docs/central-api.md, "msgid").

        The stamp never goes backwards (a clock set back reuses the last second); past 100 records in
        one second the stamp borrows the next second. Either way msgids stay unique and increasing.
        """
        station = self.require_station()
        second = now.astimezone(CST).replace(microsecond=0, tzinfo=None)
        row = conn.execute("SELECT value FROM meta WHERE key = 'msgid_last'").fetchone()
        if row:
            last_stamp, last_counter = row[0].split("/")
            last = dt.datetime.strptime(last_stamp, MSGID_TIME)
            if second <= last:
                second, counter = last, int(last_counter) + 1
                if counter >= SEQ_PER_SECOND:
                    second, counter = last + dt.timedelta(seconds=1), 0
            else:
                counter = 0
        else:
            counter = 0
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('msgid_last', ?)", [f"{second.strftime(MSGID_TIME)}/{counter}"]
        )
        return msgid(station, second, counter)

    def next_msgid(self) -> str:
        """A fresh msgid for a message that is not queued (the uploader's 9001 sign-in)."""
        with self._write("allocate a message id") as conn:
            return self._allocate(conn, self.clock())

    def add(
        self,
        infno: str,
        input: dict[str, Any],
        *,
        insured_region: str,
        card_sn: str | None = None,
        operator: Operator | None = None,
    ) -> QueuedRecord:
        """Queue one transaction; when this returns, the record is on disk with its final msgid.

        ``insured_region`` is the card's issuing region; it differs from the station's region for
        cross-region care. ``card_sn`` (the card identification code) lets the kiosk find the record.
        Amounts in ``input`` must be :class:`terminal.envelope.Fen`.
        """
        station = self.require_station()
        now = self.clock()
        with self._write("record the transaction") as conn:
            envelope = Envelope(
                infno=infno,
                msgid=self._allocate(conn, now),
                station=station,
                operator=operator or station.operator,
                insured_region=insured_region,
                time=now,
                input=input,
            )
            row = {
                "msgid": envelope.msgid,
                "infno": infno,
                "created_at": now.astimezone(CST).isoformat(),
                "card_sn": card_sn,
                "insured_region": insured_region,
                "treatment_region": station.region,
                "envelope": envelope.to_wire(),
            }
            conn.execute(
                f"INSERT INTO records ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
        log.info("queued %s %s%s", infno, envelope.msgid, " (cross-region)" if envelope.cross_region else "")
        return self.get(envelope.msgid)

    def settle(self, outcomes: Iterable[Outcome]) -> tuple[int, int]:
        """Apply the service's answers: infcode 0 -> sent, negative -> rejected (final). (sent, rejected)."""
        done_at = self.clock().astimezone(CST).isoformat()
        sent = rejected = 0
        with self._write("record the upload") as conn:
            for outcome in outcomes:
                status = SENT if outcome.infcode == 0 else REJECTED
                changed = conn.execute(
                    "UPDATE records SET status = ?, done_at = ?, infcode = ?, reply = ?, last_error = ?,"
                    " attempts = attempts + 1 WHERE msgid = ? AND status = ?",
                    [
                        status,
                        done_at,
                        outcome.infcode,
                        json.dumps(outcome.reply, ensure_ascii=False) if outcome.reply is not None else None,
                        outcome.err_msg or None if status == REJECTED else None,
                        outcome.msgid,
                        PENDING,
                    ],
                ).rowcount
                sent += changed and status == SENT
                rejected += changed and status == REJECTED
        return sent, rejected

    def note_failure(self, msgids: Iterable[str], error: str) -> None:
        """A delivery attempt failed without an answer for these records: they stay pending."""
        ids = list(msgids)
        with self._write("record the failed upload") as conn:
            conn.executemany(
                "UPDATE records SET attempts = attempts + 1, last_error = ? WHERE msgid = ? AND status = ?",
                [(error, m, PENDING) for m in ids],
            )

    # --- reading ------------------------------------------------------------------------------------

    def _select(self, where: str, params: list[Any], limit: int | None = None, newest_first: bool = False) -> list[QueuedRecord]:
        sql = f"SELECT * FROM records WHERE {where} ORDER BY rowid{' DESC' if newest_first else ''}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._errors("be read"):
            return [QueuedRecord.from_row(row) for row in self.db.query(sql, params)]

    def get(self, msgid: str) -> QueuedRecord:
        found = self._select("msgid = ?", [msgid])
        if not found:
            raise QueueError(f"No record {msgid} in the queue")
        return found[0]

    def pending(self, limit: int | None = None) -> list[QueuedRecord]:
        """Records still to upload, oldest first."""
        return self._select(f"status = '{PENDING}'", [], limit)

    def records(self, status: str | None = None, limit: int | None = None, card_sn: str | None = None) -> list[QueuedRecord]:
        """Records newest first: all, or of one status, or of one card, or both."""
        if status is not None and status not in STATUSES:
            raise QueueError(f"Unknown record status {status!r}: use one of {', '.join(STATUSES)}")
        filters = {"status": status, "card_sn": card_sn}
        where = " AND ".join(f"{column} = ?" for column, value in filters.items() if value is not None)
        return self._select(where or "1", [v for v in filters.values() if v is not None], limit, newest_first=True)

    def for_card(self, card_sn: str, limit: int | None = None) -> list[QueuedRecord]:
        """The records held for one card (kiosk inquiry, DESIGN.md item 7), newest first."""
        return self.records(limit=limit, card_sn=card_sn)

    def counts(self) -> dict[str, int]:
        """How many records in each status (every status present, zero when none)."""
        with self._errors("be read"):
            rows = self.db.execute("SELECT status, count(*) FROM records GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | dict(rows)

    def oldest_pending(self) -> dt.datetime | None:
        """When the oldest record still waiting was made (how long the terminal has been offline)."""
        first = self.pending(limit=1)
        return first[0].created_at if first else None
