"""The local outbox: registrations and purchases, durable in SQLite until the central service has them.

DESIGN.md item 5: records are queued locally and uploaded later in batches; the terminal keeps working
while the central service is unreachable. Each record is queued as its final platform envelope (wire
JSON) with its msgid fixed at that moment (central-service.md, "Delivery"), so a repeat after a lost
answer is byte-for-byte the same message and the service can dedupe it.

Durability (docs/central-api.md, "The local queue"): every connection sets WAL, ``synchronous=FULL``
and a busy timeout itself, and every write is an explicit ``BEGIN IMMEDIATE`` transaction (autocommit
connection, no implicit transactions), so a record :meth:`Outbox.add` returned survives a crash or
power cut and two desk windows can queue at once. The schema is versioned (``PRAGMA user_version``)
and migrated in order by :data:`MIGRATIONS`. One :class:`Outbox` per thread; any number of processes.

States (docs/central-api.md, "Delivery"): ``pending`` -> ``sending`` (claimed by an uploader, with a
lease in ``next_attempt_at``) -> ``sent``, or ``dead`` (refused as invalid; ``retry_dead`` revives it),
or back to ``pending`` with the next attempt time after a failed delivery.
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

PENDING, SENDING, SENT, DEAD = "pending", "sending", "sent", "dead"
STATES = (PENDING, SENDING, SENT, DEAD)
#: states of records not yet confirmed by the central service
UNSENT = (PENDING, SENDING)
BUSY_TIMEOUT_MS = 5000

_RECORDS_V1 = """
CREATE TABLE records (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'rejected')),
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT
);
CREATE INDEX records_status ON records (status);
CREATE INDEX records_card ON records (card_sn);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_RECORDS_V2 = """
CREATE TABLE records_v2 (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT
);
INSERT INTO records_v2 (msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,
                        state, attempts, next_attempt_at, last_error, done_at, infcode, reply)
    SELECT msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,
           CASE status WHEN 'rejected' THEN 'dead' ELSE status END, attempts, 0, last_error, done_at,
           infcode, reply
    FROM records ORDER BY rowid;
DROP TABLE records;
ALTER TABLE records_v2 RENAME TO records;
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_card ON records (card_sn);
"""
#: ``MIGRATIONS[n]`` takes a file from schema ``n`` to ``n + 1`` (``PRAGMA user_version``); a new
#: file runs them all. v1: states pending/sent/rejected. v2: states pending/sending/sent/dead and
#: ``next_attempt_at`` (epoch seconds: when a pending record is due, when a sending lease ends).
MIGRATIONS: tuple[str, ...] = (_RECORDS_V1, _RECORDS_V2)
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite result codes -> what a clerk reads (docs/central-api.md, "The local queue")
_SQLITE_REASONS = (
    ("SQLITE_FULL", "the disk is full (free some space on it)"),
    ("SQLITE_READONLY", "the file or its folder is read-only (check the permissions)"),
    ("SQLITE_CANTOPEN", "the file cannot be opened (check the folder and its permissions)"),
    ("SQLITE_BUSY", "another program has held it locked for too long (try again)"),
    ("SQLITE_LOCKED", "another program has held it locked for too long (try again)"),
    ("SQLITE_CORRUPT", "the file is damaged"),
    ("SQLITE_NOTADB", "the file is damaged or is not a record queue"),
    ("SQLITE_IOERR", "the disk reported an error"),
    ("SQLITE_PERM", "the file or its folder is read-only (check the permissions)"),
)


class QueueError(SSCardError):
    """The local record queue cannot be used (disk full, read-only, file damaged or locked)."""

    exit_code = 13


