"""The root of every error the terminal raises on purpose, and the errors of the bytes themselves.

Every expected error derives from :class:`SSCardError` and carries a message a clerk can read
(``str(err)``; never a PIN, a key or a full ID number: :func:`mask`). Each layer keeps its own
errors (docs/architecture.md, "Where errors live"); what the CLI exits with for each is one table,
terminal/cli/exits.py, not an attribute of the classes. The whole tree (tests/test_exit_codes.py
checks it against the classes)::

    SSCardError
      MalformedError (ValueError)                       apdu/errors.py: bytes that do not parse
        APDUFormatError
        TLVError
      CardDataError                                     the card's data is malformed or incomplete
      CardStatusError                                   apdu/errors.py: what status words mean
        WrongPINError
        PINBlockedError
        PINEntryError                                   the PIN pad's 6400 / 6401
        AuthenticationMethodBlockedError
        TerminalAuthenticationError
        SecurityStatusError
        FileNotFoundOnCardError
        RecordNotFoundError
        WrongLengthError
        ConditionsNotSatisfiedError
        WrongDataError
        WrongParametersError
        InstructionNotSupportedError
        ClassNotSupportedError
        UnknownStatusError
        NoBankApplicationError                          terminal/bankaccount.py
      CryptoError (ValueError)                          apdu/crypto.py
      PINFormatError (ValueError)                       apdu/pin.py
        WeakPINError
      ReaderError                                       drivers/errors.py: readers and transport
        ServiceNotRunningError
        NoReaderError
        ReaderNotFoundError
        SharingViolationError
        ReaderBusyError                                 terminal/service.py
      NoCardError
        CardRemovedError
      CardUnresponsiveError
      TransportError
        CardResetError
        FrameError                                      drivers/vpcd.py
      ProfileError                                      drivers/errors.py: the simulator's profiles
      NotSocialSecurityCardError                        terminal/errors.py: the card and the holder
      CardAuthenticationError
      ExternalAuthenticationRequiredError
      IdentityMismatchError
      NotOldMedicalCardError                            terminal/oldcard.py
      WrongCardOrderError                               terminal/oldcard.py
      ConfigError                                       terminal/errors.py: configuration and keys
        KeyStoreError
        CredentialsError                                terminal/gateway.py
        JournalKeyError                                 terminal/seal.py
        ServiceError                                    terminal/service.py
      QueueError                                        terminal/queue.py: the journal
        DamagedRecordError
      RecordError (ValueError)                          terminal/queue.py
      CentralError                                      terminal/upload.py: the platform's link
        CentralUnavailableError
        CentralProtocolError
        NotSignedInError
        CentralAuthError
        CentralRefusedError
        SignInRefusedError
        ReversedError                                   terminal/online.py
      PlatformRefusedError                              terminal/online.py
      OutcomeUnknownError                               terminal/online.py
      RefusedError                                      terminal/flows/common.py: the counter
      PaymentRefusedError                               terminal/flows/common.py
      IDNumberFormatError                               terminal/flows/common.py
      ConventionError                                   terminal/convention.py: the HIS interface
        SlowRequestError                                terminal/service.py
      UnbalancedError                                   terminal/cli/reconcile.py
"""
from __future__ import annotations

import re


def one_line(text: str) -> str:
    """``text`` as one line for a clerk's screen: control characters (newlines, the ESC of terminal
    escape sequences) as spaces, runs of white space as one. For text from outside (a platform's
    ``err_msg``, an error page) before it is printed."""
    return " ".join("".join(" " if not c.isprintable() else c for c in text).split())


def mask(text: str, keep_start: int = 4, keep_end: int = 2) -> str:
    """Mask the middle of an identifier (ID number, card number): ``110101********1234`` style."""
    if len(text) <= keep_start + keep_end:
        return "*" * len(text)
    return text[:keep_start] + "*" * (len(text) - keep_start - keep_end) + text[len(text) - keep_end:]


def first_line(doc: str | None) -> str:
    """An error class's default message: the first line of its docstring."""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else "Error"


class SSCardError(Exception):
    """Root of every error the terminal raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or first_line(self.__doc__))

    @property
    def code(self) -> str:
        """The error's name for programs: its class name in snake case without ``Error``
        (``WrongPINError`` -> ``wrong_pin``)."""
        name = type(self).__name__.removesuffix("Error")
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# --- malformed bytes --------------------------------------------------------------------------

class MalformedError(SSCardError, ValueError):
    """Malformed data."""


class APDUFormatError(MalformedError):
    """The APDU bytes are not a valid ISO 7816-4 command or response."""


class TLVError(MalformedError):
    """A TLV record on the card is malformed."""


class CardDataError(SSCardError):
    """The card's data is malformed or incomplete."""


# --- what status words mean (apdu/status.py; each command's own table in apdu/commands.py) ------

class CardStatusError(SSCardError):
    """The card refused the command."""

    def __init__(self, sw: int, message: str | None = None) -> None:
        self.sw = sw
        super().__init__(f"{message or first_line(self.__doc__)} (SW {sw:04X})")


class WrongPINError(CardStatusError):
    """Wrong PIN."""

    @property
    def tries_left(self) -> int:
        """The tries left before the PIN blocks: the x of ``63 Cx``."""
        return self.sw & 0x0F


class PINBlockedError(CardStatusError):
    """The PIN is blocked: the holder must have it reset at a bank counter."""


class PINEntryError(CardStatusError):
    """No PIN came from the reader's keypad: the holder pressed cancel, or typed nothing in time."""


class AuthenticationMethodBlockedError(CardStatusError):
    """The card's authentication key is blocked after too many failed attempts."""


class TerminalAuthenticationError(CardStatusError):
    """The card refused this terminal's authentication: check the key store or PSAM (wrong keys?)."""


class SecurityStatusError(CardStatusError):
    """Security status not satisfied: the card needs a PIN or an authentication first."""


class FileNotFoundOnCardError(CardStatusError):
    """File or application not found on the card."""


class RecordNotFoundError(CardStatusError):
    """Record not found on the card."""


class WrongLengthError(CardStatusError):
    """The card reported a wrong length in the command."""


class ConditionsNotSatisfiedError(CardStatusError):
    """Conditions of use not satisfied."""


class WrongDataError(CardStatusError):
    """The card rejected the data sent (wrong data or MAC)."""


class WrongParametersError(CardStatusError):
    """The card rejected the command's parameters (P1/P2)."""


class InstructionNotSupportedError(CardStatusError):
    """The card does not support this instruction."""


class ClassNotSupportedError(CardStatusError):
    """The card does not support this class byte."""


class UnknownStatusError(CardStatusError):
    """The card answered with an unknown status word."""
