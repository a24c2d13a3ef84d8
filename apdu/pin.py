"""The card's PIN: its encoding for VERIFY, CHANGE PIN and RELOAD PIN (packed BCD), and the policy a
new PIN must meet (length, not weak).

Pure, no I/O; used by the terminal, the PIN pad driver and the card simulator alike. The encoding is
PBOC's, with the project conventions of docs/crypto.md, "PIN"; the policy is the project's
(docs/crypto.md; docs/card-profile.md). No function puts a PIN into an error message.
"""
from __future__ import annotations

from sscard.apdu.errors import SSCardError

__all__ = [
    "PINFormatError",
    "WeakPINError",
    "PIN_BLOCK_LENGTHS",
    "PIN_DEFAULT_LENGTH",
    "PIN_MAX_LENGTH",
    "PIN_MIN_LENGTH",
    "bcd_to_pin",
    "check_new_pin",
    "is_weak_pin",
    "pin_to_bcd",
]


class PINFormatError(SSCardError, ValueError):
    """The PIN must be 4 to 12 digits (0-9); a new PIN, 6 digits (``PIN_DEFAULT_LENGTH``)."""


class WeakPINError(PINFormatError):
    """This PIN is too easy to guess (all one digit, or consecutive digits): choose another."""


PIN_MIN_LENGTH = 4
PIN_MAX_LENGTH = 12
PIN_DEFAULT_LENGTH = 6
#: the lengths of a PIN block (:func:`pin_to_bcd`) of 4 to 12 digits: 2 to 6 bytes
PIN_BLOCK_LENGTHS = range((PIN_MIN_LENGTH + 1) // 2, (PIN_MAX_LENGTH + 1) // 2 + 1)
_DIGITS = frozenset("0123456789")


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not set(pin) <= _DIGITS:
        raise PINFormatError("The PIN must contain only the digits 0-9")
    if not PIN_MIN_LENGTH <= len(pin) <= PIN_MAX_LENGTH:
        raise PINFormatError(f"The PIN must be {PIN_MIN_LENGTH} to {PIN_MAX_LENGTH} digits")


def pin_to_bcd(pin: str) -> bytes:
    """The PIN as VERIFY / CHANGE PIN send it: packed BCD, two digits a byte (PBOC; the card's PIN
    is 6 digits, ``123456`` -> ``12 34 56``). Project convention (docs/crypto.md): 4 to 12 digits;
    an odd count ends with an ``F`` nibble (``12345`` -> ``12 34 5F``). PINFormatError otherwise;
    the message never contains the PIN."""
    _check_pin(pin)
    digits = pin + "F" * (len(pin) % 2)
    return bytes.fromhex(digits)


def bcd_to_pin(data: bytes) -> str:
    """Inverse of :func:`pin_to_bcd`: digits 0-9, and ``F`` allowed only as the very last nibble."""
    text = bytes(data).hex().upper()
    if text.endswith("F"):
        text = text[:-1]
    if not set(text) <= _DIGITS:
        raise PINFormatError("The PIN block holds something other than BCD digits")
    _check_pin(text)
    return text


def check_new_pin(pin: str, length: int = PIN_DEFAULT_LENGTH) -> None:
    """Refuse a PIN the holder wants to set (CHANGE PIN, RELOAD PIN, bank activation): malformed or
    not ``length`` digits (PINFormatError), or weak (WeakPINError, :func:`is_weak_pin`). Project
    policy, docs/crypto.md: the card's PIN is 6 digits by default (``PIN_DEFAULT_LENGTH``; the
    issue PIN 123456, docs/reference/card.md, "PIN"), so a new PIN is 6 digits unless a site
    chooses another length; VERIFY still takes the 4 to 12 digits a card may hold. Messages never
    contain the PIN."""
    if not PIN_MIN_LENGTH <= length <= PIN_MAX_LENGTH:
        raise ValueError(f"A PIN length must be {PIN_MIN_LENGTH} to {PIN_MAX_LENGTH} digits")
    _check_pin(pin)
    if len(pin) != length:
        raise PINFormatError(f"The new PIN must be {length} digits")
    if is_weak_pin(pin):
        raise WeakPINError()


def is_weak_pin(pin: str) -> bool:
    """True for PINs that are easy to guess (project policy, docs/crypto.md): all one digit
    (``000000``, ``888888``) or a run of consecutive digits up or down (``123456``, ``654321``,
    ``3456``; the issue PIN 123456 is one). A run may wrap round from 9 to 0 and on (``567890``,
    ``890123``, ``098765``, ``012345678901``), as easy to guess as any other: the step from digit to
    digit is compared mod 10. Raises PINFormatError on a malformed PIN."""
    _check_pin(pin)
    steps = {(int(b) - int(a)) % 10 for a, b in zip(pin, pin[1:])}
    return steps in ({0}, {1}, {9})
