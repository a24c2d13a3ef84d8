"""Status words -> typed errors, in one table (ISO/IEC 7816-4 s5.1.3, tables 5-6; PBOC for 63Cx/6983).

``61xx`` (more data) and ``6Cxx`` (wrong Le) are transport matters handled by the Connection, not here.
"""
from __future__ import annotations

from apdu import errors as e

SW_OK = 0x9000

#: exact status words and the error each raises, with the words a clerk reads
SW_TABLE: dict[int, tuple[type[e.CardStatusError], str]] = {
    0x6281: (e.CardStatusError, "Part of the returned data may be corrupted"),
    0x6283: (e.ConditionsNotSatisfiedError, "The selected file or application is deactivated"),
    0x6581: (e.CardStatusError, "Memory failure on the card"),
    0x6700: (e.WrongLengthError, "Wrong length"),
    0x6881: (e.ClassNotSupportedError, "Logical channel not supported"),
    0x6882: (e.ClassNotSupportedError, "Secure messaging not supported"),
    0x6981: (e.ConditionsNotSatisfiedError, "Command incompatible with the file structure"),
    0x6982: (e.SecurityStatusError, "Security status not satisfied"),
    0x6983: (e.PINBlockedError, "The PIN is blocked: the holder must have it reset at a bank counter"),
    0x6984: (e.ConditionsNotSatisfiedError, "Referenced data invalidated"),
    0x6985: (e.ConditionsNotSatisfiedError, "Conditions of use not satisfied"),
    0x6986: (e.ConditionsNotSatisfiedError, "Command not allowed: no file selected"),
    0x6988: (e.WrongDataError, "Secure messaging data (MAC) incorrect"),
    0x6A80: (e.WrongDataError, "Incorrect data in the command"),
    0x6A81: (e.InstructionNotSupportedError, "Function not supported"),
    0x6A82: (e.FileNotFoundOnCardError, "File or application not found"),
    0x6A83: (e.RecordNotFoundError, "Record not found"),
    0x6A84: (e.CardStatusError, "Not enough memory space in the file"),
    0x6A86: (e.WrongParametersError, "Incorrect parameters P1-P2"),
    0x6A88: (e.WrongDataError, "Referenced data (key) not found"),
    0x6B00: (e.WrongParametersError, "Wrong parameters P1-P2"),
    0x6D00: (e.InstructionNotSupportedError, "Instruction not supported"),
    0x6E00: (e.ClassNotSupportedError, "Class not supported"),
    0x6F00: (e.CardStatusError, "The card reported an error with no precise diagnosis"),
    0x9303: (e.ConditionsNotSatisfiedError, "The application is permanently blocked"),
}


def error_for(sw: int) -> e.CardStatusError | None:
    """The error a status word means, or ``None`` for success (``9000``)."""
    if sw == SW_OK:
        return None
    if sw & 0xFFF0 == 0x63C0:
        tries = sw & 0x0F
        if tries == 0:
            return e.PINBlockedError(sw)
        return e.WrongPINError(sw, tries)
    if sw in SW_TABLE:
        cls, text = SW_TABLE[sw]
        return cls(sw, text)
    if sw >> 8 == 0x6C:
        return e.WrongLengthError(sw, f"Wrong Le: the card has {sw & 0xFF or 256} bytes")
    if sw >> 8 == 0x61:
        return e.CardStatusError(sw, f"{sw & 0xFF or 256} more bytes available (GET RESPONSE not done)")
    return e.UnknownStatusError(sw, "The card answered with an unknown status word")
