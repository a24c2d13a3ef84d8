"""The national medical insurance platform's message envelope, as the queue, uploader and central share it.

shared/reference/central-service.md, "Request envelope": one JSON envelope per message, ``msgid`` =
institution code (12) + ``yyyyMMddHHmmss`` + 4-digit sequence (30 characters), fixed when the record is
queued. Amounts are fen (integers) inside the terminal and yuan with two decimals on the wire: a value
wrapped in :class:`Fen` becomes the string ``"12.34"`` when the envelope is encoded (project convention,
docs/central-api.md, "Amounts"). Times are Beijing time (UTC+8) whatever the machine's zone.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from apdu.errors import ConfigError, SSCardError

#: Beijing time; China has kept UTC+8 without daylight saving since 1991
CST = dt.timezone(dt.timedelta(hours=8), "CST")
MSGID_TIME = "%Y%m%d%H%M%S"
INF_TIME = "%Y-%m-%d %H:%M:%S"
INFVER = "V1.0"

#: transaction codes the terminal sends (central-service.md, "Transactions"); ``SSxx`` are project
#: codes for records that go to the social insurance agency, not the platform (docs/central-api.md)
INFNO: dict[str, str] = {
    "9001": "operator sign-in",
    "9002": "operator sign-out",
    "1101": "person information",
    "2201": "outpatient registration",
    "2202": "outpatient registration cancellation",
    "2401": "hospital admission",
    "2101": "pharmacy pre-settlement",
    "2102": "pharmacy settlement",
    "2103": "pharmacy settlement cancellation",
    "2601": "reversal",
    "SS01": "card activation",
    "SS02": "account transfer from the old medical insurance card",
}

INSTITUTION_RE = re.compile(r"[A-Z0-9]{12}")
REGION_RE = re.compile(r"\d{6}")
MSGID_RE = re.compile(r"(?P<institution>[A-Z0-9]{12})(?P<stamp>\d{14})(?P<seq>\d{4})")
YUAN_RE = re.compile(r"(-?)(\d{1,13})\.(\d{2})")
#: the 4-digit sequence is terminal number (2 digits) + counter (2 digits): docs/central-api.md, "msgid"
SEQ_PER_SECOND = 100
MAX_TERMINALS = 100


#: amounts each settlement must carry in ``input.data``: :class:`Fen` when queued (:func:`check_amounts`),
#: yuan with two decimals on the wire, parsed by the central service with :func:`parse_yuan`
AMOUNTS: dict[str, tuple[str, ...]] = {"2101": ("medfee_sumamt",), "2102": ("medfee_sumamt", "acct_pay")}
#: the largest amount (in fen, either sign) the wire's yuan form carries: 13 digits of yuan (``YUAN_RE``)
MAX_FEN = 10**15 - 1


class RecordError(SSCardError, ValueError):
    """The record cannot be queued: it is not a valid platform message."""

    exit_code = 13


class Fen(int):
    """An amount in fen (1/100 yuan). Encoded on the wire as yuan with two decimals (:func:`yuan`)."""


def yuan(fen: int) -> str:
    """``1234`` -> ``"12.34"``; ``-5`` -> ``"-0.05"`` (central-service.md, "Delivery")."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole}.{cents:02d}"


def parse_yuan(text: object) -> Fen:
    """``"12.34"`` -> ``Fen(1234)``. Exactly two decimals; anything else raises :class:`RecordError`."""
    match = YUAN_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise RecordError(f"amount {text!r} is not yuan with two decimals")
    sign, whole, cents = match.groups()
    return Fen((-1 if sign else 1) * (int(whole) * 100 + int(cents)))


