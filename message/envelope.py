"""The platform's message envelope, its codes, amounts and the gateway signature (docs/platform.md).

The national medical insurance platform takes one JSON envelope per message (docs/platform.md,
"Envelope"): ``msgid`` = institution code (12) + ``yyyyMMddHHmmss`` + 4-digit sequence (30
characters), fixed when the message is made, so a repeat is the same message. Amounts are fen
(integers) inside and yuan with two decimals on the wire: a value wrapped in :class:`Fen` becomes the
string ``"12.34"`` when the envelope is encoded (convention, docs/platform.md, "Amounts"). Times are
Beijing time (UTC+8) whatever the machine's zone. Every digit is an ASCII digit: ``\\d`` also takes
full-width and other scripts' digits, so no pattern here uses it.

The gateway in front of the platform authenticates each request with four headers (``x-tif-paasid``,
``x-tif-timestamp``, ``x-tif-nonce``, ``x-tif-signature``): the signature is SHA-256 over timestamp +
token + nonce + timestamp, as public integrations compute it (:func:`gateway_headers`).

This module is the only code the terminal (``terminal/``) and the virtual platform (``central/``)
share; it raises :class:`MessageError` (a ``ValueError``), which each side turns into its own errors.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sscard.message.infno import CODES, Infno

#: Beijing time; China has kept UTC+8 without daylight saving since 1991
CST = dt.timezone(dt.timedelta(hours=8), "CST")
MSGID_TIME = "%Y%m%d%H%M%S"
INF_TIME = "%Y-%m-%d %H:%M:%S"
DATE = "%Y-%m-%d"
INFVER = "V1.0"


#: insurance types (insutype)
INSUTYPES = {"310": "employee basic medical insurance", "390": "urban-rural resident basic medical insurance",
             "510": "maternity insurance"}
#: medical types (med_type; convention where the public record is unconfirmed)
MED_TYPES = {"11": "general outpatient", "14": "chronic outpatient", "21": "ordinary hospitalisation",
             "41": "pharmacy purchase", "51": "maternity outpatient", "52": "maternity hospitalisation"}
#: clearing types (clr_type) of 3201 (:func:`clr_type` of a medical type)
CLR_TYPES = {"11": "outpatient", "21": "inpatient", "41": "pharmacy"}


def clr_type(med_type: str) -> str:
    """The clearing type of a medical type (convention, docs/platform.md, "Codes"): 41 pharmacy, 21
    inpatient (21, and 52 maternity inpatient), 11 outpatient (the rest)."""
    if med_type == "41":
        return "41"
    return "21" if med_type in ("21", "52") else "11"
#: credential types of 1101 (mdtrt_cert_type)
CERT_TYPES = {"01": "medical insurance e-voucher", "02": "ID card", "03": "social security card"}

INSTITUTION_RE = re.compile(r"[A-Z0-9]{12}")
REGION_RE = re.compile(r"[0-9]{6}")
MSGID_RE = re.compile(r"(?P<institution>[A-Z0-9]{12})(?P<stamp>[0-9]{14})(?P<seq>[0-9]{4})")
YUAN_RE = re.compile(r"(-?)([0-9]{1,13})\.([0-9]{2})")
#: the 4-digit sequence is terminal number (2 digits) + counter (2 digits): docs/platform.md, "msgid"
SEQ_PER_SECOND = 100
MAX_TERMINALS = 100

#: amounts each transaction carries in ``input.data``: :class:`Fen` inside, yuan with two decimals on
#: the wire (:func:`parse_yuan`)
AMOUNTS: dict[str, tuple[str, ...]] = {
    Infno.PHARMACY_PREVIEW: ("medfee_sumamt",), Infno.PHARMACY_SETTLEMENT: ("medfee_sumamt",),
    Infno.OUTPATIENT_PREVIEW: ("medfee_sumamt",), Infno.OUTPATIENT_SETTLEMENT: ("medfee_sumamt",),
    Infno.RECONCILIATION: ("medfee_sumamt", "fund_pay_sumamt", "acct_pay"),
    Infno.TRANSFER: ("acct_balc",),
}
#: the largest amount (in fen, either sign) the wire's yuan form carries: 13 digits of yuan (``YUAN_RE``)
MAX_FEN = 10**15 - 1
#: how far a gateway timestamp may be from the platform's clock (seconds)
GATEWAY_WINDOW = 300
#: infcode of an answer saying the msgid was already used for another message (convention): nothing
#: was done under it, and the message may be sent again under a new msgid (docs/platform.md, "msgid")
MSGID_TAKEN = -2


class MessageError(ValueError):
    """Not a valid platform message, amount, code or credential."""


class Fen(int):
    """An amount in fen (1/100 yuan). Encoded on the wire as yuan with two decimals (:func:`yuan`)."""


def iso_time(value: dt.datetime | str, timespec: str = "seconds") -> str:
    """A time as every JSON result gives it (docs/json.md): ISO 8601 in Beijing time with +08:00
    (``2026-03-01T09:30:00+08:00``). A naive time, or text in the interface's format (``INF_TIME``),
    is Beijing time already."""
    when = dt.datetime.strptime(value, INF_TIME) if isinstance(value, str) else value
    return (when.replace(tzinfo=CST) if when.tzinfo is None else when.astimezone(CST)).isoformat(timespec=timespec)


def yuan(fen: int) -> str:
    """``1234`` -> ``"12.34"``; ``-5`` -> ``"-0.05"`` (docs/platform.md, "Amounts")."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole}.{cents:02d}"


