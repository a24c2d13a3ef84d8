"""The reader-library convention hospital software calls (docs/service.md, "The reader convention").

HIS code calls a reader DLL's ``iReadCardBas(iType, pOutInfo)`` and splits 11 fields each followed by
'|', or, from a browser, sends ``{"function": "iReadCardBas", "iType": 3}`` to a local WebSocket. The
functions answer 0 on success or a negative code; this module makes the same answers from our card
session, so such code drops in unchanged:

- ``iReadCardBas``: region code (first 6 digits of the card identification code) | social security
  number | card number | card identification code | name | card reset info (ATR historical bytes, hex)
  | spec version | issue date (YYYYMMDD) | expiry date (YYYYMMDD) | terminal number | terminal device
  number |, after the genuine-card check (internal authentication);
- ``iVerifyPIN`` (``pin``), ``iChangePIN`` (``oldPin``, ``newPin``): **convention**, the PINs come in
  the request (no PIN pad on a virtual reader); ``pOutInfo`` is empty on success;
- ``iReadBankNumber``: the card's bank account number (its bank application, docs/bank-application.md),
  whole, followed by '|' (**convention**: the vendors' field layout is not public); a card without a
  bank application answers -27266 (6A82, "not found");
- ``iReadCardBas_HSM_Step1`` and ``iReadCardBas_HSM_Step2`` (``pKey``): the same read in two steps
  with the hospital's remote security module (terminal/hsmread.py).

Codes (the convention's, as vendors' code shows them): -1 not a social security card, -2 no card,
-4 the card does not answer, -11 reader (none, not found, busy, service not running), -20 bad card
data, -21 internal authentication failed (a counterfeit), -2203 a third-generation card whose holder's data
needs the terminal authenticated and no key store to do it, -31 no PIN given, -33 a PIN of the wrong
length or a weak new PIN, -51 wrong PIN, -52 PIN blocked, any other status word its negative decimal
(6A82 -> -27266), -99 anything else (**convention**). iType 1 contact, 2 contactless, 3 automatic
contact first, 4 automatic contactless first: this terminal's readers are contact readers, and a
contactless one is used only when one is configured (else -11 for iType 2).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sscard.apdu.errors import (
    CardDataError,
    CardStatusError,
    MalformedError,
    PINBlockedError,
    PINEntryError,
    SSCardError,
    TerminalAuthenticationError,
    WrongPINError,
)
from sscard.apdu.pin import PINFormatError, WeakPINError
from sscard.drivers.errors import CardUnresponsiveError, NoCardError, ReaderError, TransportError
from sscard.terminal.errors import (
    CardAuthenticationError,
    ExternalAuthenticationRequiredError,
    NotSocialSecurityCardError,
)

#: the two-step read with the hospital's remote security module (terminal/hsmread.py)
STEP1, STEP2 = "iReadCardBas_HSM_Step1", "iReadCardBas_HSM_Step2"
FUNCTIONS = ("iReadCardBas", "iVerifyPIN", "iChangePIN", "iReadBankNumber", STEP1, STEP2)
#: iType: which reader first (docs/service.md)
CONTACT, CONTACTLESS, AUTO_CONTACT_FIRST, AUTO_CONTACTLESS_FIRST = 1, 2, 3, 4
ITYPES = (CONTACT, CONTACTLESS, AUTO_CONTACT_FIRST, AUTO_CONTACTLESS_FIRST)
#: the codes of the convention (negative; 0 is success)
NOT_SSC, NO_CARD, MUTE, READER, BAD_DATA, COUNTERFEIT = -1, -2, -4, -11, -20, -21
NO_PIN, PIN_LENGTH, WRONG_PIN, PIN_BLOCKED, OTHER = -31, -33, -51, -52, -99
#: a third-generation card wants the terminal authenticated before the holder's data (no key store)
EXTERNAL_AUTH_NEEDED = -2203


class ConventionError(SSCardError):
    """A request the convention cannot take (unknown function, bad iType, a missing field)."""

    def __init__(self, message: str, code: int = OTHER) -> None:
        super().__init__(message)
        self.convention_code = code


def code_of(err: BaseException) -> int:
    """The convention's code for an error (module docstring)."""
    if isinstance(err, ConventionError):
        return err.convention_code
    if isinstance(err, WrongPINError):
        return WRONG_PIN
    if isinstance(err, PINBlockedError):
        return PIN_BLOCKED
    if isinstance(err, (PINFormatError, WeakPINError)):
        return PIN_LENGTH
    if isinstance(err, CardAuthenticationError):
        return COUNTERFEIT
    if isinstance(err, ExternalAuthenticationRequiredError):
        return EXTERNAL_AUTH_NEEDED
    if isinstance(err, NotSocialSecurityCardError):
        return NOT_SSC
    if isinstance(err, NoCardError):
        return NO_CARD
    if isinstance(err, (CardUnresponsiveError, TransportError)):
        return MUTE
    if isinstance(err, ReaderError):
        return READER
    if isinstance(err, (TerminalAuthenticationError, PINEntryError)):
        return OTHER  # the card refused this terminal's keys, or the PIN pad was cancelled: as before they had an SW
    if isinstance(err, CardStatusError):
        return -err.sw
    if isinstance(err, (CardDataError, MalformedError)):
        return BAD_DATA
    return OTHER


