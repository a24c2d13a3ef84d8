"""The virtual platform's ledger: persons, accounts, visits, settlements and every message answered.

One SQLite file (WAL, ``synchronous=FULL``): an answer is sent only after the transaction that made it
has committed, so what the platform said survives a crash. Every request is one transaction, and the
ledger runs one request at a time (:attr:`Ledger.lock`; the server gives it a single thread), so each
invariant below holds atomically across every terminal of every institution (docs/platform.md,
"What the virtual platform enforces"):

- a sale number (``chrg_bchno``, compared trimmed and case-folded) settles once per institution: a
  unique index over the settlements not reversed;
- an account balance never goes negative (``CHECK (balc >= 0)``, and every debit is checked first);
- a settlement is cancelled at most once and the cancellation restores exactly what it took (the
  account, the year's deductible and fund use stored with it);
- a reversal (2601) undoes exactly the transaction it names, or says there was nothing to undo and
  refuses that msgid for ever after (an original that arrives after its reversal is not executed);
- an old medical card's account moves once, ever;
- a msgid is unique per institution; an accepted message is final (its repeat gets the first answer,
  other content under its msgid is refused), a refused one is judged again when it comes back;
- a message is executed only for the institution whose gateway credentials signed the request, and
  only under a sign-in (``sign_no``) of that institution.

Persons, cards and institutions are seeded from ``fixtures/platform/`` (TEST data) when the file is new.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.resources
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sscard.central import policy
from sscard.message.envelope import (
    CST,
    DATE,
    GATEWAY_WINDOW,
    INF_TIME,
    MSGID_TAKEN,
    REGION_RE,
    MessageError,
    ascii_digits,
    clr_type,
    iso_time,
    msgid_terminal,
    msgid_time,
    parse_yuan,
    signature_matches,
    yuan,
)
from sscard.message.infno import CODES, PREVIEWS, QUEUEABLE, REVERSIBLE, SETTLEMENTS, Infno, label
from sscard.terminal.private import create_private_file, warn_if_shared

log = logging.getLogger(__name__)

#: envelope fields every message must carry (docs/platform.md, "Envelope")
REQUIRED = (
    "infno", "msgid", "mdtrtarea_admvs", "insuplc_admdvs", "opter_type", "opter", "opter_name",
    "inf_time", "fixmedins_code", "fixmedins_name", "sign_no", "input",
)
#: transactions that move nothing: their requests commit without waiting for the disk
#: (:meth:`Ledger.transaction`); a power cut may lose a sign-in (the terminal signs in again, 401) or
#: a query's stored answer (a repeat of it is answered anew), never money
QUERIES = frozenset({Infno.PERSON, Infno.PHARMACY_PREVIEW, Infno.OUTPATIENT_PREVIEW, Infno.RECONCILIATION,
                     Infno.SIGN_IN})
#: how long a used nonce is remembered (seconds): past it, its timestamp is stale anyway
NONCE_MEMORY = 2 * GATEWAY_WINDOW
#: how long an e-voucher token from the virtual e-voucher query stays valid (seconds)
TOKEN_LIFETIME = 600

SCHEMA = """
CREATE TABLE IF NOT EXISTS institutions (
    fixmedins_code TEXT PRIMARY KEY, fixmedins_name TEXT NOT NULL, region TEXT NOT NULL,
    paasid TEXT NOT NULL UNIQUE, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS persons (
    psn_no TEXT PRIMARY KEY, certno TEXT NOT NULL UNIQUE, psn_name TEXT NOT NULL, gend TEXT NOT NULL,
    naty TEXT NOT NULL, brdy TEXT NOT NULL, insuplc_admdvs TEXT NOT NULL, emp_name TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS insurances (
    psn_no TEXT NOT NULL REFERENCES persons, insutype TEXT NOT NULL, psn_type TEXT NOT NULL,
    psn_insu_stas TEXT NOT NULL, psn_insu_date TEXT NOT NULL, paus_insu_date TEXT,
    PRIMARY KEY (psn_no, insutype));
CREATE TABLE IF NOT EXISTS accounts (
    psn_no TEXT PRIMARY KEY REFERENCES persons, balc INTEGER NOT NULL CHECK (balc >= 0));
CREATE TABLE IF NOT EXISTS cards (
    card_no TEXT PRIMARY KEY, card_sn TEXT NOT NULL UNIQUE, psn_no TEXT NOT NULL REFERENCES persons,
    state TEXT NOT NULL CHECK (state IN ('normal', 'lost')), activated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS old_cards (
    card_no TEXT PRIMARY KEY, psn_no TEXT NOT NULL REFERENCES persons, balc INTEGER NOT NULL CHECK (balc >= 0),
    moved_msgid TEXT, moved_at TEXT);
CREATE TABLE IF NOT EXISTS vouchers (qrcode TEXT PRIMARY KEY, psn_no TEXT NOT NULL REFERENCES persons);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, psn_no TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS signins (
    sign_no TEXT PRIMARY KEY, fixmedins_code TEXT NOT NULL, opter TEXT NOT NULL, terminal_no INTEGER NOT NULL,
    dev_no TEXT NOT NULL, at TEXT NOT NULL, signed_out_at TEXT);
CREATE TABLE IF NOT EXISTS messages (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, digest TEXT NOT NULL, envelope TEXT NOT NULL,
    response TEXT NOT NULL, received_at TEXT NOT NULL, infcode INTEGER NOT NULL DEFAULT 0, reversed_by TEXT);
CREATE TABLE IF NOT EXISTS reversals (omsgid TEXT PRIMARY KEY, by_msgid TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (paasid TEXT NOT NULL, nonce TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (paasid, nonce));
CREATE TABLE IF NOT EXISTS visits (
    id INTEGER PRIMARY KEY, mdtrt_id TEXT NOT NULL UNIQUE, fixmedins_code TEXT NOT NULL, psn_no TEXT NOT NULL,
    insutype TEXT NOT NULL, med_type TEXT NOT NULL, infno TEXT NOT NULL, msgid TEXT NOT NULL,
    begntime TEXT NOT NULL, dept_name TEXT NOT NULL DEFAULT '', diseinfo TEXT,
    state TEXT NOT NULL CHECK (state IN ('open', 'cancelled', 'reversed')), cancel_msgid TEXT);
CREATE TABLE IF NOT EXISTS fees (
    mdtrt_id TEXT NOT NULL, feedetl_sn TEXT NOT NULL, chrg_bchno TEXT NOT NULL, amount INTEGER NOT NULL,
    detail TEXT NOT NULL, msgid TEXT NOT NULL, PRIMARY KEY (mdtrt_id, feedetl_sn));
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY, setl_id TEXT NOT NULL UNIQUE, fixmedins_code TEXT NOT NULL, chrg_bchno TEXT NOT NULL,
    chrg_key TEXT NOT NULL, infno TEXT NOT NULL, msgid TEXT NOT NULL, psn_no TEXT NOT NULL, mdtrt_id TEXT,
    insutype TEXT NOT NULL, med_type TEXT NOT NULL, clr_type TEXT NOT NULL,
    medfee INTEGER NOT NULL, fund INTEGER NOT NULL, acct INTEGER NOT NULL, cash INTEGER NOT NULL,
    deductible INTEGER NOT NULL, balc INTEGER NOT NULL, setl_time TEXT NOT NULL, setl_date TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('settled', 'cancelled', 'reversed')),
    cancel_msgid TEXT, cancel_id TEXT, CHECK (fund + acct + cash = medfee));
CREATE UNIQUE INDEX IF NOT EXISTS settlements_sale ON settlements (fixmedins_code, chrg_key) WHERE state != 'reversed';
CREATE INDEX IF NOT EXISTS settlements_day ON settlements (fixmedins_code, setl_date);
CREATE TABLE IF NOT EXISTS years (
    psn_no TEXT NOT NULL, insutype TEXT NOT NULL, year INTEGER NOT NULL,
    deductible_used INTEGER NOT NULL DEFAULT 0 CHECK (deductible_used >= 0),
    fund_used INTEGER NOT NULL DEFAULT 0 CHECK (fund_used >= 0), PRIMARY KEY (psn_no, insutype, year));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Rejected(Exception):
    """One message is refused: answered with infcode -1 and this message; nothing of it is kept."""


class Unsigned(Exception):
    """A message carries a sign_no this institution never got (or signed out): HTTP 401, nothing processed."""


class Unanswerable(Exception):
    """A message has no msgid, so no per-item answer can name it: HTTP 422, nothing processed."""


class Forbidden(Exception):
    """The gateway refuses the request (unknown paasid, bad signature, stale time, reused nonce): HTTP 403."""


def digest(message: dict[str, Any]) -> str:
    """What makes two messages "the same": every field but the session's ``sign_no``."""
    body = {k: v for k, v in message.items() if k != "sign_no"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sale_key(chrg_bchno: str) -> str:
    """A sale number as compared: trimmed and case-folded (the till may print ``t0001`` or ``T0001``)."""
    return chrg_bchno.strip().casefold()


def now_cst() -> dt.datetime:
    return dt.datetime.now(CST)


def fixture(name: str) -> Any:
    """A JSON file of ``fixtures/platform/`` (TEST data, package data of ``fixtures``)."""
    return json.loads((importlib.resources.files("sscard.fixtures") / "platform" / name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Call:
    """One message being executed: who sent it, what it says, when."""

    institution: dict[str, Any]
    message: dict[str, Any]
    now: dt.datetime
    batch: bool

    @property
    def infno(self) -> str:
        return str(self.message["infno"])

    @property
    def msgid(self) -> str:
        return str(self.message["msgid"])

    @property
    def input(self) -> dict[str, Any]:
        body: dict[str, Any] = self.message["input"]
        return body

    def data(self, key: str = "data") -> dict[str, Any]:
        """``input[key]`` (an object), or :class:`Rejected`."""
        value = self.input.get(key)
        if not isinstance(value, dict):
            raise Rejected(f"input.{key} must be an object")
        return value

    @property
    def time(self) -> str:
        return self.now.strftime(INF_TIME)


def text(data: dict[str, Any], key: str, *, required: bool = True, limit: int = 200) -> str:
    """A text field, trimmed; :class:`Rejected` when required and missing, or not text."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise Rejected(f"{key} is missing")
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise Rejected(f"{key} must be text of at most {limit} characters")
    return value.strip()


def fen(data: dict[str, Any], key: str) -> int:
    """An amount field (yuan with two decimals) in fen; :class:`Rejected` otherwise or when negative."""
    try:
        value = parse_yuan(data.get(key))
    except MessageError as err:
        raise Rejected(f"{key}: {err}") from None
    if value < 0:
        raise Rejected(f"{key} must not be negative")
    return int(value)


class Ledger:
    """The platform's store at ``path`` (made and seeded when new). ``clock``: Beijing-time "now"."""

    def __init__(self, path: str | Path, *, clock: Callable[[], dt.datetime] = now_cst, seed: bool = True,
                 read_only: bool = False) -> None:
        """``read_only``: look at an existing ledger (``sscard central show``), changing nothing;
        :class:`sqlite3.Error` when it is not one."""
        self.path = Path(path)
        self.clock = clock
        if read_only:
            self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                        isolation_level=None)
        else:
            try:
                created = create_private_file(self.path)  # 0600 in a 0700 folder: holders' data and credentials
            except OSError as err:  # as SQLite would say it: the callers' one error for a ledger not to be had
                raise sqlite3.OperationalError(f"cannot make the file: {err.strerror or err}") from None
            if created:
                log.info("ledger %s: created", self.path)
            else:
                warn_if_shared(self.path, "platform ledger")
            self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self.conn.execute("PRAGMA busy_timeout=5000")
            if read_only:
                self.conn.execute("SELECT 1 FROM settlements, accounts, messages LIMIT 1").fetchall()
            else:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.executescript(SCHEMA)
            if seed and not read_only and not self.conn.execute("SELECT 1 FROM institutions").fetchone():
                self._seed()
            self.serial = self.conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            #: paasid -> (institution code, token): read once, so the gateway check needs no query
            self.credentials = {row[0]: (row[1], row[2]) for row in self.conn.execute(
                "SELECT paasid, fixmedins_code, token FROM institutions")}
        except BaseException:
            self.conn.close()
            raise
        self.lock = threading.RLock()
        #: messages answered from the ledger (a repeated msgid): retries after lost answers
        self.repeats = 0
        self._requests = 0

    def close(self) -> None:
        self.conn.close()

    # --- set-up -----------------------------------------------------------------------------------

    def _seed(self) -> None:
        """Institutions and persons from ``fixtures/platform`` (TEST data), in one transaction."""
        execute = self.conn.execute
        execute("BEGIN IMMEDIATE")
        try:
            for inst in fixture("institutions.json")["institutions"]:
                execute("INSERT INTO institutions VALUES (?, ?, ?, ?, ?)",
                        [inst["fixmedins_code"], inst["fixmedins_name"], inst["region"], inst["paasid"], inst["token"]])
            for p in fixture("persons.json")["persons"]:
                self.add_person(p)
            execute("COMMIT")
        except BaseException:
            execute("ROLLBACK")
            raise

    def add_person(self, p: dict[str, Any]) -> None:
        """One person of ``persons.json``'s shape (inside the caller's transaction)."""
        execute = self.conn.execute
        execute("INSERT INTO persons VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [p["psn_no"], p["certno"], p["psn_name"], p["gend"], p["naty"], p["brdy"], p["insuplc_admdvs"],
                 p.get("emp_name", "")])
        for i in p.get("insurances", []):
            execute("INSERT INTO insurances VALUES (?, ?, ?, ?, ?, ?)",
                    [p["psn_no"], i["insutype"], i["psn_type"], i["psn_insu_stas"], i["psn_insu_date"],
                     i.get("paus_insu_date")])
        if "account_fen" in p:
            execute("INSERT INTO accounts VALUES (?, ?)", [p["psn_no"], int(p["account_fen"])])
        for c in p.get("cards", []):
            execute("INSERT INTO cards VALUES (?, ?, ?, ?, ?)",
                    [c["card_no"], c["card_sn"], p["psn_no"], c["state"], int(bool(c["activated"]))])
        for o in p.get("old_cards", []):
            execute("INSERT INTO old_cards VALUES (?, ?, ?, ?, ?)",
                    [o["card_no"], p["psn_no"], int(o["balance_fen"]), "seed" if o.get("moved") else None,
                     "seed" if o.get("moved") else None])
        if p.get("ec_qrcode"):
            execute("INSERT INTO vouchers VALUES (?, ?)", [p["ec_qrcode"], p["psn_no"]])

    # --- the gateway ------------------------------------------------------------------------------

    def authenticate(self, headers: dict[str, str], now: float | None = None) -> tuple[str, str]:
        """The institution code and paasid that signed these request headers; :class:`Forbidden` when
        the paasid is unknown, the timestamp is not within :data:`GATEWAY_WINDOW` seconds of now, or
        the signature is wrong. The nonce is checked (and used up) by :meth:`process`."""
        paasid = headers.get("x-tif-paasid", "")
        stamp = headers.get("x-tif-timestamp", "")
        nonce = headers.get("x-tif-nonce", "")
        if not paasid or not stamp or not nonce or not headers.get("x-tif-signature"):
            raise Forbidden("the gateway headers x-tif-paasid, x-tif-timestamp, x-tif-nonce and x-tif-signature "
                            "are required")
        if not ascii_digits(stamp) or len(stamp) > 12:
            raise Forbidden("x-tif-timestamp must be epoch seconds")
        if len(nonce) > 64:
            raise Forbidden("x-tif-nonce is too long")
        row = self.credentials.get(paasid)
        if row is None or not signature_matches(headers, row[1]):
            raise Forbidden("the request's signature does not match these credentials")
        if abs(int(stamp) - (time.time() if now is None else now)) > GATEWAY_WINDOW:
            raise Forbidden(f"x-tif-timestamp is more than {GATEWAY_WINDOW} s from the platform's clock")
        return row[0], paasid

    # --- messages ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction under the ledger's lock (committed when the block ends). ``durable``
        False: committed without waiting for the disk (``synchronous=NORMAL``), for what moves nothing
        (queries, sign-ins): it survives a crash of the process, a power cut may lose it, and the next
        durable commit makes it durable too (WAL)."""
        with self.lock:
            if not durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous=FULL")

    def process(self, institution: str, messages: list[Any], *, nonce: tuple[str, str] | None = None,
                batch: bool = False) -> list[dict[str, Any]]:
        """Answer each message for ``institution`` (one transaction for them all), deduping on msgid.

        ``nonce`` (paasid, nonce) is used up in the same transaction (:class:`Forbidden` when used
        before). ``batch``: the messages came in a batch upload, where only :data:`QUEUEABLE`
        transactions may be. :class:`Unanswerable` when a message has no msgid, :class:`Unsigned`
        when a message (but a sign-in) has no sign-in of this institution: then nothing is processed.
        """
        nameless = [i for i, m in enumerate(messages) if not isinstance(m, dict) or not isinstance(m.get("msgid"), str)]
        if nameless:
            raise Unanswerable(f"message {nameless[0] + 1} has no msgid: no answer could name it")
        light = all(isinstance(m.get("infno"), str) and m["infno"] in QUERIES for m in messages)
        with self.transaction(durable=not light) as conn:
            now = self.clock()
            if nonce is not None:
                self._use_nonce(conn, *nonce)
            for m in messages:
                if m.get("infno") != Infno.SIGN_IN and not self._signed_in(conn, institution, m.get("sign_no")):
                    raise Unsigned(f"sign_no {str(m.get('sign_no'))[:40]!r} is not a sign-in of {institution}: "
                                   "sign in first (9001)")
            inst = self.institution(institution)
            return [self._answer(inst, m, now, batch) for m in messages]

    def _use_nonce(self, conn: sqlite3.Connection, paasid: str, nonce: str) -> None:
        now = time.time()
        self._requests += 1
        if self._requests % 1000 == 0:
            conn.execute("DELETE FROM nonces WHERE at < ?", [now - NONCE_MEMORY])
        try:
            conn.execute("INSERT INTO nonces VALUES (?, ?, ?)", [paasid, nonce, now])
        except sqlite3.IntegrityError:
            raise Forbidden("x-tif-nonce was used before: a replayed request") from None

    def _signed_in(self, conn: sqlite3.Connection, institution: str, sign_no: Any) -> bool:
        return isinstance(sign_no, str) and conn.execute(
            "SELECT 1 FROM signins WHERE sign_no = ? AND fixmedins_code = ? AND signed_out_at IS NULL",
            [sign_no, institution]).fetchone() is not None

    def institution(self, code: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT fixmedins_code, fixmedins_name, region FROM institutions WHERE fixmedins_code = ?",
                                [code]).fetchone()
        if row is None:
            raise Forbidden(f"unknown institution {code}")
        return {"fixmedins_code": row[0], "fixmedins_name": row[1], "region": row[2]}

    def _answer(self, inst: dict[str, Any], message: dict[str, Any], now: dt.datetime, batch: bool) -> dict[str, Any]:
        msgid = message["msgid"]
        try:
            msgid_time(msgid)
        except MessageError as err:
            return self._response(inst, msgid, -1, str(err))
        if msgid[:12] != inst["fixmedins_code"]:
            # never stored: a msgid of another institution is not this one's to use up
            return self._response(inst, msgid, -1, f"msgid {msgid} is not a msgid of {inst['fixmedins_code']}, "
                                                   "whose credentials signed this request")
        conn = self.conn
        row = conn.execute("SELECT digest, response, infcode, reversed_by FROM messages WHERE msgid = ?",
                           [msgid]).fetchone()
        if row is not None and row[2] == 0:
            if row[3]:
                return self._response(inst, msgid, -1, f"message {msgid} was reversed by {row[3]}: make a new message")
            if row[0] == digest(message):
                self.repeats += 1
                first: dict[str, Any] = json.loads(row[1])  # a repeat: the same answer as the first time
                return first
            return self._response(inst, msgid, MSGID_TAKEN, "msgid already used for a different message")
        reversal = conn.execute("SELECT by_msgid FROM reversals WHERE omsgid = ?", [msgid]).fetchone()
        if reversal is not None:
            return self._response(inst, msgid, -1, f"message {msgid} was reversed by {reversal[0]} before it "
                                                   "arrived: it is not executed; make a new message")
        conn.execute("SAVEPOINT message")
        try:
            output = self._execute(Call(inst, message, now, batch))
        except Rejected as err:
            conn.execute("ROLLBACK TO message")
            response = self._response(inst, msgid, -1, str(err))
        except BaseException:
            conn.execute("ROLLBACK TO message")
            raise
        else:
            response = self._response(inst, msgid, 0, "", output)
        conn.execute("RELEASE message")
        conn.execute(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            [msgid, str(message.get("infno")), digest(message), json.dumps(message, ensure_ascii=False),
             json.dumps(response, ensure_ascii=False), now.strftime(INF_TIME), response["infcode"]],
        )
        return response

    def _response(self, inst: dict[str, Any], msgid: Any, infcode: int, err_msg: str,
                  output: dict[str, Any] | None = None) -> dict[str, Any]:
        self.serial += 1
        now = self.clock()
        return {
            "msgid": msgid,
            "infcode": infcode,
            "inf_refmsgid": f"{inst['region']}{now:%Y%m%d%H%M%S}{self.serial:010d}",
            "refmsg_time": now.strftime("%Y%m%d%H%M%S%f")[:17],
            "respond_time": now.strftime("%Y%m%d%H%M%S%f")[:17],
            "err_msg": err_msg,
            "output": output or {},
        }

    def _execute(self, call: Call) -> dict[str, Any]:
        """Check one message's envelope and run its transaction (docs/platform.md, "Transactions")."""
        message = call.message
        missing = [f for f in REQUIRED if f not in message]
        if missing:
            raise Rejected(f"missing fields: {', '.join(missing)}")
        not_text = [f for f in REQUIRED if f != "input" and not isinstance(message[f], str)]
        if not_text:
            raise Rejected(f"{', '.join(not_text)} must be text")
        infno = message["infno"]
        if infno not in CODES:
            raise Rejected(f"unknown infno {infno[:10]!r}")
        if not isinstance(message["input"], dict):
            raise Rejected("input must be a JSON object")
        try:
            dt.datetime.strptime(message["inf_time"], INF_TIME)
        except ValueError:
            raise Rejected("inf_time must be yyyy-MM-dd HH:mm:ss") from None
        if message["fixmedins_code"] != call.institution["fixmedins_code"]:
            raise Rejected(f"fixmedins_code {message['fixmedins_code'][:12]} is not the institution whose "
                           "credentials signed this request")
        for key in ("mdtrtarea_admvs", "insuplc_admdvs"):
            if not REGION_RE.fullmatch(message[key]):
                raise Rejected(f"{key} must be a 6-digit region code")
        if call.batch and infno not in QUEUEABLE:
            raise Rejected(f"{infno} ({label(infno)}) is an online call: it cannot wait in a batch upload")
        return HANDLERS[infno](self, call)

    # --- persons ----------------------------------------------------------------------------------

    def _person(self, psn_no: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT psn_no, certno, psn_name, gend, naty, brdy, insuplc_admdvs, emp_name "
                                "FROM persons WHERE psn_no = ?", [psn_no]).fetchone()
        if row is None:
            raise Rejected(f"no insured person {psn_no[:20]!r}")
        keys = ("psn_no", "certno", "psn_name", "gend", "naty", "brdy", "insuplc_admdvs", "emp_name")
        return dict(zip(keys, row))

    def _person_by(self, call: Call, data: dict[str, Any]) -> dict[str, Any]:
        """The person a message names: ``psn_no`` (from 1101), else its credential (a record made while
        the platform was unreachable carries the card's: convention, docs/platform.md, "Queued records")."""
        psn_no = text(data, "psn_no", required=False)
        person = self._person(psn_no) if psn_no else self._credential(call, data)
        if call.message["insuplc_admdvs"] != person["insuplc_admdvs"]:
            raise Rejected(f"insuplc_admdvs {call.message['insuplc_admdvs']} is not this person's insured region "
                           f"({person['insuplc_admdvs']}, from 1101)")
        return person

    def _credential(self, call: Call, data: dict[str, Any]) -> dict[str, Any]:
        """1101's lookup: 03 card number + card identification code (as a pair), 02 ID number, 01 e-voucher token."""
        kind = text(data, "mdtrt_cert_type")
        number = text(data, "mdtrt_cert_no")
        if kind == "03":
            card_sn = text(data, "card_sn", required=False) or text(data, "card_sninfo", required=False)
            if not card_sn:
                raise Rejected("card_sn (the card identification code) is missing")
            row = self.conn.execute("SELECT psn_no, card_sn, state FROM cards WHERE card_no = ?", [number]).fetchone()
            if row is None or row[1] != card_sn:
                raise Rejected("no social security card with this card number and card identification code")
            if row[2] == "lost":
                raise Rejected("this social security card was reported lost: it cannot be used")
            person = self._person(row[0])
        elif kind == "02":
            row = self.conn.execute("SELECT psn_no FROM persons WHERE certno = ?", [number.upper()]).fetchone()
            if row is None:
                raise Rejected("no insured person with this ID number")
            person = self._person(row[0])
        elif kind == "01":
            row = self.conn.execute("SELECT psn_no, expires FROM tokens WHERE token = ?", [number]).fetchone()
            if row is None or row[1] < time.time():
                raise Rejected("the e-voucher token is unknown or expired: scan the code again")
            person = self._person(row[0])
        else:
            raise Rejected("mdtrt_cert_type must be 01 (e-voucher), 02 (ID card) or 03 (social security card)")
        certno = text(data, "certno", required=False)
        if certno and certno.upper() != person["certno"]:
            raise Rejected("certno is not the ID number of this credential's holder")
        name = text(data, "psn_name", required=False)
        if name and name != person["psn_name"]:
            raise Rejected("psn_name is not the name of this credential's holder")
        return person

    def _insurance(self, person: dict[str, Any], insutype: str) -> dict[str, Any]:
        """The person's insurance of ``insutype``, in force; :class:`Rejected` otherwise."""
        row = self.conn.execute("SELECT psn_type, psn_insu_stas, paus_insu_date FROM insurances WHERE psn_no = ? "
                                "AND insutype = ?", [person["psn_no"], insutype]).fetchone()
        if row is None:
            raise Rejected(f"this person is not insured under insutype {insutype[:3]}")
        if row[1] != "1":
            raise Rejected(f"this person's insurance {insutype} is suspended (since {row[2] or 'a date not given'})")
        return {"psn_type": row[0]}

    def _balance(self, psn_no: str) -> int:
        row = self.conn.execute("SELECT balc FROM accounts WHERE psn_no = ?", [psn_no]).fetchone()
        return int(row[0]) if row else 0

    def _credit(self, psn_no: str, amount: int) -> int:
        """Add ``amount`` (negative: take it) to the account; :class:`Rejected` if it would go negative."""
        balance = self._balance(psn_no)
        if balance + amount < 0:
            raise Rejected(f"the personal account holds {yuan(balance)} yuan, less than {yuan(-amount)}")
        self.conn.execute("INSERT INTO accounts VALUES (?, ?) ON CONFLICT (psn_no) DO UPDATE SET balc = excluded.balc",
                          [psn_no, balance + amount])
        return balance + amount

    def _year(self, psn_no: str, insutype: str, year: int) -> tuple[int, int]:
        row = self.conn.execute("SELECT deductible_used, fund_used FROM years WHERE psn_no = ? AND insutype = ? AND "
                                "year = ?", [psn_no, insutype, year]).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def _use_year(self, psn_no: str, insutype: str, year: int, deductible: int, fund: int) -> None:
        """Add to (or, negative, give back) the year's deductible and fund use."""
        used = self._year(psn_no, insutype, year)
        self.conn.execute(
            "INSERT INTO years VALUES (?, ?, ?, ?, ?) ON CONFLICT (psn_no, insutype, year) DO UPDATE SET "
            "deductible_used = excluded.deductible_used, fund_used = excluded.fund_used",
            [psn_no, insutype, year, used[0] + deductible, used[1] + fund])

    def _next_id(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])

    # --- transactions -----------------------------------------------------------------------------

    def t9001(self, call: Call) -> dict[str, Any]:
        """Operator sign-in: a ``sign_no`` bound to this institution, operator and terminal. A terminal
        number another device of the institution is signed in with is refused (msgids would collide)."""
        sign_in = call.data("signIn")
        opter = text(sign_in, "opter_no", required=False) or call.message["opter"]
        dev_no = call.message.get("dev_no") if isinstance(call.message.get("dev_no"), str) else ""
        terminal = msgid_terminal(call.msgid)
        code = call.institution["fixmedins_code"]
        if dev_no:
            other = self.conn.execute(
                "SELECT dev_no, at FROM signins WHERE fixmedins_code = ? AND terminal_no = ? AND dev_no != '' "
                "AND dev_no != ? AND signed_out_at IS NULL AND at >= ? ORDER BY at DESC LIMIT 1",
                [code, terminal, dev_no, call.now.strftime("%Y-%m-%d 00:00:00")]).fetchone()
            if other is not None:
                raise Rejected(f"terminal number {terminal:02d} of {code} is in use by another device "
                               f"({other[0][:40]}, signed in {other[1]}): give this terminal its own number")
        sign_no = f"S{call.msgid}"
        self.conn.execute("INSERT OR REPLACE INTO signins VALUES (?, ?, ?, ?, ?, ?, NULL)",
                          [sign_no, code, opter, terminal, dev_no, call.time])
        return {"signinoutb": {"sign_time": call.time, "sign_no": sign_no}}

    def t9002(self, call: Call) -> dict[str, Any]:
        """Operator sign-out: the ``sign_no`` is no longer accepted."""
        data = call.data("signOut") if "signOut" in call.input else call.data()
        sign_no = text(data, "sign_no", required=False) or call.message["sign_no"]
        changed = self.conn.execute("UPDATE signins SET signed_out_at = ? WHERE sign_no = ? AND fixmedins_code = ? "
                                    "AND signed_out_at IS NULL", [call.time, sign_no, call.institution["fixmedins_code"]])
        if not changed.rowcount:
            raise Rejected("no such sign-in to sign out")
        return {"signoutoutb": {"sign_time": call.time, "sign_no": sign_no}}

    def t1101(self, call: Call) -> dict[str, Any]:
        """Person information by credential: baseinfo, insuinfo (with the account balance), idetinfo."""
        data = call.data()
        person = self._credential(call, data)
        brdy = dt.date.fromisoformat(person["brdy"])
        today = call.now.date()
        age = today.year - brdy.year - ((today.month, today.day) < (brdy.month, brdy.day))
        rows = self.conn.execute("SELECT insutype, psn_type, psn_insu_stas, psn_insu_date, paus_insu_date FROM "
                                 "insurances WHERE psn_no = ? ORDER BY insutype", [person["psn_no"]]).fetchall()
        balance = self._balance(person["psn_no"])
        insuinfo = [{
            "balc": yuan(balance if policy.rule(person["insuplc_admdvs"], r[0]).account else 0),
            "insutype": r[0], "psn_type": r[1], "psn_insu_stas": r[2], "psn_insu_date": r[3],
            "paus_insu_date": r[4], "insuplc_admdvs": person["insuplc_admdvs"], "emp_name": person["emp_name"],
        } for r in rows]
        return {
            "baseinfo": {"psn_no": person["psn_no"], "psn_cert_type": "01", "certno": person["certno"],
                         "psn_name": person["psn_name"], "gend": person["gend"], "naty": person["naty"],
                         "brdy": person["brdy"], "age": age},
            "insuinfo": insuinfo,
            "idetinfo": [],
        }

    # visits: registration and admission

    def _open_visit(self, call: Call, data: dict[str, Any], kind: str, med_type: str, begntime: str,
                    dept_name: str) -> dict[str, Any]:
        person = self._person_by(call, data)
        insutype = text(data, "insutype")
        self._insurance(person, insutype)
        if med_type not in policy.MED_TYPES.get(insutype, ()):
            raise Rejected(f"med_type {med_type[:3]} is not settled under insutype {insutype}")
        number = self._next_id("visits")
        mdtrt_id = f"MD{call.now:%Y%m%d}{number:010d}"
        self.conn.execute(
            "INSERT INTO visits (id, mdtrt_id, fixmedins_code, psn_no, insutype, med_type, infno, msgid, begntime, "
            "dept_name, diseinfo, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
            [number, mdtrt_id, call.institution["fixmedins_code"], person["psn_no"], insutype, med_type, kind,
             call.msgid, begntime or call.time, dept_name,
             json.dumps(call.input.get("diseinfo"), ensure_ascii=False) if call.input.get("diseinfo") else None])
        return {"mdtrt_id": mdtrt_id, "psn_no": person["psn_no"], "ipt_otp_no": text(data, "ipt_otp_no", required=False)
                or text(data, "ipt_no", required=False) or mdtrt_id}

    def _visit(self, call: Call, mdtrt_id: str, psn_no: str | None = None) -> dict[str, Any]:
        row = self.conn.execute("SELECT mdtrt_id, psn_no, insutype, med_type, infno, state, msgid FROM visits WHERE "
                                "mdtrt_id = ? AND fixmedins_code = ?",
                                [mdtrt_id, call.institution["fixmedins_code"]]).fetchone()
        if row is None:
            raise Rejected(f"no visit {mdtrt_id[:30]} at this institution")
        visit = dict(zip(("mdtrt_id", "psn_no", "insutype", "med_type", "infno", "state", "msgid"), row))
        if psn_no and psn_no != visit["psn_no"]:
            raise Rejected("psn_no is not the person of this visit")
        return visit

    def t2201(self, call: Call) -> dict[str, Any]:
        """Outpatient registration: a visit (``mdtrt_id``)."""
        data = call.data()
        med_type = text(data, "med_type", required=False) or "11"
        return {"data": self._open_visit(call, data, Infno.REGISTRATION, med_type, text(data, "begntime", required=False),
                                         text(data, "dept_name", required=False))}

    def t2401(self, call: Call) -> dict[str, Any]:
        """Hospital admission: a visit (``mdtrt_id``). ``mdtrtinfo`` (or ``data`` in records queued offline)."""
        data = call.data("mdtrtinfo") if "mdtrtinfo" in call.input else call.data()
        med_type = text(data, "med_type", required=False) or "21"
        begntime = text(data, "adm_time", required=False) or text(data, "begntime", required=False)
        dept = text(data, "adm_dept_name", required=False) or text(data, "dept_name", required=False)
        return {"result": self._open_visit(call, data, Infno.ADMISSION, med_type, begntime, dept)}

    def _close_visit(self, call: Call, kind: str) -> dict[str, Any]:
        data = call.data()
        visit = self._visit(call, text(data, "mdtrt_id"), text(data, "psn_no"))
        if visit["infno"] != kind:
            raise Rejected(f"visit {visit['mdtrt_id']} is not a {label(kind)}")
        if visit["state"] != "open":
            raise Rejected(f"visit {visit['mdtrt_id']} is already {visit['state']}")
        settled = self.conn.execute("SELECT setl_id FROM settlements WHERE mdtrt_id = ? AND state = 'settled'",
                                    [visit["mdtrt_id"]]).fetchone()
        if settled:
            raise Rejected(f"visit {visit['mdtrt_id']} has a settlement ({settled[0]}): cancel it first")
        self.conn.execute("UPDATE visits SET state = 'cancelled', cancel_msgid = ? WHERE mdtrt_id = ?",
                          [call.msgid, visit["mdtrt_id"]])
        return {"mdtrt_id": visit["mdtrt_id"], "psn_no": visit["psn_no"]}

    def t2202(self, call: Call) -> dict[str, Any]:
        """Outpatient registration cancellation (a visit with no settlement)."""
        return {"data": self._close_visit(call, Infno.REGISTRATION)}

    def t2404(self, call: Call) -> dict[str, Any]:
        """Admission cancellation (a visit with no settlement)."""
        return {"data": self._close_visit(call, Infno.ADMISSION)}

    def t2203(self, call: Call) -> dict[str, Any]:
        """Visit information: the visit's medical type and diagnoses."""
        info = call.data("mdtrtinfo")
        visit = self._visit(call, text(info, "mdtrt_id"), text(info, "psn_no"))
        if visit["state"] != "open":
            raise Rejected(f"visit {visit['mdtrt_id']} is {visit['state']}")
        med_type = text(info, "med_type", required=False) or visit["med_type"]
        if med_type not in policy.MED_TYPES.get(visit["insutype"], ()):
            raise Rejected(f"med_type {med_type[:3]} is not settled under insutype {visit['insutype']}")
        diseinfo = call.input.get("diseinfo")
        if diseinfo is not None and not isinstance(diseinfo, list):
            raise Rejected("diseinfo must be a list")
        self.conn.execute("UPDATE visits SET med_type = ?, diseinfo = ? WHERE mdtrt_id = ?",
                          [med_type, json.dumps(diseinfo, ensure_ascii=False) if diseinfo else None, visit["mdtrt_id"]])
        return {}

    def t2204(self, call: Call) -> dict[str, Any]:
        """Fee details of an open visit: each line kept under its visit and charge batch."""
        details = call.input.get("feedetail")
        if not isinstance(details, list) or not details:
            raise Rejected("feedetail must be a non-empty list")
        results = []
        for line in details:
            if not isinstance(line, dict):
                raise Rejected("each feedetail must be an object")
            visit = self._visit(call, text(line, "mdtrt_id"), text(line, "psn_no"))
            if visit["state"] != "open":
                raise Rejected(f"visit {visit['mdtrt_id']} is {visit['state']}")
            chrg = text(line, "chrg_bchno", limit=30)
            if self._settled_sale(call, chrg):
                raise Rejected(f"charge batch {chrg} is already settled")
            sn = text(line, "feedetl_sn", limit=30)
            amount = fen(line, "det_item_fee_sumamt")
            try:
                self.conn.execute("INSERT INTO fees VALUES (?, ?, ?, ?, ?, ?)",
                                  [visit["mdtrt_id"], sn, chrg, amount, json.dumps(line, ensure_ascii=False),
                                   call.msgid])
            except sqlite3.IntegrityError:
                raise Rejected(f"fee detail {sn} of visit {visit['mdtrt_id']} was uploaded before") from None
            results.append({"feedetl_sn": sn, "det_item_fee_sumamt": yuan(amount), "cnt": line.get("cnt"),
                            "pric": line.get("pric"), "fulamt_ownpay_amt": "0.00", "selfpay_prop": "0.00"})
        return {"result": results}

    def t2205(self, call: Call) -> dict[str, Any]:
        """Fee details cancellation: the unsettled lines of one charge batch of a visit."""
        data = call.data()
        visit = self._visit(call, text(data, "mdtrt_id"), text(data, "psn_no"))
        chrg = text(data, "chrg_bchno", limit=30)
        if self._settled_sale(call, chrg):
            raise Rejected(f"charge batch {chrg} is settled: cancel the settlement first")
        gone = self.conn.execute("DELETE FROM fees WHERE mdtrt_id = ? AND chrg_bchno = ?", [visit["mdtrt_id"], chrg])
        return {"data": {"mdtrt_id": visit["mdtrt_id"], "cnt": gone.rowcount}}

    # settlements

    def _settled_sale(self, call: Call, chrg_bchno: str) -> str | None:
        row = self.conn.execute("SELECT setl_id FROM settlements WHERE fixmedins_code = ? AND chrg_key = ? AND "
                                "state != 'reversed'", [call.institution["fixmedins_code"], sale_key(chrg_bchno)]).fetchone()
        return row[0] if row else None

    def _settle(self, call: Call, *, commit: bool) -> dict[str, Any]:
        """Pre-settlement (``commit`` False: the same answer, nothing moves) or settlement of a bill."""
        data = call.data()
        final = PREVIEWS.get(call.infno, call.infno)
        pharmacy = final == Infno.PHARMACY_SETTLEMENT
        person = self._person_by(call, data)
        insutype = text(data, "insutype")
        self._insurance(person, insutype)
        total = fen(data, "medfee_sumamt")
        chrg = text(data, "chrg_bchno", limit=30)
        if not chrg:
            raise Rejected("chrg_bchno is missing")
        use_account = text(data, "acct_used_flag", required=False) != "0"
        mdtrt_id = None
        if pharmacy:
            med_type = text(data, "med_type", required=False) or "41"
            if med_type != "41":
                raise Rejected("a pharmacy settlement's med_type is 41")
            lines = call.input.get("drugdetail")
            if lines is not None:
                if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
                    raise Rejected("drugdetail must be a list of objects")
                listed = sum(fen(line, "det_item_fee_sumamt") for line in lines)
                if listed != total:
                    raise Rejected(f"the drug details add up to {yuan(listed)} yuan, not medfee_sumamt {yuan(total)}")
        else:
            visit = self._visit(call, text(data, "mdtrt_id"), person["psn_no"])
            if visit["state"] != "open":
                raise Rejected(f"visit {visit['mdtrt_id']} is {visit['state']}")
            if insutype != visit["insutype"]:
                raise Rejected(f"insutype {insutype} is not the visit's ({visit['insutype']})")
            mdtrt_id = visit["mdtrt_id"]
            med_type = text(data, "med_type", required=False) or visit["med_type"]
            listed = int(self.conn.execute("SELECT coalesce(sum(amount), 0) FROM fees WHERE mdtrt_id = ? AND "
                                           "chrg_bchno = ?", [mdtrt_id, chrg]).fetchone()[0])
            if listed != total:
                raise Rejected(f"the fee details of charge batch {chrg} add up to {yuan(listed)} yuan, not "
                               f"medfee_sumamt {yuan(total)} (upload them with 2204 first)")
        if med_type not in policy.MED_TYPES.get(insutype, ()):
            raise Rejected(f"med_type {med_type[:3]} is not settled under insutype {insutype}")
        earlier = self._settled_sale(call, chrg)
        if earlier:
            raise Rejected(f"sale {chrg} was already settled ({earlier}): a sale is settled once")
        year = call.now.year
        deductible_used, fund_used = self._year(person["psn_no"], insutype, year)
        balance = self._balance(person["psn_no"])
        cross = person["insuplc_admdvs"] != call.institution["region"]
        shares = policy.split(total, rule=policy.rule(person["insuplc_admdvs"], insutype), med_type=med_type,
                              cross_region=cross, deductible_used=deductible_used, fund_used=fund_used,
                              balance=balance, use_account=use_account)
        setl_id = ""
        if commit:
            number = self._next_id("settlements")
            setl_id = f"ST{call.now:%Y%m%d}{number:010d}"
            balance = self._credit(person["psn_no"], -shares.account)
            self._use_year(person["psn_no"], insutype, year, shares.deductible, shares.fund)
            self.conn.execute(
                "INSERT INTO settlements (id, setl_id, fixmedins_code, chrg_bchno, chrg_key, infno, msgid, psn_no, "
                "mdtrt_id, insutype, med_type, clr_type, medfee, fund, acct, cash, deductible, balc, setl_time, "
                "setl_date, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'settled')",
                [number, setl_id, call.institution["fixmedins_code"], chrg, sale_key(chrg), final, call.msgid,
                 person["psn_no"], mdtrt_id, insutype, med_type, clr_type(med_type), total, shares.fund,
                 shares.account, shares.cash, shares.deductible, balance, call.time, call.now.strftime(DATE)])
        else:
            balance -= shares.account
        return {"setlinfo": {
            "setl_id": setl_id, "mdtrt_id": mdtrt_id or "", "psn_no": person["psn_no"], "psn_name": person["psn_name"],
            "insutype": insutype, "med_type": med_type, "chrg_bchno": chrg, "setl_time": call.time,
            "medfee_sumamt": yuan(total), "fund_pay_sumamt": yuan(shares.fund), "hifp_pay": yuan(shares.fund),
            "acct_pay": yuan(shares.account), "psn_cash_pay": yuan(shares.cash), "balc": yuan(balance),
            "insuplc_admdvs": person["insuplc_admdvs"], "clr_type": clr_type(med_type),
        }}

    def t2101(self, call: Call) -> dict[str, Any]:
        """Pharmacy pre-settlement: the split a settlement would make now; nothing moves."""
        return self._settle(call, commit=False)

    def t2102(self, call: Call) -> dict[str, Any]:
        """Pharmacy settlement: the account debited, the sale number used up."""
        return self._settle(call, commit=True)

    def t2206(self, call: Call) -> dict[str, Any]:
        """Outpatient pre-settlement of a visit's charge batch; nothing moves."""
        return self._settle(call, commit=False)

    def t2207(self, call: Call) -> dict[str, Any]:
        """Outpatient settlement of a visit's charge batch."""
        return self._settle(call, commit=True)

    def _settlement(self, call: Call, setl_id: str) -> dict[str, Any]:
        keys = ("setl_id", "infno", "msgid", "psn_no", "mdtrt_id", "insutype", "medfee", "fund", "acct", "cash",
                "deductible", "setl_time", "state", "cancel_msgid", "cancel_id", "chrg_bchno")
        row = self.conn.execute(f"SELECT {', '.join(keys)} FROM settlements WHERE setl_id = ? AND fixmedins_code = ?",
                                [setl_id, call.institution["fixmedins_code"]]).fetchone()
        if row is None:
            raise Rejected(f"no settlement {setl_id[:30]} at this institution")
        return dict(zip(keys, row))

    def _undo_settlement(self, s: dict[str, Any]) -> int:
        """Give back exactly what settlement ``s`` took; the account balance after."""
        year = int(s["setl_time"][:4])
        self._use_year(s["psn_no"], s["insutype"], year, -s["deductible"], -s["fund"])
        return self._credit(s["psn_no"], s["acct"])

    def _redo_settlement(self, s: dict[str, Any]) -> int:
        """Take again what a cancelled settlement ``s`` took (a cancellation reversed)."""
        year = int(s["setl_time"][:4])
        self._use_year(s["psn_no"], s["insutype"], year, s["deductible"], s["fund"])
        return self._credit(s["psn_no"], -s["acct"])

    def _cancel(self, call: Call, settlement_infno: str) -> dict[str, Any]:
        data = call.data()
        s = self._settlement(call, text(data, "setl_id"))
        if s["infno"] != settlement_infno:
            raise Rejected(f"settlement {s['setl_id']} is not a {label(settlement_infno)}")
        psn_no = text(data, "psn_no")
        if psn_no != s["psn_no"]:
            raise Rejected("psn_no is not the person of this settlement")
        mdtrt_id = text(data, "mdtrt_id", required=False)
        if mdtrt_id and s["mdtrt_id"] and mdtrt_id != s["mdtrt_id"]:
            raise Rejected("mdtrt_id is not the visit of this settlement")
        if s["state"] != "settled":
            raise Rejected(f"settlement {s['setl_id']} is already {s['state']}"
                           + (f" ({s['cancel_id']})" if s["cancel_id"] else ""))
        balance = self._undo_settlement(s)
        number = self._next_id("settlements")
        cancel_id = f"CX{call.now:%Y%m%d}{number:010d}"
        self.conn.execute("UPDATE settlements SET state = 'cancelled', cancel_msgid = ?, cancel_id = ? WHERE setl_id = ?",
                          [call.msgid, cancel_id, s["setl_id"]])
        return {"setlinfo": {
            "setl_id": cancel_id, "init_setl_id": s["setl_id"], "mdtrt_id": s["mdtrt_id"] or "", "psn_no": s["psn_no"],
            "chrg_bchno": s["chrg_bchno"], "setl_time": call.time, "medfee_sumamt": yuan(s["medfee"]),
            "fund_pay_sumamt": yuan(s["fund"]), "acct_pay": yuan(s["acct"]), "psn_cash_pay": yuan(s["cash"]),
            "balc": yuan(balance),
        }}

    def t2103(self, call: Call) -> dict[str, Any]:
        """Pharmacy settlement cancellation: restores exactly what the settlement took."""
        return self._cancel(call, Infno.PHARMACY_SETTLEMENT)

    def t2208(self, call: Call) -> dict[str, Any]:
        """Outpatient settlement cancellation: restores exactly what the settlement took."""
        return self._cancel(call, Infno.OUTPATIENT_SETTLEMENT)

    # reversal

    def t2601(self, call: Call) -> dict[str, Any]:
        """Reversal of the transaction whose msgid is ``omsgid`` (an answer the terminal lost)."""
        data = call.data()
        omsgid, oinfno, psn_no = text(data, "omsgid", limit=30), text(data, "oinfno", limit=4), text(data, "psn_no")
        if oinfno not in REVERSIBLE:
            raise Rejected(f"oinfno {oinfno} cannot be reversed (only {', '.join(sorted(REVERSIBLE))})")
        if omsgid[:12] != call.institution["fixmedins_code"]:
            raise Rejected(f"omsgid {omsgid} is not a msgid of this institution")
        result = {"omsgid": omsgid, "oinfno": oinfno}
        row = self.conn.execute("SELECT infno, infcode, reversed_by, envelope FROM messages WHERE msgid = ?",
                                [omsgid]).fetchone()
        if row is None or row[1] != 0:
            earlier = self.conn.execute("SELECT by_msgid FROM reversals WHERE omsgid = ?", [omsgid]).fetchone()
            if earlier is None:
                self.conn.execute("INSERT INTO reversals VALUES (?, ?, ?)", [omsgid, call.msgid, "nothing_to_undo"])
            return {**result, "rvs_rslt": "nothing_to_undo"}
        if row[0] != oinfno:
            raise Rejected(f"omsgid {omsgid} is a {row[0]}, not a {oinfno}")
        if row[2]:
            return {**result, "rvs_rslt": "already_reversed", "rvs_msgid": row[2]}
        UNDO[oinfno](self, call, omsgid, psn_no)
        self.conn.execute("UPDATE messages SET reversed_by = ? WHERE msgid = ?", [call.msgid, omsgid])
        return {**result, "rvs_rslt": "reversed"}

    def _by_msgid(self, column: str, omsgid: str, psn_no: str) -> dict[str, Any]:
        setl = self.conn.execute(f"SELECT setl_id FROM settlements WHERE {column} = ?", [omsgid]).fetchone()
        if setl is None:
            raise Rejected(f"no settlement of message {omsgid}")
        s = self.conn.execute("SELECT setl_id, infno, msgid, psn_no, mdtrt_id, insutype, medfee, fund, acct, cash, "
                              "deductible, setl_time, state FROM settlements WHERE setl_id = ?", [setl[0]]).fetchone()
        s = dict(zip(("setl_id", "infno", "msgid", "psn_no", "mdtrt_id", "insutype", "medfee", "fund", "acct", "cash",
                      "deductible", "setl_time", "state"), s))
        if s["psn_no"] != psn_no:
            raise Rejected("psn_no is not the person of the transaction reversed")
        return s

    def _reverse_settlement(self, call: Call, omsgid: str, psn_no: str) -> None:
        s = self._by_msgid("msgid", omsgid, psn_no)
        if s["state"] == "settled":
            self._undo_settlement(s)
        # a settlement cancelled since gave its money back then: it is marked reversed all the same, and
        # no longer holds its sale number
        self.conn.execute("UPDATE settlements SET state = 'reversed' WHERE setl_id = ?", [s["setl_id"]])

    def _reverse_cancellation(self, call: Call, omsgid: str, psn_no: str) -> None:
        s = self._by_msgid("cancel_msgid", omsgid, psn_no)
        if s["state"] != "cancelled":
            raise Rejected(f"settlement {s['setl_id']} is {s['state']}: the cancellation cannot be reversed")
        visit = self.conn.execute("SELECT state FROM visits WHERE mdtrt_id = ?", [s["mdtrt_id"]]).fetchone()
        if visit is not None and visit[0] != "open":
            # a settlement stands only on an open visit (2202/2404 and 2601 of 2201/2401 see to it)
            raise Rejected(f"visit {s['mdtrt_id']} is {visit[0]}: the cancellation cannot be reversed")
        self._redo_settlement(s)
        self.conn.execute("UPDATE settlements SET state = 'settled', cancel_msgid = NULL, cancel_id = NULL "
                          "WHERE setl_id = ?", [s["setl_id"]])

    def _reverse_visit(self, call: Call, omsgid: str, psn_no: str) -> None:
        row = self.conn.execute("SELECT mdtrt_id, psn_no, state FROM visits WHERE msgid = ?", [omsgid]).fetchone()
        if row is None or row[1] != psn_no:
            raise Rejected(f"no visit of message {omsgid} for this person")
        settled = self.conn.execute("SELECT setl_id FROM settlements WHERE mdtrt_id = ? AND state = 'settled'",
                                    [row[0]]).fetchone()
        if settled:
            raise Rejected(f"visit {row[0]} has a settlement ({settled[0]}): reverse or cancel it first")
        self.conn.execute("UPDATE visits SET state = 'reversed' WHERE mdtrt_id = ?", [row[0]])

    def _reverse_visit_cancellation(self, call: Call, omsgid: str, psn_no: str) -> None:
        row = self.conn.execute("SELECT mdtrt_id, psn_no, state FROM visits WHERE cancel_msgid = ?", [omsgid]).fetchone()
        if row is None or row[1] != psn_no:
            raise Rejected(f"no visit cancelled by message {omsgid} for this person")
        if row[2] != "cancelled":  # its registration reversed since: it stays reversed
            raise Rejected(f"visit {row[0]} is {row[2]}: the cancellation cannot be reversed")
        self.conn.execute("UPDATE visits SET state = 'open', cancel_msgid = NULL WHERE mdtrt_id = ?", [row[0]])

    def _reverse_transfer(self, call: Call, omsgid: str, psn_no: str) -> None:
        row = self.conn.execute("SELECT card_no, psn_no, balc FROM old_cards WHERE moved_msgid = ?", [omsgid]).fetchone()
        if row is None or row[1] != psn_no:
            raise Rejected(f"no account transfer of message {omsgid} for this person")
        self._credit(psn_no, -int(row[2]))
        self.conn.execute("UPDATE old_cards SET moved_msgid = NULL, moved_at = NULL WHERE card_no = ?", [row[0]])

    # the agency's records: activation and the old card's account

    def _card_of(self, call: Call, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The person and the social security card a record names (card number and identification code
        as a pair, the card the person's)."""
        person = self._person_by(call, data)
        card_no = text(data, "mdtrt_cert_no")
        card_sn = text(data, "card_sn", required=False) or text(data, "card_sninfo", required=False)
        row = self.conn.execute("SELECT psn_no, card_sn, state FROM cards WHERE card_no = ?", [card_no]).fetchone()
        if row is None or row[1] != card_sn:
            raise Rejected("no social security card with this card number and card identification code")
        if row[0] != person["psn_no"]:
            raise Rejected("the social security card is not this person's")
        if row[2] == "lost":
            raise Rejected("this social security card was reported lost: it cannot be used")
        return person, card_no

    def tSS01(self, call: Call) -> dict[str, Any]:
        """Card activation (bank counter, first registration, dual-card insert): the card is active."""
        data = call.data()
        person, card_no = self._card_of(call, data)
        was = self.conn.execute("SELECT activated FROM cards WHERE card_no = ?", [card_no]).fetchone()[0]
        self.conn.execute("UPDATE cards SET activated = 1 WHERE card_no = ?", [card_no])
        return {"data": {"psn_no": person["psn_no"], "card_no": card_no, "actv_stas": "1",
                         "already_active": bool(was)}}

    def tSS02(self, call: Call) -> dict[str, Any]:
        """The old medical card's account moves to the person's account, once ever; the new card is active."""
        data = call.data()
        person, card_no = self._card_of(call, data)
        old_no = text(data, "old_card_no", limit=30)
        row = self.conn.execute("SELECT psn_no, balc, moved_msgid FROM old_cards WHERE card_no = ?", [old_no]).fetchone()
        if row is None:
            raise Rejected(f"no old medical insurance card {old_no}")
        if row[0] != person["psn_no"]:
            raise Rejected("the old medical insurance card belongs to another person")
        if row[2]:
            raise Rejected(f"the old card {old_no}'s account was already moved"
                           + (f" ({row[2]})" if row[2] != "seed" else ""))
        claimed = fen(data, "acct_balc")
        if claimed != int(row[1]):
            raise Rejected(f"the old card's account holds {yuan(row[1])} yuan at the platform, not {yuan(claimed)}")
        balance = self._credit(person["psn_no"], int(row[1]))
        self.conn.execute("UPDATE old_cards SET moved_msgid = ?, moved_at = ? WHERE card_no = ?",
                          [call.msgid, call.time, old_no])
        self.conn.execute("UPDATE cards SET activated = 1 WHERE card_no = ?", [card_no])
        return {"data": {"psn_no": person["psn_no"], "old_card_no": old_no, "acct_balc": yuan(row[1]),
                         "balc": yuan(balance)}}

    # day end

    def t3201(self, call: Call) -> dict[str, Any]:
        """Day-end totals: the institution's settlements (not cancelled, not reversed) of an insurance type
        and clearing type between two dates, against the terminal's totals. On a difference the answer
        lists the platform's settlements (``setl_list``, a project extension: docs/platform.md, "3201")."""
        data = call.data()
        insutype, clr = text(data, "insutype"), text(data, "clr_type")
        begin, end = text(data, "stmt_begndate"), text(data, "stmt_enddate")
        for day in (begin, end):
            try:
                dt.date.fromisoformat(day)
            except ValueError:
                raise Rejected("stmt_begndate and stmt_enddate are yyyy-MM-dd") from None
        count = data.get("fixmedins_setl_cnt")
        if isinstance(count, str) and ascii_digits(count):
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise Rejected("fixmedins_setl_cnt must be a count")
        theirs = {"medfee_sumamt": fen(data, "medfee_sumamt"), "fund_pay_sumamt": fen(data, "fund_pay_sumamt"),
                  "acct_pay": fen(data, "acct_pay"), "fixmedins_setl_cnt": count}
        rows = self.conn.execute(
            "SELECT setl_id, msgid, chrg_bchno, medfee, fund, acct, cash, setl_time FROM settlements WHERE "
            "fixmedins_code = ? AND insutype = ? AND clr_type = ? AND setl_date BETWEEN ? AND ? AND state = 'settled' "
            "ORDER BY id", [call.institution["fixmedins_code"], insutype, clr, begin, end]).fetchall()
        ours = {"medfee_sumamt": sum(r[3] for r in rows), "fund_pay_sumamt": sum(r[4] for r in rows),
                "acct_pay": sum(r[5] for r in rows), "fixmedins_setl_cnt": len(rows)}
        agreed = ours == theirs
        differ = [k for k in ours if ours[k] != theirs[k]]
        output: dict[str, Any] = {
            "stmt_rslt": "0" if agreed else "1",
            "stmt_rslt_dscr": "totals agree" if agreed else f"totals differ: {', '.join(differ)}",
            "totals": {k: (yuan(v) if k != "fixmedins_setl_cnt" else v) for k, v in ours.items()},
        }
        if not agreed:
            output["setl_list"] = [{"setl_id": r[0], "msgid": r[1], "chrg_bchno": r[2], "medfee_sumamt": yuan(r[3]),
                                    "fund_pay_sumamt": yuan(r[4]), "acct_pay": yuan(r[5]), "psn_cash_pay": yuan(r[6]),
                                    "setl_time": r[7]} for r in rows]
        return output

    # --- the virtual e-voucher ----------------------------------------------------------------------

    def voucher_token(self, qrcode: str) -> dict[str, Any]:
        """The virtual e-voucher query: a QR payload the holder's phone shows -> a token for 1101 (type 01),
        valid :data:`TOKEN_LIFETIME` seconds. :class:`Rejected` for an unknown code."""
        import secrets

        with self.transaction() as conn:
            row = conn.execute("SELECT v.psn_no, p.psn_name FROM vouchers v JOIN persons p USING (psn_no) "
                               "WHERE qrcode = ?", [qrcode]).fetchone()
            if row is None:
                raise Rejected("this is not a medical insurance e-voucher code")
            token = f"EC{secrets.token_hex(16).upper()}"
            conn.execute("INSERT INTO tokens VALUES (?, ?, ?)", [token, row[0], time.time() + TOKEN_LIFETIME])
        return {"ecToken": token, "userName": row[1], "expires_in": TOKEN_LIFETIME}

    # --- looking -----------------------------------------------------------------------------------

    def count(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    def size(self) -> int:
        """The bytes the ledger's pages take (page count x page size, committed WAL pages included): the
        server charges what a request grew it by to the request's institution (docs/platform.md,
        "Strangers and oversize requests")."""
        with self.lock:
            return int(self.conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
                       .fetchone()[0])

    def message(self, msgid: str) -> dict[str, Any] | None:
        """The envelope last received under ``msgid``, or None."""
        with self.lock:
            row = self.conn.execute("SELECT envelope FROM messages WHERE msgid = ?", [msgid]).fetchone()
        return json.loads(row[0]) if row else None

    def balance(self, psn_no: str) -> int:
        """A person's personal account balance in fen (0 when the person has none)."""
        with self.lock:
            return self._balance(psn_no)

    def show(self, limit: int | None = None) -> dict[str, Any]:
        """What the platform holds, for ``sscard central show``: messages by msgid, settlements, accounts,
        old cards, visits (no token, no full ID number)."""
        def rows(sql: str) -> list[dict[str, Any]]:
            cursor = self.conn.execute(sql + (f" LIMIT {int(limit)}" if limit else ""))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r)) for r in cursor.fetchall()]

        with self.lock:
            messages = rows("SELECT msgid, infno, infcode, received_at, reversed_by FROM messages ORDER BY msgid")
            for m in messages:
                m["transaction"] = label(m["infno"])
            settlements = rows("SELECT setl_id, fixmedins_code, chrg_bchno, infno, msgid, psn_no, mdtrt_id, insutype, "
                               "med_type, clr_type, medfee, fund, acct, cash, balc, setl_time, state, cancel_id, "
                               "cancel_msgid FROM settlements ORDER BY id")
            for s in settlements:
                for key, name in (("medfee", "medfee_sumamt"), ("fund", "fund_pay_sumamt"), ("acct", "acct_pay"),
                                  ("cash", "psn_cash_pay"), ("balc", "balc")):
                    s[f"{name}_fen"] = s.pop(key)
                    s[name] = yuan(s[f"{name}_fen"])
            accounts = rows("SELECT a.psn_no, p.psn_name, a.balc AS balc_fen FROM accounts a JOIN persons p "
                            "USING (psn_no) ORDER BY a.psn_no")
            for a in accounts:
                a["balc"] = yuan(a["balc_fen"])
            old_cards = rows("SELECT card_no, psn_no, balc AS balc_fen, moved_msgid, moved_at FROM old_cards ORDER BY card_no")
            for c in old_cards:
                c["balc"] = yuan(c["balc_fen"])
            visits = rows("SELECT mdtrt_id, fixmedins_code, psn_no, insutype, med_type, infno, msgid, begntime, "
                          "dept_name, state FROM visits ORDER BY id")
        for row, key in [*((m, "received_at") for m in messages), *((s, "setl_time") for s in settlements),
                         *((c, "moved_at") for c in old_cards), *((v, "begntime") for v in visits)]:
            with contextlib.suppress(ValueError):  # the seed's rows say "seed"
                if row[key] is not None:  # the interface's text, Beijing time -> ISO 8601 (docs/json.md)
                    row[key] = iso_time(row[key])
        return {"messages": messages, "settlements": settlements, "accounts": accounts, "old_cards": old_cards,
                "visits": visits}


def _handlers() -> dict[str, Callable[[Ledger, Call], dict[str, Any]]]:
    return {infno: getattr(Ledger, f"t{infno}") for infno in Infno}


HANDLERS = _handlers()
UNDO: dict[str, Callable[[Ledger, Call, str, str], None]] = {
    Infno.PHARMACY_SETTLEMENT: Ledger._reverse_settlement, Infno.OUTPATIENT_SETTLEMENT: Ledger._reverse_settlement,
    Infno.PHARMACY_CANCELLATION: Ledger._reverse_cancellation,
    Infno.OUTPATIENT_CANCELLATION: Ledger._reverse_cancellation,
    Infno.REGISTRATION: Ledger._reverse_visit, Infno.ADMISSION: Ledger._reverse_visit,
    Infno.REGISTRATION_CANCELLATION: Ledger._reverse_visit_cancellation,
    Infno.ADMISSION_CANCELLATION: Ledger._reverse_visit_cancellation,
    Infno.TRANSFER: Ledger._reverse_transfer,
}
if set(UNDO) != REVERSIBLE or not set(SETTLEMENTS) <= set(UNDO):
    raise ImportError("central.ledger: UNDO must cover message.infno.REVERSIBLE")