def parse_yuan(text: object) -> Fen:
    """``"12.34"`` -> ``Fen(1234)``. Exactly two decimals, ASCII digits; else :class:`MessageError`."""
    match = YUAN_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise MessageError(f"amount {str(text)[:40]!r} is not yuan with two decimals")
    sign, whole, cents = match.groups()
    return Fen((-1 if sign else 1) * (int(whole) * 100 + int(cents)))


def check_amounts(infno: str, input: dict[str, Any]) -> None:
    """:class:`MessageError` unless a transaction of :data:`AMOUNTS` carries each of its amounts in
    ``input["data"]`` as :class:`Fen` within what the wire carries; other transactions pass. Run before
    a message is kept, so nothing the platform must refuse is reported as saved."""
    keys = AMOUNTS.get(infno)
    if not keys:
        return
    data = input.get("data")
    if not isinstance(data, dict):
        raise MessageError(f"a {infno} carries its amounts ({', '.join(keys)}) in input.data")
    for key in keys:
        value = data.get(key)
        if not isinstance(value, Fen):
            shown = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
            raise MessageError(f"{key} of a {infno} must be a Fen amount (integer fen), not {shown}")
        if not -MAX_FEN <= value <= MAX_FEN:
            raise MessageError(f"{key} of a {infno} is out of range ({yuan(value)[:24]} yuan)")


def ascii_digits(text: object, length: int | None = None) -> bool:
    """``text`` is a string of ASCII digits (of ``length`` when given)."""
    return (isinstance(text, str) and text.isascii() and text.isdigit()
            and (length is None or len(text) == length))


@dataclass(frozen=True)
class Operator:
    """Who sends the message (``opter_type`` 1 clerk, 2 self-service terminal; ``opter``, ``opter_name``)."""

    opter: str
    opter_name: str
    opter_type: str = "1"


