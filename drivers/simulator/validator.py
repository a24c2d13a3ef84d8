"""The checks every kind of card profile goes through (docs/simulator.md): the social security card's
(drivers/simulator/profile.py), the old medical card's (oldmedical.py) and the PSAM's (psam.py).

A profile file is read by :func:`read_profile_file` and checked field by field with a
:class:`ProfileValidator`. Every problem raises :class:`drivers.errors.ProfileError` naming the file and
the field (``adult.json: holder.birth_date: ...``); unknown fields are refused so a typo never passes
silently.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sscard.apdu.atr import parse_atr
from sscard.drivers.errors import ProfileError

__all__ = ["ProfileValidator", "read_profile_file"]


def read_profile_file(path: Path) -> Any:
    """The decoded JSON of a profile file; ProfileError naming the file when it cannot be read or is
    not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path.name}: cannot read the card profile: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{path.name}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None


class ProfileValidator:
    """Field checks for the profile named ``source``: each returns the value checked, or raises a
    ProfileError ``"{source}: {field}: {why}"``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, why: str) -> ProfileError:
        return ProfileError(f"{self.source}: {where}: {why}")

    def require(self, ok: object, where: str, why: str) -> None:
        """A check of the profile's own: ``why`` unless ``ok``."""
        if not ok:
            raise self.fail(where, why)

    def fields(self, obj: Any, where: str, allowed: set[str], optional: set[str]) -> dict[str, Any]:
        """``obj`` as a JSON object with only ``allowed`` fields, each but the ``optional`` present."""
        if not isinstance(obj, dict):
            raise self.fail(where or "profile", "must be a JSON object")
        for key in obj:
            if key not in allowed:
                raise self.fail(_join(where, key), f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(allowed - optional):
            if key not in obj or obj[key] is None:
                raise self.fail(_join(where, key), "missing field")
        return obj

    def kind(self, obj: dict[str, Any], expected: str) -> None:
        """The profile's ``kind`` is ``expected`` (``ssc``, ``psam``, ``old-medical``)."""
        if obj["kind"] != expected:
            raise self.fail("kind", f"must be \"{expected}\", got {obj['kind']!r}")

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be a non-empty string")
        return value

    def choice(self, value: Any, where: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(where, f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(where, f"must be an integer {low}..{high}, got {value!r}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value

    def matching(self, value: Any, where: str, pattern: re.Pattern[str], why: str) -> str:
        """A string that ``pattern`` matches whole; ``why`` otherwise."""
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.fail(where, why)
        return value

    def hexbytes(self, value: Any, where: str) -> bytes:
        text = self.string(value, where).replace(" ", "")
        if not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", text):
            raise self.fail(where, "must be hex digits, two per byte")
        return bytes.fromhex(text)

    def atr(self, value: Any, protocol: str) -> bytes:
        """A well-formed ATR (:func:`apdu.atr.parse_atr`) whose first protocol is ``protocol``."""
        atr = self.hexbytes(value, "atr")
        try:
            info = parse_atr(atr)
        except ValueError as err:
            raise self.fail("atr", str(err)) from None
        if info.protocol != protocol:
            raise self.fail("atr", f"offers {info.protocol} first but protocol is {protocol}")
        return atr


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
