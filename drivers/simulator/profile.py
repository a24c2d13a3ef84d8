"""Card profiles: the JSON that personalises a virtual social security card (docs/simulator.md).

A profile is read once, validated field by field with the checks every kind of profile goes through
(:class:`drivers.simulator.validator.ProfileValidator`) and those of its own, and turned into a frozen
:class:`Profile`. Every problem raises :class:`drivers.errors.ProfileError` naming the file and the field
(``adult.json: holder.birth_date: ...``). Identifiers in messages are masked (:func:`apdu.errors.mask`).

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

from sscard.apdu.atr import PROTOCOLS
from sscard.apdu.catalogue import CARD_ITEMS, ETHNICITY, HOLDER_ITEMS, SEX, DataItem, card_generation, issuing_region
from sscard.apdu.crypto import Algorithm
from sscard.apdu.errors import CardDataError, mask
from sscard.apdu.keyset import KeyFormatError, KeyUsage, parse_keys
from sscard.apdu.pin import PIN_MAX_LENGTH, PIN_MIN_LENGTH
from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator.validator import ProfileValidator, read_profile_file

ALGORITHMS = ("3DES", "SM4")
STATES = ("active", "not_activated")
#: items a profile may leave out: their record is sent as an empty TLV (tag, 00)
OPTIONAL_ITEMS = frozenset({"initialising_institution", "name_extension", "birthplace"})
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
        return issuing_region(str(self.card["card_identification_code"]))


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


# --- finding and loading -------------------------------------------------------------------------

def bundled_names(kind: str = "ssc") -> list[str]:
    """Names of the profiles of that ``kind`` shipped in fixtures/cards/ (``ssc`` cards, the ``psam``)."""
    folder = resources.files("sscard.fixtures") / "cards"
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
    path = Path(str(resources.files("sscard.fixtures") / "cards" / f"{text}.json"))
    if not _is_file(path):
        raise ProfileError(
            f"No bundled card profile '{text}' (bundled: {', '.join(bundled_names()) or 'none'})"
        )
    return path


def load_profile(name_or_path: str | Path) -> Profile:
    """Read and validate a profile by bundled name or path; :class:`ProfileError` on any problem."""
    path = locate(name_or_path)
    return parse_profile(read_profile_file(path), path.name)


def parse_profile(data: Any, source: str = "<profile>") -> Profile:
    """Validate the decoded JSON of a profile; ``source`` names it in error messages."""
    return _SSCValidator(source).profile(data)


# --- validation ----------------------------------------------------------------------------------

class _SSCValidator(ProfileValidator):
    """The checks of a social security card's profile, on top of every profile's."""

    def profile(self, data: Any) -> Profile:
        obj = self.fields(data, "", _TOP, _TOP_OPTIONAL)
        self.kind(obj, "ssc")
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
        generation = Algorithm(algorithm).generation  # docs/card-profile.md: 2.00 for 3DES, 3.00 for SM4
        if card_generation(card["spec_version"]) != generation:
            raise self.fail("card.spec_version",
                            f"{card['spec_version']!r} does not match algorithm {algorithm} "
                            f"(expected {generation}.xx)")
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
                or not PIN_MIN_LENGTH <= len(value) <= PIN_MAX_LENGTH:
            raise self.fail("pin.value", f"must be a string of {PIN_MIN_LENGTH} to {PIN_MAX_LENGTH} digits")
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



# --- per-item checks: return the problem, or None ------------------------------------------------

def _check_cic(value: str) -> str | None:
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", value):
        return "must be 32 hex characters (16 bytes)"
    region = issuing_region(value)
    if not region.isdigit() or region[:2] == "00":
        return f"must start with the 6-digit issuing region code, got {region!r}"
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