def sqlite_reason(err: sqlite3.Error) -> str:
    """Clerk-level words for a SQLite failure (no data from the record is ever part of it)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    for prefix, reason in _SQLITE_REASONS:
        if name.startswith(prefix):
            return reason
    text = str(err)
    if "readonly" in text or "read-only" in text:
        return _SQLITE_REASONS[1][1]
    if "unable to open" in text:
        return _SQLITE_REASONS[2][1]
    return text


@dataclass(frozen=True)
class QueuedRecord:
    """One row of the outbox. ``envelope`` is the wire JSON as queued (``sign_no`` empty).

    ``next_attempt_at`` (epoch seconds): when a ``pending`` record is due, or when the lease of a
    ``sending`` one ends (an uploader killed mid-batch leaves it to be claimed again after that).
    """

    msgid: str
    infno: str
    created_at: dt.datetime
    card_sn: str | None
    insured_region: str
    treatment_region: str
    envelope: str
    state: str
    attempts: int
    next_attempt_at: float
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

    @property
    def next_attempt(self) -> dt.datetime:
        """``next_attempt_at`` as Beijing time."""
        return dt.datetime.fromtimestamp(self.next_attempt_at, CST)

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
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt.isoformat(sep=" ", timespec="seconds") if self.state in UNSENT else None,
            "last_error": self.last_error,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedRecord:
        """A record from a ``records`` row (column names as keys)."""
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
    """The central service's answer for one message: ``infcode`` 0 accepted, negative refused (dead)."""

    msgid: str
    infcode: int
    err_msg: str = ""
    reply: dict[str, Any] | None = None


def now_cst() -> dt.datetime:
    """The default clock: now, in Beijing time."""
    return dt.datetime.now(CST)