def yyyymmdd(value: dt.date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


@dataclass(frozen=True)
class Request:
    """One convention call: the function, its iType and (for the PIN functions) the PINs."""

    function: str
    itype: int
    pin: str | None = None
    old_pin: str | None = None
    new_pin: str | None = None
    p_key: str | None = None

    @classmethod
    def parse(cls, message: Any) -> Request:
        """``{"function": ..., "iType": ..., "pin" | "oldPin", "newPin" | "pKey"}``; :class:`ConventionError`."""
        if not isinstance(message, dict):
            raise ConventionError("a call is a JSON object {\"function\": ..., \"iType\": ...}")
        function = message.get("function")
        if function not in FUNCTIONS:
            raise ConventionError(f"unknown function {str(function)[:40]!r}: one of {', '.join(FUNCTIONS)}")
        itype = message.get("iType", AUTO_CONTACT_FIRST)
        if isinstance(itype, str) and itype.isascii() and itype.isdigit():
            itype = int(itype)
        if isinstance(itype, bool) or itype not in ITYPES:
            raise ConventionError("iType must be 1 (contact), 2 (contactless), 3 or 4 (automatic)", READER)
        texts = {key: message.get(key) for key in ("pin", "oldPin", "newPin", "pKey")}
        for key, value in texts.items():
            if value is not None and not isinstance(value, str):
                raise ConventionError(f"{key} must be text")
        if function == "iVerifyPIN" and not texts["pin"]:
            raise ConventionError("iVerifyPIN needs the holder's PIN (\"pin\")", NO_PIN)
        if function == "iChangePIN" and not (texts["oldPin"] and texts["newPin"]):
            raise ConventionError("iChangePIN needs \"oldPin\" and \"newPin\"", NO_PIN)
        if function == STEP2 and not texts["pKey"]:
            raise ConventionError(f"{STEP2} needs the key service's answers (\"pKey\")")
        return cls(function, int(itype), texts["pin"], texts["oldPin"], texts["newPin"], texts["pKey"])


def reply(function: str, code: int, out: str) -> dict[str, Any]:
    """The convention's answer: ``{"function", "success", "code", "pOutInfo"}``."""
    return {"function": function, "success": code == 0, "code": code, "pOutInfo": out}


def card_bas(identity: Any, terminal_no: int, device: str) -> str:
    """iReadCardBas's 11 fields, each followed by '|' (module docstring)."""
    fields = (identity.issuing_region, identity.social_security_number, identity.card_number,
              identity.card_identification_code, identity.full_name, identity.card_reset_info, identity.spec_version,
              yyyymmdd(identity.issue_date), yyyymmdd(identity.expiry_date), f"{terminal_no:02d}", device)
    return "".join(f"{field}|" for field in fields)
