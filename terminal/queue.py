"""The terminal's journal and queue: one SQLite file holding every message that moves something.

What may wait (registrations made while the platform is unreachable, activations) is queued and
uploaded later in batches; every online call that moves money is journaled before it is made and its
answer after (docs/platform.md, "The journal"). Each record is kept as its final platform envelope
(wire JSON) with its msgid fixed at that moment (docs/central-api.md, "msgid"), so a repeat after a
lost answer is byte-for-byte the same message and the platform can dedupe it.

Durability (docs/central-api.md, "The local queue"): every connection sets WAL, ``synchronous=FULL``
and a busy timeout itself, and every write is an explicit ``BEGIN IMMEDIATE`` transaction (autocommit
connection, no implicit transactions), so a record :meth:`Outbox.add` returned survives a crash or
power cut and two desk windows can queue at once. The schema is versioned (``PRAGMA user_version``)
and migrated in order by :data:`MIGRATIONS`. One :class:`Outbox` per thread; any number of processes.

States (docs/central-api.md, "Delivery"): ``pending`` -> ``sending`` (claimed by an uploader, with a
lease in ``next_attempt_at``) -> ``sent``, or ``dead`` (refused as invalid; ``retry_dead`` revives it),
or back to ``pending`` with the next attempt time after a failed delivery. ``held``: queued before the
card change it records is done (the bank activation, two-phase); no uploader ever claims it until
:meth:`Outbox.release` makes it ``pending``, or :meth:`Outbox.withdraw` deletes it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sscard.apdu.errors import SSCardError, mask, one_line
from sscard.message.envelope import (
    CST,
    INF_TIME,
    MSGID_RE,
    MSGID_TIME,
    SEQ_PER_SECOND,
    Envelope,
    MessageError,
    Operator,
    Station,
    check_amounts,
    encode,
    iso_time,
)
from sscard.message.infno import QUEUEABLE, label
from sscard.terminal.errors import ConfigError
from sscard.terminal.private import create_private_file, publish, warn_if_shared
from sscard.terminal.seal import SEALED, Seal

try:
    import fcntl
except ImportError:  # Windows: no flock; a dead uploader's batch waits for its lease to end
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, DEAD = "pending", "sending", "sent", "dead"
#: the delivery states, each counted by :meth:`Outbox.counts` (zero when none)
STATES = (PENDING, SENDING, SENT, DEAD)
#: a record whose card change is not done yet (two-phase, schema v4): never claimed, never sent;
#: counted only when there is one
HELD = "held"
#: the journal of online calls (schema v5; docs/platform.md, "The journal"): ``calling`` (the intent
#: is on disk, no answer yet: in flight while its caller lives and its lease lasts, *unknown* after),
#: ``answered`` (infcode 0), ``refused`` (infcode < 0: nothing happened), ``reversed`` (the answer was
#: lost and a 2601 reversal undid it, or the platform said there was nothing to undo), ``void`` (no
#: answer and nothing to undo: the request never reached the platform, or a reversal whose own answer
#: was lost, superseded by the next reversal of its original). No uploader ever claims them.
CALLING, ANSWERED, REFUSED, REVERSED, VOID = "calling", "answered", "refused", "reversed", "void"
CALL_STATES = (CALLING, ANSWERED, REFUSED, REVERSED, VOID)
#: states of records that stand for something done or to be done at the platform (not refused,
#: reversed, void, dead or held): what the activation and transfer checks count
STANDING = (PENDING, SENDING, SENT, CALLING, ANSWERED)
#: every state a record can be in
ALL_STATES = (*STATES, HELD, *CALL_STATES)
#: states of records not yet confirmed by the central service
UNSENT = (PENDING, SENDING)
#: states that stand on the platform's acceptance, sealed with it (terminal/seal.py)
ACCEPTED = (SENT, ANSWERED)
BUSY_TIMEOUT_MS = 5000
#: seconds a msgid may run ahead of the clock (docs/central-api.md, "msgid")
MAX_AHEAD = 5.0

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
_RECORDS_V3 = """
CREATE TABLE records_v3 (
    id INTEGER PRIMARY KEY,
    msgid TEXT NOT NULL CHECK (length(msgid) = 30 AND CAST(substr(msgid, 13) AS INTEGER) = id),
    infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT
);
INSERT INTO records_v3 (id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,
                        state, attempts, next_attempt_at, last_error, done_at, infcode, reply)
    SELECT CAST(substr(msgid, 13) AS INTEGER), msgid, infno, created_at, card_sn, insured_region,
           treatment_region, envelope, state, attempts, next_attempt_at, last_error, done_at, infcode, reply
    FROM records ORDER BY rowid;
DROP TABLE records;
ALTER TABLE records_v3 RENAME TO records;
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_card ON records (card_sn);
INSERT OR REPLACE INTO meta (key, value)
    SELECT 'msgid_floor', CAST(substr(last.value, 1, 14) AS INTEGER) * 10000
           + coalesce((SELECT json_extract(value, '$.terminal_no') FROM meta WHERE key = 'station'), 99) * 100
           + CAST(substr(last.value, 16) AS INTEGER)
    FROM meta AS last WHERE last.key = 'msgid_last';
DELETE FROM meta WHERE key = 'msgid_last'
"""
_RECORDS_V4 = """
CREATE TABLE records_v4 (
    id INTEGER PRIMARY KEY,
    msgid TEXT NOT NULL CHECK (length(msgid) = 30 AND CAST(substr(msgid, 13) AS INTEGER) = id),
    infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead', 'held')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT
);
INSERT INTO records_v4 (id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,
                        state, attempts, next_attempt_at, last_error, done_at, infcode, reply)
    SELECT id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope, state, attempts,
           next_attempt_at, last_error, done_at, infcode, reply
    FROM records ORDER BY id;
DROP TABLE records;
ALTER TABLE records_v4 RENAME TO records;
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_card ON records (card_sn)
"""
_RECORDS_V5 = """
CREATE TABLE records_v5 (
    id INTEGER PRIMARY KEY,
    msgid TEXT NOT NULL CHECK (length(msgid) = 30 AND CAST(substr(msgid, 13) AS INTEGER) = id),
    infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead', 'held',
                                                         'calling', 'answered', 'refused', 'reversed', 'void')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT, owner INTEGER
);
INSERT INTO records_v5 (id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,
                        state, attempts, next_attempt_at, last_error, done_at, infcode, reply)
    SELECT id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope, state, attempts,
           next_attempt_at, last_error, done_at, infcode, reply
    FROM records ORDER BY id;