def check_amounts(infno: str, input: dict[str, Any]) -> None:
    """:class:`RecordError` unless a settlement (``infno`` in :data:`AMOUNTS`) carries each of its amounts
    in ``input["data"]`` as :class:`Fen` within what the wire carries; other transactions pass. Run
    before a record is queued, so nothing the central service must refuse is reported as saved."""
    keys = AMOUNTS.get(infno)
    if not keys:
        return
    data = input.get("data")
    if not isinstance(data, dict):
        raise RecordError(f"a {infno} settlement carries its amounts ({', '.join(keys)}) in input.data")
    for key in keys:
        value = data.get(key)
        if not isinstance(value, Fen):
            shown = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
            raise RecordError(f"{key} of a {infno} settlement must be a Fen amount (integer fen), not {shown}")
        if not -MAX_FEN <= value <= MAX_FEN:
            raise RecordError(f"{key} of a {infno} settlement is out of range ({yuan(value)[:24]} yuan)")


@dataclass(frozen=True)
class Operator:
    """Who made the record (``opter_type``, ``opter``, ``opter_name``)."""

    opter: str
    opter_name: str
    opter_type: str = "1"


@dataclass(frozen=True)
class Station:
    """This terminal as the platform knows it: institution, treatment region, device and default operator.

    ``terminal_no`` (0-99) keeps the msgids of several terminals of one institution apart (the first two
    digits of the msgid sequence, docs/central-api.md, "msgid").
    """

    fixmedins_code: str
    fixmedins_name: str
    region: str
    terminal_no: int
    operator: Operator
    dev_no: str = ""
    recer_sys_code: str = "FSI"

    def __post_init__(self) -> None:
        if not INSTITUTION_RE.fullmatch(self.fixmedins_code):
            raise ConfigError(f"institution code {self.fixmedins_code!r} must be 12 capital letters or digits")
        if not REGION_RE.fullmatch(self.region):
            raise ConfigError(f"treatment region {self.region!r} must be a 6-digit region code")
        if not 0 <= self.terminal_no < MAX_TERMINALS:
            raise ConfigError(f"terminal number {self.terminal_no} must be 0-{MAX_TERMINALS - 1}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Station:
        data = json.loads(text)
        return cls(**{**data, "operator": Operator(**data["operator"])})


def msgid(station: Station, stamp: dt.datetime, counter: int) -> str:
    """institution code + ``yyyyMMddHHmmss`` + terminal number (2 digits) + counter (2 digits)."""
    return f"{station.fixmedins_code}{stamp.strftime(MSGID_TIME)}{station.terminal_no:02d}{counter:02d}"


def msgid_time(value: str) -> dt.datetime:
    """The time a msgid carries (Beijing time); :class:`RecordError` if the msgid is malformed."""
    match = MSGID_RE.fullmatch(value) if isinstance(value, str) else None
    try:
        if match:
            return dt.datetime.strptime(match["stamp"], MSGID_TIME).replace(tzinfo=CST)
    except ValueError:
        pass
    raise RecordError(f"msgid {value!r} is not institution code + yyyyMMddHHmmss + 4 digits")


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
        if self.infno not in INFNO:
            raise RecordError(f"unknown transaction code {self.infno!r}")
        if not REGION_RE.fullmatch(self.insured_region or ""):
            raise RecordError(f"insured region {self.insured_region!r} must be a 6-digit region code")
        if not isinstance(self.input, dict):
            raise RecordError("the transaction's input must be a JSON object")

    @property
    def cross_region(self) -> bool:
        """Insured elsewhere than treated (DESIGN.md item 6): settled in real time across regions."""
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
        return value.strftime(INF_TIME if isinstance(value, dt.datetime) else "%Y-%m-%d")
    if isinstance(value, float):
        raise RecordError("amounts must be Fen (integer fen), not float")
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise RecordError(f"a {type(value).__name__} cannot go into a platform message")


def encode(message: dict[str, Any]) -> str:
    """Compact JSON for the wire: Fen -> yuan strings, dates as the platform writes them, no floats."""
    return json.dumps(_wire_value(message), ensure_ascii=False, separators=(",", ":"))


def with_sign_no(wire: str, sign_no: str) -> dict[str, Any]:
    """A stored envelope (wire JSON) with the session's ``sign_no`` filled in, ready to send."""
    message = json.loads(wire)
    message["sign_no"] = sign_no
    return message
