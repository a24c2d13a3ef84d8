"""Card profiles: the JSON that personalises a virtual social security card (docs/simulator.md).

A profile is read once, validated field by field, and turned into a frozen :class:`Profile`. Every
problem raises :class:`drivers.errors.ProfileError` naming the file and the field
(``adult.json: holder.birth_date: ...``); unknown fields are refused so a typo never passes silently.
Identifiers in messages are masked (:func:`apdu.errors.mask`).

Checks beyond "the value encodes" (``DataItem.encode``): the ID number's GB 11643-1999 check digit and
its agreement with the birth date and sex; the card identification code (32 hex characters, the first
6 digits the issuing region); dates ``YYYY-MM-DD``; GB/T 2261.1 sex and GB 3304 ethnicity codes; the
spec version against the algorithm; the PIN; the ATR's structure, TCK and protocol; the bank PAN's
Luhn digit.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from apdu.catalogue import CARD_ITEMS, ETHNICITY, HOLDER_ITEMS, SEX, DataItem
from apdu.crypto import Algorithm
from apdu.errors import CardDataError, mask
from apdu.keyset import KeyFormatError, KeyUsage, parse_keys
from drivers.errors import ProfileError

PROTOCOLS = ("T=0", "T=1")
ALGORITHMS = ("3DES", "SM4")
STATES = ("active", "not_activated")
#: items a profile may leave out: their record is sent as an empty TLV (tag, 00)
OPTIONAL_ITEMS = frozenset({"initialising_institution", "name_extension", "birthplace"})
#: spec version's major digit per algorithm (docs/card-profile.md: 2.00 for 3DES, 3.00 for SM4)
GENERATION = {"3DES": "2", "SM4": "3"}
PIN_MIN, PIN_MAX = 4, 12
MAX_TRIES_LIMIT = 15  # the tries left travel in one nibble of 63Cx

_TOP = {
    "kind", "description", "atr", "protocol", "algorithm", "state", "card", "holder", "pin", "keys", "bank",
}
_TOP_OPTIONAL = {"bank"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ID_WEIGHTS = tuple(2 ** (17 - i) % 11 for i in range(17))
_ID_CHECK = "10X98765432"


@dataclass(frozen=True)
class PinSettings:
    """The holder PIN as personalised: value (digits), tries left now, tries allowed."""

    value: str = field(repr=False)
    tries_left: int
    max_tries: int


@dataclass(frozen=True)
class Profile:
    """A validated card profile. ``card``/``holder`` map catalogue keys to str or :class:`datetime.date`
    (absent optional items are left out)."""

    source: str
    description: str
    atr: bytes
    protocol: str
    algorithm: str
    state: str
    card: dict[str, str | dt.date]
    holder: dict[str, str | dt.date]
    pin: PinSettings
    #: the card's own keys, diversified from the master keys for this card (docs/card-profile.md)
    keys: dict[KeyUsage, bytes] = field(repr=False)
    bank_pan: str | None = None

    @property
    def issuing_region(self) -> str:
        """The first 6 digits of the card identification code."""
        return str(self.card["card_identification_code"])[:6]


# --- helpers other modules and tests use --------------------------------------------------------

def id_check_digit(first17: str) -> str:
    """GB 11643-1999 check character of an ID number's first 17 digits (ISO 7064 MOD 11-2)."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("17 digits expected")
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def luhn_ok(digits: str) -> bool:
    """ISO/IEC 7812 Luhn check of a card number (the bank PAN)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


@dataclass(frozen=True)
class AtrInfo:
    """What an ATR says (ISO/IEC 7816-3 s8): protocols offered, the first one, historical bytes."""

    protocols: tuple[int, ...]
    historical: bytes

    @property
    def protocol(self) -> str:
        return f"T={self.protocols[0]}"


def parse_atr(atr: bytes) -> AtrInfo:
    """Parse an ATR's interface bytes (ISO/IEC 7816-3 s8.2); check its length and TCK.

    Raises ``ValueError`` with the reason. TCK is required, and must XOR T0..TCK to zero, when a
    protocol other than T=0 is offered (s8.2.5).
    """
    if len(atr) < 2 or atr[0] not in (0x3B, 0x3F):
        raise ValueError("must start with TS 3B or 3F and have T0")
    if len(atr) > 33:
        raise ValueError(f"{len(atr)} bytes, over the 33 an ATR may have")
    k = atr[1] & 0x0F
    y = atr[1] >> 4
    i = 2
    protocols: list[int] = []
    while True:
        i += bin(y & 0x7).count("1")  # TA, TB, TC
        if not y & 0x8:
            break
        if i >= len(atr):
            raise ValueError("truncated interface bytes")
        td = atr[i]
        i += 1
        protocols.append(td & 0x0F)
        y = td >> 4
    if not protocols:
        protocols = [0]
    tck = any(p != 0 for p in protocols)
    expected = i + k + (1 if tck else 0)
    if len(atr) != expected:
        raise ValueError(f"{len(atr)} bytes, but its T0/TDi bytes announce {expected}")
    if tck:
        check = 0
        for b in atr[1:]:
            check ^= b
        if check:
            raise ValueError("TCK is wrong (T0..TCK must XOR to 00)")
    return AtrInfo(tuple(protocols), bytes(atr[i:i + k]))


def build_atr(protocol: str, historical: bytes) -> bytes:
    """A plausible ATR (project convention, docs/simulator.md).

    T=0: ``3B 6K 00 00 hist`` (TB1 = 00 no VPP, TC1 = 00 no extra guard time; T=0 implicit).
    T=1: ``3B EK 00 00 81 31 FE 45 hist TCK`` (TD1: T=1; TD2: TA3 IFSC 254, TB3 BWI 4 / CWI 5).
    """
    if not 0 <= len(historical) <= 15:
        raise ValueError("0 to 15 historical bytes")
    k = len(historical)
    if protocol == "T=0":
        return bytes((0x3B, 0x60 | k, 0x00, 0x00)) + historical
    if protocol == "T=1":
        body = bytes((0xE0 | k, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x45)) + historical
        tck = 0
        for b in body:
            tck ^= b
        return b"\x3B" + body + bytes((tck,))
    raise ValueError(f"protocol must be one of {PROTOCOLS}")


# --- finding and loading -------------------------------------------------------------------------

def bundled_names(kind: str = "ssc") -> list[str]:
    """Names of the profiles of that ``kind`` shipped in fixtures/cards/ (``ssc`` cards, the ``psam``)."""
    folder = resources.files("fixtures") / "cards"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json") and profile_kind(Path(str(p))) == kind)


def profile_kind(path: Path) -> str | None:
    """The ``kind`` field of a profile file (``ssc``, ``psam``), or None when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; False for a path no file can have (too long, a NUL in it)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def locate(name_or_path: str | Path) -> Path:
    """The file of a bundled profile name (``adult``) or a path (anything with a / or ending .json)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".json"):
        path = Path(text)
        if not _is_file(path):
            raise ProfileError(f"Card profile file {text} not found")
        return path
    if not _NAME.match(text):
        raise ProfileError(f"'{text}' is not a card profile name or a .json path")
    path = Path(str(resources.files("fixtures") / "cards" / f"{text}.json"))
    if not _is_file(path):
        raise ProfileError(
            f"No bundled card profile '{text}' (bundled: {', '.join(bundled_names()) or 'none'})"
        )
    return path


def load_profile(name_or_path: str | Path) -> Profile:
    """Read and validate a profile by bundled name or path; :class:`ProfileError` on any problem."""
    path = locate(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path.name}: cannot read the card profile: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path.name}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    return parse_profile(data, path.name)


def parse_profile(data: Any, source: str = "<profile>") -> Profile:
    """Validate the decoded JSON of a profile; ``source`` names it in error messages."""
    return _Validator(source).profile(data)


# --- validation ----------------------------------------------------------------------------------

class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, why: str) -> ProfileError:
        return ProfileError(f"{self.source}: {where}: {why}")

    def fields(self, obj: Any, where: str, allowed: set[str], optional: set[str]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(where or "profile", "must be a JSON object")
        for key in obj:
            if key not in allowed:
                raise self.fail(_join(where, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(allowed - optional):
            if key not in obj or obj[key] is None:
                raise self.fail(_join(where, key), "missing field")
        return obj

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be a non-empty string")
        return value

    def choice(self, value: Any, where: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(where, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(where, f"must be an integer {low}..{high}, got {value!r}")
        return value

    def hexbytes(self, value: Any, where: str) -> bytes:
        text = self.string(value, where).replace(" ", "")
        if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text):
            raise self.fail(where, "must be hex digits, two per byte")
        return bytes.fromhex(text)

    def profile(self, data: Any) -> Profile:
        obj = self.fields(data, "", _TOP, _TOP_OPTIONAL)
        if obj["kind"] != "ssc":
            raise self.fail("kind", f"must be \"ssc\", got {obj['kind']!r}")
        description = self.string(obj["description"], "description")
        protocol = self.choice(obj["protocol"], "protocol", PROTOCOLS)
        algorithm = self.choice(obj["algorithm"], "algorithm", ALGORITHMS)
        state = self.choice(obj["state"], "state", STATES)
        atr = self.atr(obj["atr"], protocol)
        card = self.items(obj["card"], "card", CARD_ITEMS)
        holder = self.items(obj["holder"], "holder", HOLDER_ITEMS)
        self.cross_checks(card, holder, algorithm)
        pin = self.pin(obj["pin"])
        try:
            keys = parse_keys(obj["keys"], Algorithm(algorithm), "keys")
        except KeyFormatError as err:
            raise ProfileError(f"{self.source}: {err}") from None
        pan = self.bank(obj["bank"]) if obj.get("bank") is not None else None
        return Profile(self.source, description, atr, protocol, algorithm, state, card, holder, pin, keys, pan)

    def atr(self, value: Any, protocol: str) -> bytes:
        atr = self.hexbytes(value, "atr")
        try:
            info = parse_atr(atr)
        except ValueError as err:
            raise self.fail("atr", str(err)) from None
        if info.protocol != protocol:
            raise self.fail("atr", f"offers {info.protocol} first but protocol is {protocol}")
        return atr

    def items(self, obj: Any, where: str, items: tuple[DataItem, ...]) -> dict[str, str | dt.date]:
        keys = {item.key for item in items}
        self.fields(obj, where, keys, set(OPTIONAL_ITEMS))
        out: dict[str, str | dt.date] = {}
        for item in items:
            raw = obj.get(item.key)
            if raw is None:
                continue
            path = f"{where}.{item.key}"
            value = self.item(raw, path, item)
            try:
                item.encode(value)
            except CardDataError as err:
                raise self.fail(path, str(err)) from None
            out[item.key] = value
        return out

    def item(self, raw: Any, path: str, item: DataItem) -> str | dt.date:
        if item.encoding == "date":
            if not isinstance(raw, str) or not _DATE.match(raw):
                raise self.fail(path, f"must be a date \"YYYY-MM-DD\", got {raw!r}")
            try:
                return dt.date.fromisoformat(raw)
            except ValueError as err:
                raise self.fail(path, f"not a real date: {err}") from None
        value = self.string(raw, path)
        check = _ITEM_CHECKS.get(item.key)
        if check is not None:
            problem = check(value)
            if problem:
                raise self.fail(path, problem)
        if item.encoding == "binary":
            value = value.upper()
        return value

    def cross_checks(self, card: dict[str, Any], holder: dict[str, Any], algorithm: str) -> None:
        if not card["spec_version"].startswith(GENERATION[algorithm]):
            raise self.fail("card.spec_version",
                            f"{card['spec_version']!r} does not match algorithm {algorithm} "
                            f"(expected {GENERATION[algorithm]}.xx)")
        if card["expiry_date"] <= card["issue_date"]:
            raise self.fail("card.expiry_date", "must be after the issue date")
        number = holder["social_security_number"]
        born = holder["birth_date"].strftime("%Y%m%d")
        if number[6:14] != born:
            raise self.fail("holder.birth_date",
                            f"does not match the birth date in the social security number {mask(number, 6, 1)}")
        sex = holder["sex"]
        if sex in "12" and int(number[16]) % 2 != int(sex) % 2:
            raise self.fail("holder.sex", "does not match the social security number (17th digit: odd male, even female)")

    def pin(self, obj: Any) -> PinSettings:
        self.fields(obj, "pin", {"value", "tries_left", "max_tries"}, set())
        value = obj["value"]
        if not isinstance(value, str) or not value.isascii() or not value.isdigit() \
                or not PIN_MIN <= len(value) <= PIN_MAX:
            raise self.fail("pin.value", f"must be a string of {PIN_MIN} to {PIN_MAX} digits")
        max_tries = self.integer(obj["max_tries"], "pin.max_tries", 1, MAX_TRIES_LIMIT)
        tries = self.integer(obj["tries_left"], "pin.tries_left", 0, max_tries)
        return PinSettings(value, tries, max_tries)

    def bank(self, obj: Any) -> str:
        self.fields(obj, "bank", {"pan"}, set())
        pan = self.string(obj["pan"], "bank.pan")
        if not pan.isascii() or not pan.isdigit() or not 12 <= len(pan) <= 19:
            raise self.fail("bank.pan", "must be 12 to 19 digits")
        if not luhn_ok(pan):
            raise self.fail("bank.pan", "Luhn check digit is wrong")
        return pan


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- per-item checks: return the problem, or None ------------------------------------------------

def _check_cic(value: str) -> str | None:
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", value):
        return "must be 32 hex characters (16 bytes)"
    if not value[:6].isdigit() or value[:2] == "00":
        return f"must start with the 6-digit issuing region code, got {value[:6]!r}"
    return None


def _check_id(value: str) -> str | None:
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return "must be 17 digits and a check character (0-9 or X), 18 characters"
    expected = id_check_digit(value[:17])
    if value[17] != expected:
        return f"check digit of {mask(value, 6, 1)} is {value[17]}, GB 11643 gives {expected}"
    return None


def _check_sex(value: str) -> str | None:
    return None if value in SEX else f"must be a GB/T 2261.1 code ({', '.join(SEX)}), got {value!r}"


def _check_ethnicity(value: str) -> str | None:
    if not re.fullmatch(r"\d\d", value) or int(value) not in ETHNICITY:
        return f"must be a two-digit GB 3304 code (01-56, 97, 98), got {value!r}"
    return None


def _check_digits(count: str) -> Any:
    def check(value: str) -> str | None:
        return None if re.fullmatch(rf"\d{{{count}}}", value) else f"must be {count.replace(',', ' to ')} digits"
    return check


def _check_ascii(value: str) -> str | None:
    return None if value.isascii() and value.isprintable() else "must be printable ASCII"


_ITEM_CHECKS = {
    "card_identification_code": _check_cic,
    "card_type": _check_ascii,
    "spec_version": lambda v: None if re.fullmatch(r"\d\.\d\d", v) else "must be like 2.00 or 3.00",
    "initialising_institution": _check_digits("1,24"),
    "card_number": lambda v: None if re.fullmatch(r"[0-9A-Z]{9}", v) else "must be 9 characters, A-Z and 0-9",
    "social_security_number": _check_id,
    "sex": _check_sex,
    "ethnicity": _check_ethnicity,
    "birthplace": _check_digits("6"),
}
