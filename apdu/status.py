"""Status words: their names (:class:`SW`, the one vocabulary of the terminal and the simulator) and
what they mean (:func:`error_for`).

A status word means what its command says it means, then what ISO says: as OpenSC's card-cardos.c
does, the command's own table comes first (:class:`Table`; each is kept beside its command in
apdu/commands.py: VERIFY's ``63 Cx`` is the PIN tries left, EXTERNAL AUTHENTICATE's the terminal's),
then the general table (:data:`GENERAL`, ISO/IEC 7816-4 s5.1.3 tables 5-6), then "unknown".

``61xx`` (more data) and ``6Cxx`` (wrong Le) are transport matters handled by the Connection, not here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from sscard.apdu import errors as e


class SW(IntEnum):
    """Every status word the terminal or the simulator names (ISO/IEC 7816-4 s5.1.3 tables 5-6; PBOC;
    PC/SC part 10 for a PIN pad's). The families ``61xx``, ``63Cx`` and ``6Cxx`` are named by their
    first word (:func:`counter`)."""

    OK = 0x9000
    # warnings: the state of the card is unchanged (62xx) or changed (63xx)
    DATA_CORRUPTED = 0x6281
    #: the selected file is deactivated; for the SSC application: issued, not yet activated
    NOT_ACTIVATED = 0x6283
    #: ``63 Cx``: counter x (the tries left of a PIN or key; meaning by command: :func:`counter`)
    COUNTER = 0x63C0
    # execution errors: a PIN pad's (PC/SC part 10 s2.5.2) and the card's
    PINPAD_TIMEOUT = 0x6400
    PINPAD_CANCELLED = 0x6401
    MEMORY_FAILURE = 0x6581
    # checking errors
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    INCOMPATIBLE_FILE = 0x6981
    SECURITY_STATUS = 0x6982
    #: authentication method blocked: the PIN's, or a key's (PBOC: the PIN is blocked)
    AUTH_BLOCKED = 0x6983
    DATA_INVALIDATED = 0x6984
    CONDITIONS = 0x6985
    NO_CURRENT_EF = 0x6986
    #: secure messaging data objects incorrect: the MAC of a MAC-protected command
    MAC_WRONG = 0x6988
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    WRONG_P1P2 = 0x6A86
    #: referenced data not found: the key a command names
    KEY_NOT_FOUND = 0x6A88
    WRONG_PARAMETERS = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    TECHNICAL = 0x6F00
    #: PBOC: the application is permanently blocked
    APPLICATION_BLOCKED = 0x9303


def counter(sw: int) -> int | None:
    """The x of a ``63 Cx`` word (0-15), else None."""
    return sw & 0x0F if sw & 0xFFF0 == SW.COUNTER else None


#: what a word means: the error raised and the clerk's words; in a counter's words ``{tries}`` is
#: "1 try" or "2 tries" (the x of ``63 Cx``)
Meaning = tuple[type[e.CardStatusError], str]


@dataclass(frozen=True)
class Table:
    """What status words mean to one command, looked at before :data:`GENERAL`: ``words`` exactly,
    ``counter`` for ``63 C1`` to ``63 CF`` (``63 C0``, no tries left, is one of the ``words``)."""

    words: Mapping[int, Meaning] = field(default_factory=dict)
    counter: Meaning | None = None


#: what a status word means to any command (ISO/IEC 7816-4 s5.1.3, tables 5-6)
GENERAL: dict[int, Meaning] = {
    SW.DATA_CORRUPTED: (e.CardStatusError, "Part of the returned data may be corrupted"),
    SW.NOT_ACTIVATED: (e.ConditionsNotSatisfiedError, "The selected file or application is deactivated"),
    SW.MEMORY_FAILURE: (e.CardStatusError, "Memory failure on the card"),
    SW.WRONG_LENGTH: (e.WrongLengthError, "Wrong length"),
    SW.LOGICAL_CHANNEL_NOT_SUPPORTED: (e.ClassNotSupportedError, "Logical channel not supported"),
    SW.SECURE_MESSAGING_NOT_SUPPORTED: (e.ClassNotSupportedError, "Secure messaging not supported"),
    SW.INCOMPATIBLE_FILE: (e.ConditionsNotSatisfiedError, "Command incompatible with the file structure"),
    SW.SECURITY_STATUS: (e.SecurityStatusError, "Security status not satisfied"),
    SW.AUTH_BLOCKED: (e.AuthenticationMethodBlockedError, "Authentication method blocked"),
    SW.DATA_INVALIDATED: (e.ConditionsNotSatisfiedError, "Referenced data invalidated"),
    SW.CONDITIONS: (e.ConditionsNotSatisfiedError, "Conditions of use not satisfied"),
    SW.NO_CURRENT_EF: (e.ConditionsNotSatisfiedError, "Command not allowed: no file selected"),
    SW.MAC_WRONG: (e.WrongDataError, "Secure messaging data (MAC) incorrect"),
    SW.WRONG_DATA: (e.WrongDataError, "Incorrect data in the command"),
    SW.FUNCTION_NOT_SUPPORTED: (e.InstructionNotSupportedError, "Function not supported"),
    SW.FILE_NOT_FOUND: (e.FileNotFoundOnCardError, "File or application not found"),
    SW.RECORD_NOT_FOUND: (e.RecordNotFoundError, "Record not found"),
    SW.NOT_ENOUGH_MEMORY: (e.CardStatusError, "Not enough memory space in the file"),
    SW.WRONG_P1P2: (e.WrongParametersError, "Incorrect parameters P1-P2"),
    SW.KEY_NOT_FOUND: (e.WrongDataError, "Referenced data (key) not found"),
    SW.WRONG_PARAMETERS: (e.WrongParametersError, "Wrong parameters P1-P2"),
    SW.INS_NOT_SUPPORTED: (e.InstructionNotSupportedError, "Instruction not supported"),
    SW.CLA_NOT_SUPPORTED: (e.ClassNotSupportedError, "Class not supported"),
    SW.TECHNICAL: (e.CardStatusError, "The card reported an error with no precise diagnosis"),
    SW.APPLICATION_BLOCKED: (e.ConditionsNotSatisfiedError, "The application is permanently blocked"),
}


def _error(meaning: Meaning, sw: int) -> e.CardStatusError:
    cls, text = meaning
    x = counter(sw)
    return cls(sw, text.format(tries=f"{x} {'try' if x == 1 else 'tries'}") if x is not None else text)


def error_for(sw: int, table: Table | None = None) -> e.CardStatusError | None:
    """The error ``sw`` means to the command whose :class:`Table` is ``table`` (module docstring), or
    ``None`` for success (``9000``)."""
    if sw == SW.OK:
        return None
    if table is not None:
        if sw in table.words:
            return _error(table.words[sw], sw)
        if table.counter is not None and counter(sw):
            return _error(table.counter, sw)
    if sw in GENERAL:
        return _error(GENERAL[sw], sw)
    if counter(sw) is not None:
        return e.CardStatusError(sw, f"The card answered with a counter ({sw & 0x0F}) this command does not expect")
    if sw >> 8 == 0x6C:
        return e.WrongLengthError(sw, f"Wrong Le: the card has {sw & 0xFF or 256} bytes")
    if sw >> 8 == 0x61:
        return e.CardStatusError(sw, f"{sw & 0xFF or 256} more bytes available (GET RESPONSE not done)")
    return e.UnknownStatusError(sw, "The card answered with an unknown status word")