@dataclass(frozen=True)
class Station:
    """This terminal as the platform knows it: institution, treatment region, device and default operator.

    ``terminal_no`` (0-99) keeps the msgids of several terminals of one institution apart (the first two
    digits of the msgid sequence, docs/platform.md, "msgid"). :class:`MessageError` on a malformed code.
    """

    fixmedins_code: str
    fixmedins_name: str
    region: str
    terminal_no: int
    operator: Operator
    dev_no: str = ""
    recer_sys_code: str = "FSI"

    def __post_init__(self) -> None:
        if not isinstance(self.fixmedins_code, str) or not INSTITUTION_RE.fullmatch(self.fixmedins_code):
            raise MessageError(f"institution code {self.fixmedins_code!r} must be 12 capital letters or digits")
        if not isinstance(self.region, str) or not REGION_RE.fullmatch(self.region):
            raise MessageError(f"treatment region {self.region!r} must be a 6-digit region code")
        if isinstance(self.terminal_no, bool) or not isinstance(self.terminal_no, int) \
                or not 0 <= self.terminal_no < MAX_TERMINALS:
            raise MessageError(f"terminal number {self.terminal_no!r} must be 0-{MAX_TERMINALS - 1}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Station:
        data = json.loads(text)
        return cls(**{**data, "operator": Operator(**data["operator"])})


def msgid(station: Station, stamp: dt.datetime, counter: int) -> str:
    """institution code + ``yyyyMMddHHmmss`` + terminal number (2 digits) + counter (2 digits)."""
    return f"{station.fixmedins_code}{stamp.strftime(MSGID_TIME)}{station.terminal_no:02d}{counter:02d}"


def msgid_time(value: object) -> dt.datetime:
    """The time a msgid carries (Beijing time); :class:`MessageError` if the msgid is malformed."""
    match = MSGID_RE.fullmatch(value) if isinstance(value, str) else None
    try:
        if match:
            return dt.datetime.strptime(match["stamp"], MSGID_TIME).replace(tzinfo=CST)
    except ValueError:
        pass
    raise MessageError(f"msgid {str(value)[:40]!r} is not institution code + yyyyMMddHHmmss + 4 digits")


def msgid_terminal(value: str) -> int:
    """The terminal number a well-formed msgid carries (the first two digits of its sequence)."""
    return int(value[26:28])


@dataclass(frozen=True)
class Envelope:
    """One platform message. ``input`` may hold :class:`Fen` amounts; :meth:`to_wire` converts them."""

    infno: str
    msgid: str
    station: Station
    operator: Operator
    insured_region: str
    time: dt.datetime
    input: dict[str, Any] = field(default_factory=dict)
    sign_no: str = ""

    def __post_init__(self) -> None:
        if self.infno not in CODES:
            raise MessageError(f"unknown transaction code {self.infno!r}")
        if not isinstance(self.insured_region, str) or not REGION_RE.fullmatch(self.insured_region):
            raise MessageError(f"insured region {self.insured_region!r} must be a 6-digit region code")
        if not isinstance(self.input, dict):
            raise MessageError("the transaction's input must be a JSON object")

    @property
    def cross_region(self) -> bool:
        """Insured elsewhere than treated: settled in real time across regions, by the insured region's rules."""
        return self.insured_region != self.station.region

    def to_dict(self) -> dict[str, Any]:
        """The envelope's fields in the platform's names and order, amounts still :class:`Fen`."""
        station, operator = self.station, self.operator
        return {
            "infno": self.infno,
            "msgid": self.msgid,
            "mdtrtarea_admvs": station.region,
            "insuplc_admdvs": self.insured_region,
            "recer_sys_code": station.recer_sys_code,
            "dev_no": station.dev_no,
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": INFVER,
            "opter_type": operator.opter_type,
            "opter": operator.opter,
            "opter_name": operator.opter_name,
            "inf_time": self.time.astimezone(CST).strftime(INF_TIME),
            "fixmedins_code": station.fixmedins_code,
            "fixmedins_name": station.fixmedins_name,
            "sign_no": self.sign_no,
            "input": self.input,
        }

    def to_wire(self) -> str:
        """The JSON text sent (UTF-8, Chinese unescaped), :class:`Fen` amounts as yuan strings."""
        return encode(self.to_dict())


def _wire_value(value: Any) -> Any:
    if type(value) is str or value is None:  # most of an envelope: the fast path
        return value
    if isinstance(value, Fen):
        return yuan(value)
    if isinstance(value, dict):
        return {str(k): _wire_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wire_value(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.strftime(INF_TIME if isinstance(value, dt.datetime) else DATE)
    if isinstance(value, float):
        raise MessageError("amounts must be Fen (integer fen), not float")
    if isinstance(value, (str, int, bool)):
        return value
    raise MessageError(f"a {type(value).__name__} cannot go into a platform message")


def encode(message: dict[str, Any]) -> str:
    """Compact JSON for the wire: Fen -> yuan strings, dates as the platform writes them, no floats."""
    return json.dumps(_wire_value(message), ensure_ascii=False, separators=(",", ":"))


def with_sign_no(wire: str, sign_no: str) -> dict[str, Any]:
    """A stored envelope (wire JSON) with the session's ``sign_no`` filled in, ready to send."""
    message: dict[str, Any] = json.loads(wire)
    message["sign_no"] = sign_no
    return message


def signed_wire(wire: str, sign_no: str) -> str:
    """A stored envelope's wire text (:meth:`Envelope.to_wire`, ``sign_no`` empty) with the session's
    ``sign_no`` written in, without decoding it: the first ``"sign_no":""`` is the envelope's own
    field (inside a JSON string a quote is escaped, so the text cannot occur there)."""
    field = '"sign_no":""'
    if field not in wire:
        raise MessageError("the stored envelope has no empty sign_no")
    return wire.replace(field, f'"sign_no":{json.dumps(sign_no, ensure_ascii=False)}', 1)


# --- the gateway's request signature ----------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """An institution's gateway credentials: its ``paasid`` and secret ``token`` (never logged: its
    repr shows the paasid only)."""

    paasid: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("paasid", "token"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or not value.isascii() or not value.isprintable():
                raise MessageError(f"the gateway {name} must be printable ASCII text")


def signature(timestamp: str, token: str, nonce: str) -> str:
    """``x-tif-signature``: SHA-256 (hex) of timestamp + token + nonce + timestamp."""
    return hashlib.sha256(f"{timestamp}{token}{nonce}{timestamp}".encode()).hexdigest()


def gateway_headers(credentials: Credentials, *, now: float | None = None, nonce: str | None = None) -> dict[str, str]:
    """The four headers of one request: a fresh nonce and the current time (epoch seconds) each time."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    return {
        "x-tif-paasid": credentials.paasid,
        "x-tif-timestamp": timestamp,
        "x-tif-nonce": nonce,
        "x-tif-signature": signature(timestamp, credentials.token, nonce),
    }


def signature_matches(headers: dict[str, str], token: str) -> bool:
    """The request's ``x-tif-signature`` is the one ``token`` gives (constant-time comparison)."""
    expected = signature(headers.get("x-tif-timestamp", ""), token, headers.get("x-tif-nonce", ""))
    given = headers.get("x-tif-signature", "")
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))