DROP TABLE records;
ALTER TABLE records_v5 RENAME TO records;
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_card ON records (card_sn)
"""
_RECORDS_V6 = """
ALTER TABLE records ADD COLUMN mac TEXT;
ALTER TABLE records ADD COLUMN answer_mac TEXT
"""
#: ``MIGRATIONS[n]`` takes a file from schema ``n`` to ``n + 1`` (``PRAGMA user_version``); a new
#: file runs them all. v1: states pending/sent/rejected. v2: states pending/sending/sent/dead and
#: ``next_attempt_at`` (epoch seconds: when a pending record is due, when a sending lease ends).
#: v3: the key is ``id INTEGER PRIMARY KEY``, the msgid's 18 digits (stamp + sequence), checked
#: against ``msgid``: the table's own key enforces uniqueness, so there is no text index on msgid, and
#: the next msgid comes from ``max(id)`` (no counter row rewritten per record); ``meta.msgid_floor``
#: (an id) replaces ``msgid_last`` and only records msgids issued outside the table (sign-ins).
#: v4: the state ``held`` (a record queued before its card change is done; the bank activation).
#: v5: the journal's states of online calls (``CALL_STATES``) and ``owner``, the process id of the
#: caller of a ``calling`` record (a dead owner's call is unknown at once, without waiting for its lease).
#: v6: each record sealed (``mac``, ``answer_mac``: terminal/seal.py); the records of an older file are
#: sealed as they are when it is migrated (the one moment they are taken on trust).
MIGRATIONS: tuple[str, ...] = (_RECORDS_V1, _RECORDS_V2, _RECORDS_V3, _RECORDS_V4, _RECORDS_V5, _RECORDS_V6)
#: the schema whose migration seals the records already there
SEALED_FROM = 6
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite result codes -> what a clerk reads (docs/central-api.md, "The local queue")
_SQLITE_REASONS = (
    ("SQLITE_FULL", "the disk is full (free some space on it)"),
    ("SQLITE_READONLY", "the file or its folder is read-only (check the permissions)"),
    ("SQLITE_CANTOPEN", "the file cannot be opened (check the folder and its permissions)"),
    ("SQLITE_BUSY", "another program has held it locked for too long (try again)"),
    ("SQLITE_LOCKED", "another program has held it locked for too long (try again)"),
    ("SQLITE_CORRUPT", "the file is damaged"),
    ("SQLITE_NOTADB", "the file is damaged or is not what it should be"),
    ("SQLITE_IOERR", "the disk reported an error"),
    ("SQLITE_PERM", "the file or its folder is read-only (check the permissions)"),
)


class QueueError(SSCardError):
    """The local record queue cannot be used (disk full, read-only, file damaged or locked)."""


class DamagedRecordError(QueueError):
    """Records whose seal does not verify (terminal/seal.py): edited or damaged since they were written."""

    def __init__(self, path: Path, msgids: list[str]) -> None:
        shown = ", ".join(msgids[:3]) + (f" and {len(msgids) - 3} more" if len(msgids) > 3 else "")
        super().__init__(
            f"The record queue {path} holds records that fail their integrity check: {shown}. They were edited or "
            "damaged after they were written (or the journal was made on another terminal, with another journal "
            "key) and are refused; the other records are unaffected. 'sscard queue list' marks them DAMAGED.")
        self.msgids = msgids


class RecordError(SSCardError, ValueError):
    """The record cannot be kept: it is not a valid platform message."""


#: the first 16 bytes of every SQLite database file (sqlite.org/fileformat.html s1.3)
SQLITE_MAGIC = b"SQLite format 3\x00"
#: how long an open waits for a checkpoint of another process to finish writing the file (header first)
TRUNCATED_WAIT_S = 1.0
#: what is said after a refused journal: the one remedy that loses nothing
KEEP_IT = (" It is not re-initialised (the records in it, and what they guard against, would be lost): "
           "keep it, restore it from a backup, or move it aside to start an empty one.")


def check_journal_file(path: Path) -> None:
    """Refuse (QueueError, exit 13, naming the file and what is wrong) a record queue file that is not
    a regular file, is empty, does not start as a SQLite database, has schema 0 (no record tables;
    header bytes 60-63, ``PRAGMA user_version``), or is shorter than its header says
    (cut off: the header's page count x page size, sqlite.org/fileformat.html s1.3.2, when bytes 92-95
    say that count is valid). With a WAL not yet checkpointed beside it the header is not the whole
    story, and the last two are left to SQLite (:meth:`Outbox._migrate` refuses schema 0). An open
    never makes a new journal out of such a file."""
    deadline = time.monotonic() + TRUNCATED_WAIT_S
    while True:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise QueueError(f"The record queue {path} is not a regular file.{KEEP_IT}")
        if info.st_size == 0:
            raise QueueError(f"The record queue {path} is empty (0 bytes): it was cut off or emptied.{KEEP_IT}")
        with open(path, "rb") as handle:
            header = handle.read(100)
        if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
            raise QueueError(f"The record queue {path} is damaged: it does not begin as a record queue does.{KEEP_IT}")
        # a WAL not yet checkpointed holds pages the main file's header does not count yet (an older
        # version's new journal, a process killed early): then SQLite, not the header, has the last word
        wal = Path(f"{path}-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            return
        if int.from_bytes(header[60:64], "big") == 0:  # the schema version (PRAGMA user_version)
            raise QueueError(f"The record queue {path} is damaged: it has no record tables.{KEEP_IT}")
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        expected = pages * page_size if header[92:96] == header[24:28] else 0
        if expected <= info.st_size:
            return
        if time.monotonic() > deadline:  # not another process's checkpoint under way: cut off
            raise QueueError(f"The record queue {path} is truncated: {info.st_size} bytes where it should have "
                             f"{expected}.{KEEP_IT}")
        time.sleep(0.05)


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
    #: its seal does not verify (terminal/seal.py): listed, never acted on
    damaged: bool = False

    @property
    def cross_region(self) -> bool:
        """Insured region differs from the treatment region (docs/design.md item 6)."""
        return self.insured_region != self.treatment_region

    @property
    def input(self) -> dict[str, Any]:
        """The transaction body as sent (amounts as yuan strings)."""
        body: dict[str, Any] = json.loads(self.envelope)["input"]
        return body

    @property
    def next_attempt(self) -> dt.datetime:
        """``next_attempt_at`` as Beijing time (:func:`cst_time`: an absurd stored value does not crash)."""
        return cst_time(self.next_attempt_at)

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields for lists and the kiosk: no ID number, the card code masked."""
        return {
            "msgid": self.msgid,
            "infno": self.infno,
            "created_at": iso_time(self.created_at),
            "card_sn": mask(self.card_sn, 6, 4) if self.card_sn else None,
            "cross_region": self.cross_region,
            "insured_region": self.insured_region,
            "treatment_region": self.treatment_region,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": iso_time(self.next_attempt) if self.state in UNSENT else None,
            "last_error": one_line(self.last_error) if self.last_error else None,
            **({"damaged": True} if self.damaged else {}),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedRecord:
        """A record from a sealed ``records`` row (column names as keys; the seals are not kept)."""
        fields = {name: value for name, value in row.items() if name not in ("id", "mac", "answer_mac")}
        return cls(
            **{
                **fields,
                "created_at": dt.datetime.fromisoformat(row["created_at"]),
                "done_at": dt.datetime.fromisoformat(row["done_at"]) if row["done_at"] else None,
                "reply": json.loads(row["reply"]) if row["reply"] else None,
            }
        )

    @classmethod
    def damaged_row(cls, row: dict[str, Any]) -> QueuedRecord:
        """A row that failed its seal, for listing: what can be shown without trusting any of it."""
        def text(name: str) -> str:
            return str(row.get(name) or "")[:40]

        return cls(text("msgid"), text("infno"), cst_time(0), None, text("insured_region"), text("treatment_region"),
                   "", str(row.get("state") or "?")[:12], 0, 0.0, "integrity check failed", None, None, None,
                   damaged=True)


@dataclass(frozen=True)
class Outcome:
    """The central service's answer for one message: ``infcode`` 0 accepted, negative refused (dead)."""

    msgid: str
    infcode: int
    err_msg: str = ""
    reply: dict[str, Any] | None = None


def cst_time(epoch: float) -> dt.datetime:
    """Epoch seconds as Beijing time. A value past what a datetime holds (a Retry-After of years, as an
    older uploader stored it) is the last representable time, not an error that stops every listing."""
    try:
        return dt.datetime.fromtimestamp(epoch, CST)
    except (OverflowError, ValueError, OSError):
        return (dt.datetime.min if epoch < 0 else dt.datetime.max).replace(tzinfo=CST)


def now_cst() -> dt.datetime:
    """The default clock: now, in Beijing time."""
    return dt.datetime.now(CST)


def _wal(conn: sqlite3.Connection, wait_s: float) -> str:
    """``PRAGMA journal_mode=WAL``, tried again while another process holds the file busy.

    Switching a new file to WAL needs it alone for an instant, and SQLite answers SQLITE_BUSY at once
    there, without its busy handler: two terminals opening a fresh journal together failed one time
    in three (3 processes, 150 tries). The journal mode it answers is returned.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate_one(conn: sqlite3.Connection, version: int) -> None:
    """Schema ``version`` -> ``version + 1`` (:data:`MIGRATIONS`), inside the caller's transaction."""
    for statement in filter(str.strip, MIGRATIONS[version].split(";")):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version={version + 1}")


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
        max_ahead: float | None = MAX_AHEAD,
        seal: Seal | None = None,
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        # the highest id used in the file as of this connection's last write, valid while no other
        # connection has written since (``PRAGMA data_version`` unchanged): then no read is needed
        self._last: int | None = None
        self._data_version: int | None = None
        self._second: dt.datetime | None = None
        self._second_text: tuple[int, str] = (0, "")
        self._envelopes: dict[tuple[str, str, Operator], tuple[str, tuple[str, str]]] = {}
        self._uploader_lock: int | None = None
        #: how far (seconds) msgids may run ahead of the clock when more than 100 records a second are
        #: made: past it, a record waits for the clock (None: no limit, for benchmarks of the write path)
        self.max_ahead = max_ahead
        if not create and not self.path.is_file():
            raise QueueError(f"No record queue at {self.path}")
        with self._errors("be opened"):
            new = not os.path.lexists(self.path)
            if new:
                self._create()
            check_journal_file(self.path)
            warn_if_shared(self.path, "record queue")
            self.db = self._connect(busy_timeout_ms)
        try:
            with self._errors("be opened"):
                if seal is None:  # the key is made with the journal, or when one from before seals is sealed
                    version = self.db.execute("PRAGMA user_version").fetchone()[0]
                    seal = Seal.of_journal(self.path, make=new or version < SEALED_FROM)
                #: the journal key's seal of every record (terminal/seal.py)
                self.seal = seal
                self._migrate()
                self.station = self._station(station)
        except BaseException:
            self.db.close()
            raise

    # --- set-up ---------------------------------------------------------------------------------

    def _create(self) -> None:
        """A new journal, 0600 in a folder made 0700 (terminal/private.py): made whole under a
        temporary name (every migration, no WAL), then linked into place in one step, so the path
        never holds an unfinished journal, and a file found empty there is damage, not a new one
        (:func:`check_journal_file`). Two windows creating at once: the first link wins, the other
        opens it."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
        create_private_file(temporary)
        try:
            conn = sqlite3.connect(temporary, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                for version in range(SCHEMA_VERSION):
                    _migrate_one(conn, version)
                conn.execute("COMMIT")
            finally:
                conn.close()
            if publish(temporary, self.path):  # else another process made it first: that one is opened
                log.info("record queue %s: created (schema %d)", self.path, SCHEMA_VERSION)
        finally:
            for leftover in (temporary, Path(f"{temporary}-journal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        """A connection set up explicitly, whatever the library defaults (docs/central-api.md).

        ``isolation_level=None``: no implicit transactions; every write is our ``BEGIN IMMEDIATE``.
        """
        conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            mode = _wal(conn, busy_timeout_ms / 1000)
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
            conn = self.db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        """Bring the file to :data:`SCHEMA_VERSION`, one migration per transaction, in order (a new
        journal is made whole by :meth:`_create`; one of schema 0 is refused before it is opened)."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(f"The record queue {self.path} was written by a newer version (schema {version})")
        if version == 0:  # what the header could not tell (a WAL pending): never made into a new journal
            raise QueueError(f"The record queue {self.path} is damaged: it has no record tables.{KEEP_IT}")
        while version < SCHEMA_VERSION:
            with self._write("be updated to this version") as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
                if version >= SCHEMA_VERSION:
                    break
                _migrate_one(conn, version)
                if version + 1 == SEALED_FROM:
                    self._seal_all(conn)
            log.info("record queue %s: schema %d -> %d", self.path, version, version + 1)
            version += 1

    def _seal_all(self, conn: sqlite3.Connection) -> None:
        """Seal every record of a file from before seals (its migration to :data:`SEALED_FROM`)."""
        rows = conn.execute(f"SELECT {', '.join(SEALED)}, reply, state FROM records").fetchall()
        conn.executemany("UPDATE records SET mac = ?, answer_mac = ? WHERE id = ?",
                         [(self.seal.record(row[:-2]), self._answer_seal(row[0], row[-2], row[-1]), row[0])
                          for row in rows])

    def _answer_seal(self, key: int, reply: str | None, state: str) -> str | None:
        """The seal of the answer record ``key`` is stored with in ``state`` (an acceptance when the state
        stands on one: :data:`ACCEPTED`)."""
        return self.seal.answer(key, reply, state in ACCEPTED)

    def _trusted(self, row: dict[str, Any]) -> bool:
        """A row as sealed (terminal/seal.py), ``sent`` and ``answered`` only on a sealed acceptance: a
        row edited to ``sent`` (never uploaded: the platform never saw it) reads as damaged."""
        return self.seal.intact(row, accepted=row.get("state") in ACCEPTED)

    def verify(self, since: dt.datetime | None = None) -> list[str]:
        """The msgids of the records (made ``since``, else all) that fail their seal (:meth:`_trusted`):
        reconciliation's check of the journal itself."""
        where, params = ("created_at >= ?", [since.isoformat()]) if since else ("1", [])
        return [record.msgid for record in self._select(where, params, damaged=True) if record.damaged]

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _station(self, station: Station | None) -> Station | None:
        saved = self._meta("station")
        if station is None:
            try:
                return Station.from_json(saved) if saved else None
            except (MessageError, ValueError, TypeError, KeyError):
                raise QueueError(f"The record queue {self.path} cannot be opened: the terminal settings in it "
                                 "are damaged") from None
        if saved != station.to_json():
            with self._write("save the terminal's settings") as conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('station', ?)", [station.to_json()])
        return station

    def close(self) -> None:
        """Close the connection (nothing is left uncommitted: every write commits itself)."""
        self.db.close()
        if self._uploader_lock is not None:
            os.close(self._uploader_lock)  # the uploader lock goes with it
            self._uploader_lock = None

    def join_uploaders(self) -> int:
        """Count this outbox among the file's uploaders until it is closed; returns how many records
        were taken back from an uploader that died mid-batch (docs/central-api.md, "Delivery").

        Every uploader holds a shared ``flock`` on ``<queue>.upload-lock`` while it runs, and the
        kernel drops the lock of a killed process. So an exclusive lock granted at once means no
        uploader is alive: every ``sending`` record is an orphan and goes back to ``pending``, due now,
        instead of waiting for its lease. Another uploader alive (or no flock: Windows, a read-only
        folder): nothing is taken back; leases end as before.
        """
        if self._uploader_lock is not None or fcntl is None:
            return 0
        try:
            fd = os.open(f"{self.path}.upload-lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            log.debug("no uploader lock beside %s (%s): leases only", self.path, err.strerror)
            return 0
        self._uploader_lock = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another uploader is alive: its batch is its own
            fcntl.flock(fd, fcntl.LOCK_SH)
            return 0
        try:
            with self._write("take back an interrupted upload") as conn:
                orphans = conn.execute(
                    f"UPDATE records SET state = '{PENDING}', next_attempt_at = ?,"
                    " last_error = 'the previous upload stopped mid-batch'"
                    f" WHERE state = '{SENDING}'", [self.now()],
                ).rowcount
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)  # from now on, one uploader among others
        if orphans:
            log.info("took back %d records from an upload that stopped mid-batch", orphans)
        return orphans

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

    # msgids: the record's ``id`` is the msgid's 18 digits, yyyyMMddHHmmss * 10**4 + terminal * 100 +
    # counter, so ids and msgids order alike and the table's key is the uniqueness check.

    def _stamp(self, now: dt.datetime) -> tuple[int, str, str]:
        """(yyyyMMddHHmmss as an int, ``inf_time``, ``created_at``) for ``now``; the first two are kept
        per second (strftime costs more than the rest of the msgid)."""
        local = now.astimezone(CST)
        second = local.replace(microsecond=0)
        if second != self._second:
            self._second = second
            self._second_text = (int(second.strftime(MSGID_TIME)), second.strftime(INF_TIME))
        stamp, inf_time = self._second_text
        return stamp, inf_time, local.isoformat()

    def _after(self, high: int, term: int) -> int:
        """The smallest id of terminal ``term`` above ``high`` (past counter 99: the next second)."""
        stamp, rest = divmod(high, 10_000)
        if rest // SEQ_PER_SECOND < term:
            return stamp * 10_000 + term * SEQ_PER_SECOND
        if rest // SEQ_PER_SECOND == term and rest % SEQ_PER_SECOND < SEQ_PER_SECOND - 1:
            return high + 1
        following = dt.datetime.strptime(str(stamp), MSGID_TIME) + dt.timedelta(seconds=1)
        return int(following.strftime(MSGID_TIME)) * 10_000 + term * SEQ_PER_SECOND

    def _next_id(self, stamp: int, term: int, high: int | None) -> int:
        """The id for a record made in second ``stamp``: that second's first, unless ids already reach
        it (several per second, or a clock set back): then the one after ``high``."""
        own = stamp * 10_000 + term * SEQ_PER_SECOND
        return own if high is None or own > high else max(own, self._after(high, term))

    def _high(self, conn: sqlite3.Connection) -> int | None:
        """The highest id used in this file: records, and msgids issued without a record (sign-ins)."""
        high: int | None = conn.execute(_HIGH).fetchone()[0]
        return high

    def _paced_id(self, stamp: int, high: int | None) -> int | None:
        """The next id for second ``stamp`` after ``high`` (:meth:`_next_id`), or None when it would run
        more than ``max_ahead`` seconds ahead of the clock (a burst past 100 msgids a second): then the
        caller waits for the clock (:meth:`_wait_for_clock`). Msgids already further ahead than that (a
        clock set back, a msgid issued on another clock) are no burst: the next one is taken."""
        key = self._next_id(stamp, self.require_station().terminal_no, high)
        if self.max_ahead is None or _seconds_ahead(key, stamp) <= self.max_ahead:
            return key
        return key if _seconds_ahead(high or 0, stamp) > self.max_ahead else None

    def _wait_for_clock(self, waited: float, consequence: str = "") -> float:
        """Sleep a moment for the clock to move on (a burst of msgids, :meth:`_paced_id`); the time waited
        so far, or :class:`QueueError` when the clock does not move on."""
        limit = 2 * (self.max_ahead or 0) + 10
        if waited > limit:
            raise QueueError(f"The record queue {self.path} cannot take more than {SEQ_PER_SECOND} msgids a second "
                             f"from one terminal: the clock does not move on.{consequence}")
        time.sleep(0.2)
        return waited + 0.2

    def next_msgid(self) -> str:
        """A fresh msgid for a message that is not kept (a sign-in, a query such as 1101); saved as the
        floor of later msgids, so no record reuses it. The floor is committed without waiting for the
        disk (``synchronous=NORMAL``: it survives a crash of the process, and the next record's FULL
        commit makes it durable); after a power cut a query's msgid may come again, which the platform
        answers ``MSGID_TAKEN`` with nothing done, and the caller asks again (docs/central-api.md)."""
        station = self.require_station()
        conn = self.db
        waited, key = 0.0, None
        with self._errors("allocate a message id"):
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            while key is None:
                stamp = self._stamp(self.clock())[0]
                with self._write("allocate a message id") as conn:
                    data_version = conn.execute("PRAGMA data_version").fetchone()[0]
                    key = self._paced_id(stamp, self._high(conn))
                    if key is not None:
                        conn.execute("INSERT OR REPLACE INTO meta VALUES ('msgid_floor', ?)", [str(key)])
                if key is None:
                    waited = self._wait_for_clock(waited)
        finally:
            with self._errors("allocate a message id"):
                conn.execute("PRAGMA synchronous=FULL")
        self._last, self._data_version = key, data_version
        return f"{station.fixmedins_code}{key}"

    def add(
        self,
        infno: str,
        input: dict[str, Any],
        *,
        insured_region: str,
        card_sn: str | None = None,
        operator: Operator | None = None,
        held: bool = False,
    ) -> QueuedRecord:
        """Queue one transaction to upload later; when this returns, the record is on disk with its
        final msgid. Only what the platform takes in a batch (:data:`message.infno.QUEUEABLE`) can
        be queued: every other transaction is an online call (:meth:`begin_call`).

        ``held``: the record is queued in the state ``held``, which no uploader claims, until
        :meth:`release` (the card change it records is done) or :meth:`withdraw` (it failed).

        ``insured_region`` is the person's insured region; it differs from the station's region for
        cross-region care. ``card_sn`` (the card identification code) lets the kiosk find the record.
        Amounts in ``input`` must be :class:`message.envelope.Fen` (:data:`message.envelope.AMOUNTS`).
        Raises :class:`QueueError` (disk full, read-only...) or :class:`RecordError`, and then nothing
        was saved.
        """
        if infno not in QUEUEABLE:
            raise RecordError(f"{infno} ({label(infno)}) is an online call: it cannot wait in "
                              "the queue")
        return self._insert(infno, input, insured_region, card_sn, operator, HELD if held else PENDING, 0.0)

    def begin_call(self, infno: str, input: dict[str, Any], *, insured_region: str, card_sn: str | None = None,
                   operator: Operator | None = None, lease: float = 60.0) -> QueuedRecord:
        """Journal the intent of an online call before it is made (docs/platform.md, "The journal"):
        the record is ``calling``, its lease ``lease`` seconds from now (``next_attempt_at``). The call
        is then answered (:meth:`answer_call`), or, its answer lost, reversed (:meth:`end_call`). A
        ``calling`` record whose lease has run out is *unknown*: its caller died or gave up, and
        :meth:`unknown_calls` finds it. Same errors as :meth:`add`; nothing was saved then."""
        return self._insert(infno, input, insured_region, card_sn, operator, CALLING, lease)

    def _insert(self, infno: str, input: dict[str, Any], insured_region: str, card_sn: str | None,
                operator: Operator | None, state: str, lease: float) -> QueuedRecord:
        """One INSERT per record (docs/central-api.md, "The local queue"): inside the write lock, the
        highest id is this connection's last one unless ``PRAGMA data_version`` says another connection
        has written since, and only then is it read. The table's key (``id``, the msgid's digits) is
        the uniqueness check itself."""
        station = self.require_station()
        if not isinstance(input, dict):
            raise RecordError("the transaction's input must be a JSON object")
        try:
            check_amounts(infno, input)  # amounts as Fen: the platform refuses anything else
        except MessageError as err:
            raise RecordError(str(err)) from None
        # the whole envelope but its msgid and time, validated (RecordError) before any transaction
        head, (middle, end) = self._envelope_parts(infno, insured_region, operator or station.operator)
        try:
            body = encode(input)
        except MessageError as err:
            raise RecordError(str(err)) from None
        treatment = station.region
        waited = 0.0
        while True:
            now = self.clock()
            stamp, inf_time, created_at = self._stamp(now)
            ts = now.timestamp() + lease
            with self._errors("record the transaction", " The transaction was NOT saved."):
                conn = self.db
                execute = conn.execute
                execute("BEGIN IMMEDIATE")
                try:
                    data_version = execute("PRAGMA data_version").fetchone()[0]
                    high = self._last if data_version == self._data_version else self._high(conn)
                    paced = self._paced_id(stamp, high)
                    if paced is not None:
                        key = paced
                        msgid = f"{station.fixmedins_code}{key}"
                        envelope = f"{head}{msgid}{middle}{inf_time}{end}{body}}}"
                        sealed = (key, msgid, infno, created_at, card_sn, insured_region, treatment, envelope)
                        execute(_INSERT, (*sealed, ts, state, os.getpid() if state == CALLING else None,
                                          self.seal.record(sealed)))
                        execute("COMMIT")
                        break
                    execute("ROLLBACK")
                except BaseException:
                    if conn.in_transaction:
                        execute("ROLLBACK")
                    raise
            waited = self._wait_for_clock(waited, " The transaction was NOT saved.")
        self._last, self._data_version = key, data_version
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %s%s", "journaled" if state == CALLING else "queued", infno, msgid,
                     " (cross-region)" if insured_region != treatment else "")
        return QueuedRecord(msgid, infno, dt.datetime.fromisoformat(created_at), card_sn, insured_region, treatment,
                            envelope, state, 0, ts, None, None, None, None)

    # --- the journal of online calls -----------------------------------------------------------------

    def answer_call(self, msgid: str, response: dict[str, Any], record: QueuedRecord | None = None) -> QueuedRecord:
        """Record the platform's answer to a ``calling`` record of this process: ``answered`` (infcode 0)
        or ``refused``; the record as it now stands (built from ``record``, the one :meth:`begin_call`
        returned, when given, else read back). :class:`QueueError` when ``msgid`` is not calling or no
        longer this process's (another process claimed it, :meth:`claim_unknown`, once its lease ran
        out: the caller must then not act on the answer)."""
        infcode = response.get("infcode")
        state = ANSWERED if infcode == 0 else REFUSED
        done_at = self.clock().astimezone(CST)
        code = infcode if isinstance(infcode, int) else -1
        error = None if state == ANSWERED else str(response.get("err_msg") or "refused")[:500]
        reply = json.dumps(response, ensure_ascii=False)
        with self._write("record the platform's answer", " The answer is NOT in the journal.") as conn:
            changed = conn.execute(
                "UPDATE records SET state = ?, done_at = ?, infcode = ?, reply = ?, answer_mac = ?, last_error = ?,"
                f" attempts = attempts + 1 WHERE id = ? AND msgid = ? AND state = '{CALLING}' AND owner = ?",
                [state, done_at.isoformat(), code, reply, self._answer_seal(_id(msgid), reply, state), error,
                 _id(msgid), msgid,
                 os.getpid()],
            ).rowcount
        if not changed:
            raise QueueError(f"The journal entry {msgid} is no longer this command's to answer (another took it over)")
        if record is None or record.msgid != msgid:
            return self.get(msgid)
        return dataclasses.replace(record, state=state, attempts=record.attempts + 1, last_error=error,
                                   done_at=done_at, infcode=code, reply=response)

    def end_call(self, msgid: str, state: str, note: str, reply: dict[str, Any] | None = None) -> bool:
        """A ``calling`` record whose answer never came ends as ``reversed`` (``reply``: the 2601
        answer) or ``void`` (it never reached the platform, or a reversal itself unanswered), with
        ``note`` as its last error. Returns whether it was still calling and this process's."""
        if state not in (REVERSED, VOID):
            raise ValueError(f"a call ends reversed or void, not {state}")
        stored = json.dumps(reply, ensure_ascii=False) if reply is not None else None
        with self._write("record the reversal", " The journal still says the call is unknown.") as conn:
            return bool(conn.execute(
                "UPDATE records SET state = ?, done_at = ?, reply = ?, answer_mac = ?, last_error = ?"
                f" WHERE id = ? AND msgid = ? AND state = '{CALLING}' AND owner = ?",
                [state, self.clock().astimezone(CST).isoformat(), stored, self._answer_seal(_id(msgid), stored, state),
                 note[:500], _id(msgid), msgid, os.getpid()],
            ).rowcount)

    def note_call(self, msgid: str, error: str, lease: float | None = None) -> None:
        """Note why a ``calling`` record of this process has no answer yet; ``lease``: seconds from now
        until another process may resolve it (0: at once, the record handed back; None: unchanged)."""
        with self._write("note the failed call") as conn:
            conn.execute(
                "UPDATE records SET last_error = ?, attempts = attempts + 1,"
                " next_attempt_at = coalesce(?, next_attempt_at)"
                f" WHERE id = ? AND msgid = ? AND state = '{CALLING}' AND owner = ?",
                [error[:500], None if lease is None else self.now() + lease, _id(msgid), msgid, os.getpid()])

    def unknown_calls(self) -> list[QueuedRecord]:
        """``calling`` records no live caller is working on, oldest first: the lease has run out, or the
        calling process is gone (killed, or it gave up with the platform unreachable). Each must be
        resolved with a 2601 reversal (or the platform's record), never sent again."""
        now = self.now()
        with self._errors("be read"):
            rows = self.db.execute(f"SELECT msgid, next_attempt_at, owner FROM records WHERE state = '{CALLING}'"
                                   " ORDER BY id").fetchall()
        unknown = [_id(msgid) for msgid, lease, owner in rows if lease <= now or not _alive(owner)]
        if not unknown:
            return []
        found = self._select(f"id IN ({', '.join(map(str, unknown))})", [], damaged=True)
        damaged = [record.msgid for record in found if record.damaged]
        if damaged:  # its envelope cannot be trusted to reverse it: named in the log and in 'queue list'
            log.warning("unknown calls failing their integrity check are left alone: %s", ", ".join(damaged))
        return [record for record in found if not record.damaged]

    def claim_unknown(self, msgid: str, lease: float) -> bool:
        """Take an unknown call to resolve it (so two resolvers do not both work on it): it becomes this
        process's, with a lease of ``lease`` seconds, if it is still ``calling`` and no live caller holds it."""
        now = self.now()
        with self._write("take an unknown call") as conn:
            row = conn.execute(f"SELECT next_attempt_at, owner FROM records WHERE id = ? AND msgid = ? AND"
                               f" state = '{CALLING}'", [_id(msgid), msgid]).fetchone()
            if row is None or (row[0] > now and _alive(row[1])):
                return False
            conn.execute("UPDATE records SET next_attempt_at = ?, owner = ? WHERE id = ?",
                         [now + lease, os.getpid(), _id(msgid)])
            return True

    def standing(self, infno: str, key: str, value: str) -> list[QueuedRecord]:
        """:meth:`with_data` restricted to records that stand (:data:`STANDING`): queued, or answered
        (or unknown) online; oldest first."""
        return [r for r in self.with_data(infno, key, value) if r.state in STANDING]

    def release(self, msgid: str) -> QueuedRecord:
        """A ``held`` record becomes ``pending``, due now (its card change is done): from here on it is
        uploaded like any other. :class:`QueueError` if ``msgid`` is not a held record."""
        with self._write("record the transaction", " The transaction was NOT released for upload.") as conn:
            changed = conn.execute(
                f"UPDATE records SET state = '{PENDING}', next_attempt_at = ? WHERE id = ? AND msgid = ?"
                f" AND state = '{HELD}'", [self.now(), _id(msgid), msgid]).rowcount
        if not changed:
            raise QueueError(f"No held record {msgid} in the queue")
        log.info("released %s", msgid)
        return self.get(msgid)

    def withdraw(self, msgid: str) -> bool:
        """Delete a ``held`` record (its card change failed: nothing happened to record). Its msgid is
        kept as the floor, so it is never issued again. Returns whether there was one."""
        key = _id(msgid)
        with self._write("withdraw a held record") as conn:
            gone = conn.execute(f"DELETE FROM records WHERE id = ? AND msgid = ? AND state = '{HELD}'",
                                [key, msgid]).rowcount
            if gone:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('msgid_floor', ?)",
                             [str(max(key, conn.execute(_HIGH).fetchone()[0]))])
        if gone:
            log.info("withdrew held %s", msgid)
        return bool(gone)

    def held(self, card_sn: str | None = None) -> list[QueuedRecord]:
        """The ``held`` records (of one card), oldest first."""
        if card_sn is None:
            return self._select(f"state = '{HELD}'", [])
        return self._select(f"state = '{HELD}' AND card_sn = ?", [card_sn])

    def _envelope_parts(self, infno: str, insured_region: str, operator: Operator) -> tuple[str, tuple[str, str]]:
        """The envelope's wire JSON cut around its msgid, ``inf_time`` and ``input``: exactly the text
        :meth:`Envelope.to_wire` writes, made once per transaction code, region and operator."""
        cache_key = (infno, insured_region, operator)
        parts = self._envelopes.get(cache_key)
        if parts is None:
            try:
                fields = Envelope(infno, "", self.require_station(), operator, insured_region, self.clock(),
                                  {}).to_dict()
            except MessageError as err:
                raise RecordError(str(err)) from None
            draft = encode({**fields, "inf_time": "", "input": None})
            mark = "@"  # marks no field contains (so each occurs once: quotes surround them, they have none)
            while mark in draft:
                mark += "@"
            marks = f"{mark}m{mark}", f"{mark}t{mark}"
            wire = encode({**fields, "msgid": marks[0], "inf_time": marks[1], "input": None})
            head, rest = wire.split(marks[0])
            middle, end = rest.split(marks[1])
            parts = head, (middle, end.removesuffix("null}"))
            if len(self._envelopes) > 512:
                self._envelopes.clear()
            self._envelopes[cache_key] = parts
        return parts

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
                f"SELECT id FROM records WHERE state IN ('{PENDING}', '{SENDING}') AND {due}"
                " ORDER BY id LIMIT ?",
                [now, int(limit)],
            ).fetchall()
            conn.executemany(
                f"UPDATE records SET state = '{SENDING}', next_attempt_at = ?, attempts = attempts + 1 WHERE id = ?",
                [(now + lease, rowid) for (rowid,) in rows],
            )
        claimed = self._select(f"id IN ({', '.join(str(r) for (r,) in rows)})", [], damaged=True) if rows else []
        damaged = [record.msgid for record in claimed if record.damaged]
        if damaged:  # never sent: a forged amount would reach the platform; dead, named, the rest goes on
            log.warning("records failing their integrity check are not sent: %s", ", ".join(damaged))
            with self._write("set aside damaged records") as conn:
                conn.executemany(f"UPDATE records SET state = '{DEAD}', last_error = ? WHERE msgid = ? AND state = "
                                 f"'{SENDING}'", [("integrity check failed: edited or damaged, not sent", m)
                                                  for m in damaged])
        return [record for record in claimed if not record.damaged]

    def settle(self, outcomes: Iterable[Outcome]) -> tuple[int, int]:
        """Apply the service's answers: infcode 0 -> sent, negative -> dead (with ``err_msg``).

        Only unconfirmed records change; sent and dead are final here. Returns (sent, dead).
        """
        done_at = self.clock().astimezone(CST).isoformat()
        sent = dead = 0
        with self._write("record the upload") as conn:
            for outcome in outcomes:
                state = SENT if outcome.infcode == 0 else DEAD
                reply = json.dumps(outcome.reply, ensure_ascii=False) if outcome.reply is not None else None
                changed = conn.execute(
                    "UPDATE records SET state = ?, done_at = ?, infcode = ?, reply = ?, answer_mac = ?, last_error = ?"
                    f" WHERE id = ? AND msgid = ? AND state IN ('{PENDING}', '{SENDING}')",
                    [
                        state,
                        done_at,
                        outcome.infcode,
                        reply,
                        self._answer_seal(_id(outcome.msgid), reply, state),
                        (outcome.err_msg or "refused") if state == DEAD else None,
                        _id(outcome.msgid),
                        outcome.msgid,
                    ],
                ).rowcount
                sent += changed and state == SENT
                dead += changed and state == DEAD
        return sent, dead

    def rekey(self, msgid: str, reason: str) -> QueuedRecord:
        """Give an unconfirmed record a new msgid, due now: the platform said its msgid was used for
        another message (``message.envelope.MSGID_TAKEN``: another terminal issued the same one), so
        nothing was done under it and the record must go again under a msgid of its own, not die
        (docs/central-api.md, "msgid"). The envelope is the same but for the msgid. :class:`QueueError`
        when ``msgid`` is not a pending or sending record."""
        station = self.require_station()
        waited, key = 0.0, None
        while key is None:
            stamp = self._stamp(self.clock())[0]
            with self._write("give a record a new msgid") as conn:
                key = self._paced_id(stamp, self._high(conn))
            if key is None:
                waited = self._wait_for_clock(waited)
        with self._write("give a record a new msgid") as conn:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM records WHERE id = ? AND msgid = ? AND state IN"
                                  f" ('{PENDING}', '{SENDING}')", [_id(msgid), msgid])
            found = cursor.fetchone()
            if found is None:
                raise QueueError(f"No unsent record {msgid} in the queue")
            row = dict(zip((c[0] for c in cursor.description), found))
            if not self._trusted(row):  # sealed anew below: only what was sealed before
                raise DamagedRecordError(self.path, [msgid])
            key = self._next_id(stamp, station.terminal_no, self._high(conn))
            new = f"{station.fixmedins_code}{key}"
            envelope = row["envelope"].replace(f'"msgid":"{msgid}"', f'"msgid":"{new}"', 1)
            conn.execute("DELETE FROM records WHERE id = ?", [_id(msgid)])
            sealed = (key, new, row["infno"], row["created_at"], row["card_sn"], row["insured_region"],
                      row["treatment_region"], envelope)
            conn.execute(_INSERT, (*sealed, self.now(), PENDING, None, self.seal.record(sealed)))
            conn.execute("UPDATE records SET last_error = ? WHERE id = ?", [f"{reason} (was {msgid})"[:500], key])
            data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        self._last, self._data_version = key, data_version
        log.info("re-keyed %s as %s: %s", msgid, new, reason)
        return self.get(new)

    def retry_later(self, schedule: Iterable[tuple[str, float]], error: str) -> None:
        """A delivery failed without an answer: each ``(msgid, next_attempt_at)`` goes back to pending,
        due at that time (the uploader's backoff), with ``error`` as its last error."""
        with self._write("record the failed upload") as conn:
            conn.executemany(
                f"UPDATE records SET state = '{PENDING}', next_attempt_at = ?, last_error = ?"
                f" WHERE id = ? AND msgid = ? AND state IN ('{PENDING}', '{SENDING}')",
                [(at, error, _id(m), m) for m, at in schedule],
            )

    def retry_dead(self, msgids: Iterable[str] | None = None) -> int:
        """Dead records (all, or those of ``msgids``) back to pending, due now, attempts from zero.

        With ``msgids``, every one must be a dead record, else nothing changes (:class:`QueueError`).
        Returns how many records were revived.
        """
        wanted = None if msgids is None else list(dict.fromkeys(msgids))
        now = self.now()
        revive = (f"UPDATE records SET state = '{PENDING}', next_attempt_at = ?, attempts = 0, done_at = NULL,"
                  f" infcode = NULL, reply = NULL, answer_mac = NULL WHERE state = '{DEAD}'")
        with self._write("put dead records back") as conn:
            if wanted is None:
                return conn.execute(revive, [now]).rowcount
            dead = {m for (m,) in conn.execute(
                f"SELECT msgid FROM records WHERE state = '{DEAD}' AND id IN ({', '.join('?' * len(wanted))})",
                [_id(m) for m in wanted],
            )} if wanted else set()
            missing = [m for m in wanted if m not in dead]
            if missing:
                raise QueueError(f"Not a dead record in the queue: {', '.join(missing)}")
            conn.executemany(revive + " AND id = ?", [(now, _id(m)) for m in wanted])
            return len(wanted)

    # --- reading ------------------------------------------------------------------------------------

    def _select(self, where: str, params: list[Any], limit: int | None = None, newest_first: bool = False,
                damaged: bool = False) -> list[QueuedRecord]:
        """The records ``where`` says, each checked against its seal: one that fails is
        :class:`DamagedRecordError` (naming them all), or with ``damaged`` listed as such."""
        sql = f"SELECT {_COLUMNS} FROM records WHERE {where} ORDER BY id{' DESC' if newest_first else ''}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._errors("be read"):
            cursor = self.db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor]
        intact = self._trusted
        if all(intact(row) for row in rows):
            return [QueuedRecord.from_row(row) for row in rows]
        if not damaged:
            raise DamagedRecordError(self.path, [str(row["msgid"])[:40] for row in rows if not intact(row)])
        return [QueuedRecord.from_row(row) if intact(row) else QueuedRecord.damaged_row(row) for row in rows]

    def get(self, msgid: str) -> QueuedRecord:
        """The record ``msgid``; :class:`QueueError` if there is none."""
        found = self._select("id = ? AND msgid = ?", [_id(msgid), msgid])
        if not found:
            raise QueueError(f"No record {msgid} in the queue")
        return found[0]

    def pending(self, limit: int | None = None) -> list[QueuedRecord]:
        """Records not yet confirmed (``pending`` or ``sending``), oldest first."""
        return self._select(f"state IN ('{PENDING}', '{SENDING}')", [], limit)

    def records(self, state: str | None = None, limit: int | None = None, card_sn: str | None = None,
                card_number: str | None = None, *, damaged: bool = False) -> list[QueuedRecord]:
        """Records newest first: all, or in one state, or of one card (by its identification code
        ``card_sn``, or by the ``card_number`` printed on it), or both. ``damaged``: records that fail
        their seal are listed as damaged (for ``sscard queue list``), else :class:`DamagedRecordError`."""
        if state is not None and state not in ALL_STATES:
            raise QueueError(f"Unknown record state {state!r}: use one of {', '.join(ALL_STATES)}")
        clauses, params = [], []
        if state is not None:
            clauses.append("state = ?")
            params.append(state)
        if card_sn is not None:
            clauses.append("card_sn = ?")
            params.append(card_sn)
        if card_number is not None:
            # the card's codes: those of the records whose credential names the number (person_fields
            # in terminal/flows/common.py writes it as mdtrt_cert_no, under data or mdtrtinfo)
            clauses.append("card_sn IN (SELECT card_sn FROM records WHERE card_sn IS NOT NULL AND instr(envelope, ?) "
                           "AND EXISTS (SELECT 1 FROM json_tree(envelope, '$.input') "
                           "WHERE key = 'mdtrt_cert_no' AND atom = ?))")
            params += [card_number, card_number]
        return self._select(" AND ".join(clauses) or "1", params, limit, newest_first=True, damaged=damaged)

    def with_data(self, infno: str, key: str, value: str) -> list[QueuedRecord]:
        """The recorded (not held) ``infno`` transactions whose ``input.data[key]`` is ``value``, oldest
        first: e.g. the settlements of one till sale (``chrg_bchno``). SQLite reads the envelopes itself."""
        if not key.isidentifier():
            raise ValueError(f"not a field name: {key!r}")
        return self._select(f"infno = ? AND state != '{HELD}' AND json_extract(envelope, ?) = ?",
                            [infno, f"$.input.data.{key}", value])

    def by_answer(self, infnos: tuple[str, ...], paths: tuple[str, ...], value: str) -> list[QueuedRecord]:
        """The records of these transactions whose stored answer holds ``value`` at one of the JSON
        ``paths`` (e.g. a registration by the ``mdtrt_id`` the platform gave it), oldest first."""
        marks = ", ".join("?" * len(infnos))
        found = " OR ".join("json_extract(reply, ?) = ?" for _ in paths)
        return self._select(f"infno IN ({marks}) AND reply IS NOT NULL AND ({found})",
                            [*infnos, *[x for path in paths for x in (path, value)]])

    def extract(self, state: str, infnos: tuple[str, ...], columns: dict[str, tuple[str, str]],
                where: tuple[str, str, str] | None = None) -> list[dict[str, Any]]:
        """For the records of these transactions in ``state``: ``msgid``, ``infno`` and, per name of
        ``columns``, the JSON value at a path of the record's ``envelope`` or ``reply`` (``("reply",
        "$.output.setlinfo.setl_id")``), read by SQLite in one query (no record decoded in Python);
        ``where`` (column, path, text): only those whose value there starts with the text. Oldest first."""
        sources = {"envelope", "reply"}
        if any(source not in sources for source, _path in columns.values()) or (where and where[0] not in sources):
            raise ValueError("columns are read from the envelope or the reply")
        picks = ", ".join(f"json_extract({source}, ?)" for source, _path in columns.values())
        params: list[Any] = [path for _source, path in columns.values()]
        marks = ", ".join("?" * len(infnos))
        # the seals' fields beside the values, so that no value is summed from a record that fails its seal
        checked = f"{', '.join(SEALED)}, reply, mac, answer_mac, state"
        sql = f"SELECT {checked}, {picks} FROM records WHERE state = ? AND infno IN ({marks})"
        params += [state, *infnos]
        if where is not None:
            sql += f" AND substr(json_extract({where[0]}, ?), 1, ?) = ?"
            params += [where[1], len(where[2]), where[2]]
        names = (*SEALED, "reply", "mac", "answer_mac", "state")
        with self._errors("be read"):
            rows = [(dict(zip(names, row)), row[len(names):]) for row in self.db.execute(sql + " ORDER BY id", params)]
        damaged = [str(sealed["msgid"])[:40] for sealed, _values in rows if not self._trusted(sealed)]
        if damaged:
            raise DamagedRecordError(self.path, damaged)
        return [{"msgid": sealed["msgid"], "infno": sealed["infno"], **dict(zip(columns, values))}
                for sealed, values in rows]

    def state_of(self, msgid: str) -> str | None:
        """The state of record ``msgid`` now (None when there is none)."""
        with self._errors("be read"):
            row = self.db.execute("SELECT state FROM records WHERE id = ? AND msgid = ?", [_id(msgid), msgid]).fetchone()
        return row[0] if row else None

    def for_card(self, card_sn: str, limit: int | None = None) -> list[QueuedRecord]:
        """The records this terminal holds for one card (kiosk inquiry, docs/design.md item 7, the balance,
        the activation), newest first; ``held`` ones are not recorded yet and not among them."""
        return self._select(f"card_sn = ? AND state != '{HELD}'", [card_sn], limit, newest_first=True)

    def counts(self) -> dict[str, int]:
        """How many records in each state (every state of :data:`STATES`, zero when none; ``held``
        too when there is one)."""
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
            due: float | None = self.db.execute(
                f"SELECT min(next_attempt_at) FROM records WHERE state IN ('{PENDING}', '{SENDING}')"
            ).fetchone()[0]
            return due


