"""Exit codes: the one table of what the ``sscard`` process exits with, and the error object
``{"code", "exit_code", "message"}`` of every ``--json`` and of the local service (docs/json.md).

An error's code is that of the nearest class in its MRO that :data:`EXIT_CODES` names: a subclass
not named has its base's (``CardRemovedError`` is a ``NoCardError``: 4). Classes are named, not
imported, so that this table costs ``sscard read`` no import of the journal, the platform's client
or the flows; class names are unique in the tree (apdu/errors.py draws it), and
tests/test_exit_codes.py checks every name against a class, every class against a code other than
1, and :data:`MEANINGS` against README's "Exit codes".
"""
from __future__ import annotations

from typing import Any

from sscard.apdu.errors import SSCardError

SUCCESS = 0
#: a bug (anything not an SSCardError), or an SSCardError no entry covers
INTERNAL = 1
#: an option or argument refused (click's own code for a usage error)
USAGE = 2
#: 128 + SIGINT, the shell's convention
INTERRUPTED = 130

#: each code and what it means, as README's "Exit codes" table says it
MEANINGS: dict[int, str] = {
    SUCCESS: "success",
    INTERNAL: "internal error (a bug: run with `-v` for its traceback and report it; the other codes never show one)",
    USAGE: "usage error (wrong option or argument)",
    3: "reader problem: PC/SC service not running, no reader, reader not found, reader in use",
    4: "no card, card removed during the operation, card not responding",
    5: "card problem: not a social security card, malformed data, the card refused a command",
    6: "wrong PIN (the message says how many tries are left), or no PIN from the reader's keypad (cancelled, or "
       "nothing typed in time)",
    7: "PIN blocked (reset at a bank counter)",
    8: "the card failed authentication (possibly counterfeit), or the card refused this terminal's keys",
    9: "identity check failed: the ID document does not match the card, or what was typed is not an ID number",
    11: "invalid or weak PIN (not 4 to 12 digits; a new PIN not 6 digits, all one digit, or consecutive digits)",
    12: "invalid configuration, card profile or key store (key file readable by others: `chmod 600`; not yours, or "
        "in a folder others can write)",
    13: "the local journal and queue cannot be used (disk full, read-only, damaged file)",
    14: "the platform could not be asked, failed, stalled or answered garbage: nothing was done (queued records "
        "stay queued; a call whose answer was lost was reversed)",
    15: "the counter refused: cards the wrong way round, already activated, not activated, old card already moved, "
        "the platform refused",
    16: "payment refused: by the platform (insurance not in force, sale already settled...), sale number used here "
        "for another sale, nothing to refund",
    17: "the outcome is unknown: the platform's answer was lost and it could not be reversed yet (do not hand "
        "anything over; `sscard queue resolve`)",
    18: "the day does not balance: the journal and the platform differ (`sscard reconcile` names the settlements)",
    INTERRUPTED: 'interrupted: Ctrl-C, or Ctrl-C / Ctrl-D at a prompt ("Interrupted.")',
}

#: error class (by name) -> exit code; the layer of each is in the tree of apdu/errors.py
EXIT_CODES: dict[str, int] = {
    # apdu: bytes, status words, PINs and keys
    "MalformedError": 5,
    "CardDataError": 5,
    "CardStatusError": 5,
    "WrongPINError": 6,
    "PINEntryError": 6,
    "PINBlockedError": 7,
    "AuthenticationMethodBlockedError": 8,
    "TerminalAuthenticationError": 8,
    "CryptoError": 8,
    "PINFormatError": 11,
    # drivers: readers, transport, the simulator's profiles
    "ReaderError": 3,
    "NoCardError": 4,
    "CardUnresponsiveError": 4,
    "TransportError": 4,
    "ProfileError": 12,
    # terminal: the card and the holder
    "NotSocialSecurityCardError": 5,
    "NotOldMedicalCardError": 5,
    "CardAuthenticationError": 8,
    "ExternalAuthenticationRequiredError": 8,
    "IdentityMismatchError": 9,
    "IDNumberFormatError": 9,
    # terminal: configuration and keys, the journal, the platform, the counter
    "ConfigError": 12,
    "QueueError": 13,
    "RecordError": 13,
    "CentralError": 14,
    "RefusedError": 15,
    "WrongCardOrderError": 15,
    "PlatformRefusedError": 15,
    "PaymentRefusedError": 16,
    "OutcomeUnknownError": 17,
    "UnbalancedError": 18,
    # the HIS interface's requests (terminal/convention.py): a request refused is a usage error
    "ConventionError": USAGE,
}


def exit_code(error: SSCardError | type[SSCardError]) -> int:
    """The exit code of ``error`` (an error or its class): the nearest named class in its MRO."""
    cls = error if isinstance(error, type) else type(error)
    for base in cls.__mro__:
        if base.__name__ in EXIT_CODES and issubclass(base, SSCardError):
            return EXIT_CODES[base.__name__]
    return INTERNAL


def error_object(error: SSCardError) -> dict[str, Any]:
    """``{"code", "exit_code", "message"}``: the error as every ``--json`` and the service give it."""
    return {"code": error.code, "exit_code": exit_code(error), "message": str(error)}
