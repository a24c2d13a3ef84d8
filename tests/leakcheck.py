"""What must never appear in a log, a trace, an error message or the CLI's output: every PIN a test
uses (digits and BCD hex), every key the project holds (TEST master keys, the cards' keys), and
every bundled card's ID number, whole or in the pieces that rebuild it beside the masked number the
screens show (``330302********1239``: GB 11643 address code, birth date, sequence, check digit): the
birth date (8 digits, ISO date, BCD as READ RECORD returns it) and the address code with it.

Used by tests/test_security_cli.py, tests/test_security_pcsc.py and tests/test_secrets_audit.py,
which run CLI flows with ``-v`` (APDU tracing at DEBUG) and search everything captured for these.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from sscard.apdu.pin import pin_to_bcd

ROOT = Path(__file__).resolve().parents[1]


def key_bytes() -> list[bytes]:
    """Every key in fixtures/: the TEST master keys and each card profile's keys."""
    keys = []
    master = json.loads((ROOT / "fixtures/keys/test-keys.json").read_text())["master_keys"]
    keys += [bytes.fromhex(k) for per_alg in master.values() for k in per_alg.values()]
    for path in sorted((ROOT / "fixtures/cards").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("keys"), dict):
            keys += [bytes.fromhex(k) for k in data["keys"].values()]
        for per_alg in (data.get("master_keys") or {}).values():
            keys += [bytes.fromhex(k) for k in per_alg.values()]
    return keys


def id_numbers() -> list[str]:
    """The full ID numbers of every bundled card, SSC and old medical card."""
    numbers = set()
    for path in (ROOT / "fixtures/cards").glob("*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        number = (data.get("holder") or {}).get("social_security_number") or data.get("social_security_number")
        if number:
            numbers.add(number)
    return sorted(numbers)


def _forms(raw: bytes) -> list[str]:
    """The ways bytes show up in text: hex upper and lower, with and without spaces."""
    return [raw.hex().upper(), raw.hex(), raw.hex(" ").upper(), raw.hex(" ")]


def forbidden(pins: list[str]) -> dict[str, str]:
    """Needle -> what it is, for every PIN (digits, BCD hex) and every key (hex, and each 8-byte half)."""
    needles: dict[str, str] = {}
    for pin in pins:
        needles[pin] = f"PIN {len(pin)} digits"
        for form in _forms(pin_to_bcd(pin)):
            needles.setdefault(form, "PIN BCD")
    for i, key in enumerate(key_bytes()):
        for part in (key, key[:8], key[8:]):
            for form in _forms(part):
                needles.setdefault(form, f"key #{i}")
    return needles


def leaks(text: str, pins: list[str]) -> list[str]:
    """What of ``forbidden(pins)`` occurs in ``text`` (the kind, never the secret itself).

    A PIN written without spaces (its digits, its BCD hex) counts only standing alone, not inside a
    longer run of letters and digits: a 6-digit PIN such as 123456 is also a piece of the card number
    A01234567 or of a random challenge's hex. Spaced forms (the APDU trace's ``12 34 56``) and keys
    count anywhere.
    """
    found = set()
    for needle, what in forbidden(pins).items():
        if what.startswith("PIN") and " " not in needle:
            if re.search(rf"(?<![0-9A-Za-z]){re.escape(needle)}(?![0-9A-Za-z])", text):
                found.add(what)
        elif needle in text:
            found.add(what)
    return sorted(found)


def _standing_alone(needle: str, text: str) -> bool:
    return re.search(rf"(?<![0-9A-Za-z]){re.escape(needle)}(?![0-9A-Za-z])", text) is not None


def id_leaks(text: str, ids: list[str] | None = None) -> list[str]:
    """What of each ID number (default: every bundled card's) occurs in ``text``: ``ID number`` (the
    18 characters, or their ASCII hex as the trace would show the record), ``ID birthplace+birth
    date`` (its first 14 digits, or their ASCII hex) or ``ID birth date`` (digits 7-14 alone, as an
    ISO date, or as BCD hex). The kind, never the number itself.

    An unspaced 8-digit date counts only standing alone (not inside a msgid's digits or a hex run).
    """
    found = set()
    for number in id_numbers() if ids is None else ids:
        date = number[6:14]
        if number in text or any(form in text for form in _forms(number.encode())):
            found.add("ID number")
        if number[:14] in text or any(form in text for form in _forms(number[:14].encode())):
            found.add("ID birthplace+birth date")
        iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        spaced = [form for form in _forms(bytes.fromhex(date)) if " " in form]
        if _standing_alone(date, text) or iso in text or any(form in text for form in spaced):
            found.add("ID birth date")
    return sorted(found)