class Outbox:
    """The queue file at ``path``; ``station`` (this terminal) is saved in it for later openers.

    ``create=False`` refuses a missing file (for inspection commands). ``clock`` returns an aware
    datetime; tests pass a fake one. ``busy_timeout_ms``: how long a write waits for another
    process's write to finish before the queue reports itself locked.
    """

    def __init__(
        self,
        path: str | Path,
        station: Station | None = None,
        *,
        create: bool = True,
        clock: Callable[[], dt.datetime] = now_cst,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        if not create and not self.path.is_file():
            raise QueueError(f"No record queue at {self.path}")
        with self._errors("be opened"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(self._connect(busy_timeout_ms))
        try:
            with self._errors("be opened"):
                self._migrate()
                self.station = self._station(station)
        except BaseException:
            self.db.close()
            raise

    # --- set-up ---------------------------------------------------------------------------------

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        """A connection set up explicitly, whatever the library defaults (docs/central-api.md).

        ``isolation_level=None``: no implicit transactions; every write is our ``BEGIN IMMEDIATE``.
        """
        conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("the record queue %s cannot use WAL (journal mode %s)", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _errors(self, doing: str, consequence: str = "") -> Iterator[None]:
        """SQLite failures become a :class:`QueueError` a clerk can act on."""
        try:
            yield
        except sqlite3.Error as err:
            log.debug("queue %s failed", doing, exc_info=True)
            raise QueueError(f"The record queue {self.path} cannot {doing}: {sqlite_reason(err)}.{consequence}") from None
        except OSError as err:  # the folder cannot be made
            log.debug("queue %s failed", doing, exc_info=True)
            raise QueueError(f"The record queue {self.path} cannot {doing}: {err.strerror or err}.{consequence}") from None

    @contextlib.contextmanager
    def _write(self, doing: str, consequence: str = "") -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: takes the write lock first, so read-then-write never deadlocks."""
        with self._errors(doing, consequence):
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        """Bring the file to :data:`SCHEMA_VERSION`, one migration per transaction, in order."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(f"The record queue {self.path} was written by a newer version (schema {version})")
        while version < SCHEMA_VERSION:
            with self._write("be updated to this version") as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
                if version >= SCHEMA_VERSION:
                    break
                for statement in filter(str.strip, MIGRATIONS[version].split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
            log.info("record queue %s: schema %d -> %d", self.path, version, version + 1)
            version += 1

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
        """Close the connection (nothing is left uncommitted: every write commits itself)."""
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> float:
        """The clock as epoch seconds (the unit of ``next_attempt_at``)."""
        return self.clock().timestamp()

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
        counter = 0
        if row:
            last_stamp, last_counter = row[0].split("/")
            s = last_stamp  # yyyyMMddHHmmss, sliced: strptime costs more than the rest of an add
            last = dt.datetime(int(s[:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), int(s[12:14]))
            if second <= last:
                second, counter = last, int(last_counter) + 1
                if counter >= SEQ_PER_SECOND:
                    second, counter = last + dt.timedelta(seconds=1), 0
        value = f"{second.strftime(MSGID_TIME)}/{counter}"
        # an UPDATE in place rewrites one page; INSERT OR REPLACE would delete and insert (two)
        if not row or not conn.execute("UPDATE meta SET value = ? WHERE key = 'msgid_last'", [value]).rowcount:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('msgid_last', ?)", [value])
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
        Amounts in ``input`` must be :class:`terminal.envelope.Fen`. Raises :class:`QueueError`
        (disk full, read-only...) or :class:`RecordError`, and then nothing was saved.
        """
        station = self.require_station()
        now = self.clock()
        with self._write("record the transaction", " The transaction was NOT saved.") as conn:
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
                "next_attempt_at": now.timestamp(),
            }
            conn.execute(_INSERT, list(row.values()))
        log.info("queued %s %s%s", infno, envelope.msgid, " (cross-region)" if envelope.cross_region else "")
        return QueuedRecord.from_row(
            {**row, "state": PENDING, "attempts": 0, "last_error": None, "done_at": None, "infcode": None, "reply": None}
        )

    def claim(self, limit: int, lease: float, *, ignore_schedule: bool = False) -> list[QueuedRecord]:
        """Take up to ``limit`` due records, oldest first, for one delivery attempt: they become
        ``sending`` until ``lease`` seconds from now, and their ``attempts`` go up by one.

        Due: ``pending`` with ``next_attempt_at`` reached (any ``pending`` with ``ignore_schedule``), or
        ``sending`` whose lease ran out (an uploader died mid-batch). One short transaction: the caller
        sends after it has committed (no transaction is ever held across an HTTP call).
        """
        now = self.now()
        due = "next_attempt_at <= ?" if not ignore_schedule else "(state = 'pending' OR next_attempt_at <= ?)"
        with self._write("take records to send") as conn:
            rows = conn.execute(
                f"SELECT rowid FROM records WHERE state IN ('{PENDING}', '{SENDING}') AND {due}"
                " ORDER BY rowid LIMIT ?",
                [now, int(limit)],
            ).fetchall()
            conn.executemany(
                f"UPDATE records SET state = '{SENDING}', next_attempt_at = ?, attempts = attempts + 1 WHERE rowid = ?",
                [(now + lease, rowid) for (rowid,) in rows],
            )
        return self._select(f"rowid IN ({', '.join(str(r) for (r,) in rows)})", []) if rows else []

    def settle(self, outcomes: Iterable[Outcome]) -> tuple[int, int]:
        """Apply the service's answers: infcode 0 -> sent, negative -> dead (with ``err_msg``).

        Only unconfirmed records change; sent and dead are final here. Returns (sent, dead).
        """
        done_at = self.clock().astimezone(CST).isoformat()
        sent = dead = 0
        with self._write("record the upload") as conn:
            for outcome in outcomes:
                state = SENT if outcome.infcode == 0 else DEAD
                changed = conn.execute(
                    "UPDATE records SET state = ?, done_at = ?, infcode = ?, reply = ?, last_error = ?"
                    f" WHERE msgid = ? AND state IN ('{PENDING}', '{SENDING}')",
                    [
                        state,
                        done_at,
                        outcome.infcode,
                        json.dumps(outcome.reply, ensure_ascii=False) if outcome.reply is not None else None,
                        (outcome.err_msg or "refused") if state == DEAD else None,
                        outcome.msgid,
                    ],
                ).rowcount
                sent += changed and state == SENT
                dead += changed and state == DEAD
        return sent, dead

    def retry_later(self, schedule: Iterable[tuple[str, float]], error: str) -> None:
        """A delivery failed without an answer: each ``(msgid, next_attempt_at)`` goes back to pending,
        due at that time (the uploader's backoff), with ``error`` as its last error."""
        with self._write("record the failed upload") as conn:
            conn.executemany(
                f"UPDATE records SET state = '{PENDING}', next_attempt_at = ?, last_error = ?"
                f" WHERE msgid = ? AND state IN ('{PENDING}', '{SENDING}')",
                [(at, error, m) for m, at in schedule],
            )

    def retry_dead(self, msgids: Iterable[str] | None = None) -> int:
        """Dead records (all, or those of ``msgids``) back to pending, due now, attempts from zero.

        With ``msgids``, every one must be a dead record, else nothing changes (:class:`QueueError`).
        Returns how many records were revived.
        """
        wanted = None if msgids is None else list(dict.fromkeys(msgids))
        now = self.now()
        revive = (f"UPDATE records SET state = '{PENDING}', next_attempt_at = ?, attempts = 0, done_at = NULL,"
                  f" infcode = NULL, reply = NULL WHERE state = '{DEAD}'")
        with self._write("put dead records back") as conn:
            if wanted is None:
                return conn.execute(revive, [now]).rowcount
            dead = {m for (m,) in conn.execute(
                f"SELECT msgid FROM records WHERE state = '{DEAD}' AND msgid IN ({', '.join('?' * len(wanted))})", wanted
            )} if wanted else set()
            missing = [m for m in wanted if m not in dead]
            if missing:
                raise QueueError(f"Not a dead record in the queue: {', '.join(missing)}")
            conn.executemany(revive + " AND msgid = ?", [(now, m) for m in wanted])
            return len(wanted)

    # --- reading ------------------------------------------------------------------------------------

    def _select(self, where: str, params: list[Any], limit: int | None = None, newest_first: bool = False) -> list[QueuedRecord]:
        sql = f"SELECT * FROM records WHERE {where} ORDER BY rowid{' DESC' if newest_first else ''}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._errors("be read"):
            return [QueuedRecord.from_row(row) for row in self.db.query(sql, params)]

    def get(self, msgid: str) -> QueuedRecord:
        """The record ``msgid``; :class:`QueueError` if there is none."""
        found = self._select("msgid = ?", [msgid])
        if not found:
            raise QueueError(f"No record {msgid} in the queue")
        return found[0]

    def pending(self, limit: int | None = None) -> list[QueuedRecord]:
        """Records not yet confirmed (``pending`` or ``sending``), oldest first."""
        return self._select(f"state IN ('{PENDING}', '{SENDING}')", [], limit)

    def records(self, state: str | None = None, limit: int | None = None, card_sn: str | None = None) -> list[QueuedRecord]:
        """Records newest first: all, or in one state, or of one card, or both."""
        if state is not None and state not in STATES:
            raise QueueError(f"Unknown record state {state!r}: use one of {', '.join(STATES)}")
        filters = {"state": state, "card_sn": card_sn}
        where = " AND ".join(f"{column} = ?" for column, value in filters.items() if value is not None)
        return self._select(where or "1", [v for v in filters.values() if v is not None], limit, newest_first=True)

    def for_card(self, card_sn: str, limit: int | None = None) -> list[QueuedRecord]:
        """The records held for one card (kiosk inquiry, DESIGN.md item 7), newest first."""
        return self.records(limit=limit, card_sn=card_sn)

    def counts(self) -> dict[str, int]:
        """How many records in each state (every state present, zero when none)."""
        with self._errors("be read"):
            rows = self.db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | dict(rows)

    def oldest_pending(self) -> dt.datetime | None:
        """When the oldest unconfirmed record was made (how long the terminal has been offline)."""
        first = self.pending(limit=1)
        return first[0].created_at if first else None

    def next_due(self) -> float | None:
        """When the next unconfirmed record is due (epoch seconds), or None when none is waiting."""
        with self._errors("be read"):
            return self.db.execute(
                f"SELECT min(next_attempt_at) FROM records WHERE state IN ('{PENDING}', '{SENDING}')"
            ).fetchone()[0]


_INSERT = (
    "INSERT INTO records (msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,"
    " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