_COLUMNS = ("id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope, state, attempts,"
            " next_attempt_at, last_error, done_at, infcode, reply, mac, answer_mac")
_INSERT = (
    "INSERT INTO records (id, msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,"
    " next_attempt_at, state, owner, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
)
#: the highest id used: records, and msgids issued without a record (``next_msgid``); 0 when none
_HIGH = (
    "SELECT max(coalesce((SELECT max(id) FROM records), 0),"
    " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'msgid_floor'), 0))"
)


def _seconds_ahead(key: int, stamp: int) -> float:
    """How many seconds the msgid digits ``key`` run ahead of the second ``stamp`` (yyyyMMddHHmmss)."""
    issued = key // 10_000
    if issued <= stamp:
        return 0.0
    later = dt.datetime.strptime(str(issued), MSGID_TIME) - dt.datetime.strptime(str(stamp), MSGID_TIME)
    return later.total_seconds()


def record_data(record: QueuedRecord) -> dict[str, Any]:
    """The transaction's main object in a record's envelope: ``input.data``, or ``input.mdtrtinfo`` (an
    admission); amounts as the yuan strings sent. Empty when it has neither."""
    body = json.loads(record.envelope).get("input", {})
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) and isinstance(body, dict):
        data = body.get("mdtrtinfo")
    return data if isinstance(data, dict) else {}


def _alive(pid: object) -> bool:
    """Whether process ``pid`` of this computer is running (a ``calling`` record's owner). Unknown
    (no permission to ask, not a pid) counts as alive: then the lease decides."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True


def _id(msgid: str) -> int:
    """A msgid's row id (its 18 digits); -1, which no row has, for anything not a msgid."""
    return int(msgid[12:]) if isinstance(msgid, str) and MSGID_RE.fullmatch(msgid) else -1
