"""One exception hierarchy for the whole terminal.

Every error the terminal can meet derives from :class:`SSCardError`. Each class carries a message a
clerk can read (``str(err)``) and the process exit code the CLI uses for it (README, "Exit codes").
Lower layers raise these; the CLI prints ``str(err)`` and exits with ``err.exit_code``. Messages never
hold a PIN, a key or a full ID number (see :func:`mask`).
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


class SSCardError(Exception):
    """Root of every error the terminal raises on purpose."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__.strip().splitlines()[0])

    @property
    def code(self) -> str:
        """The error's name for programs: its class name in snake case without ``Error``
        (``WrongPINError`` -> ``wrong_pin``)."""
        name = type(self).__name__.removesuffix("Error")
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

    def to_dict(self) -> dict[str, object]:
        """``{"code", "exit_code", "message"}``: the error as every ``--json`` and the service give it."""
        return {"code": self.code, "exit_code": self.exit_code, "message": str(self)}


# --- malformed bytes (apdu layer) -------------------------------------------------------------

class MalformedError(SSCardError, ValueError):
    """Malformed data."""

    exit_code = 5


class APDUFormatError(MalformedError):
    """The APDU bytes are not a valid ISO 7816-4 command or response."""


class TLVError(MalformedError):
    """A TLV record on the card is malformed."""


# --- status words (ISO 7816-4 s5.1.3; PBOC PIN conventions) ------------------------------------

class CardStatusError(SSCardError):
    """The card refused the command."""

    exit_code = 5

    def __init__(self, sw: int, message: str | None = None) -> None:
        self.sw = sw
        super().__init__(f"{message or self.__doc__.strip().splitlines()[0]} (SW {sw:04X})")


class WrongPINError(CardStatusError):
    """Wrong PIN."""

    exit_code = 6

    def __init__(self, sw: int, tries_left: int) -> None:
        self.tries_left = tries_left
        plural = "try" if tries_left == 1 else "tries"
        super().__init__(sw, f"Wrong PIN: {tries_left} {plural} left before the PIN is blocked")


class PINEntryError(SSCardError):
    """No PIN came from the reader's keypad: the holder pressed cancel, or typed nothing in time."""

    exit_code = 6


class PINBlockedError(CardStatusError):
    """The PIN is blocked: the holder must have it reset at a bank counter."""

    exit_code = 7


class AuthenticationMethodBlockedError(CardStatusError):
    """The card's authentication key is blocked after too many failed attempts."""

    exit_code = 8


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


# --- the card as a whole (terminal layer) -----------------------------------------------------

class NotSocialSecurityCardError(SSCardError):
    """This is not a social security card (the SSC application could not be selected)."""

    exit_code = 5


class CardAuthenticationError(SSCardError):
    """The card failed authentication: it may be counterfeit. Do not accept it."""

    exit_code = 8


class TerminalAuthenticationError(SSCardError):
    """The card refused this terminal's authentication: check the key store or PSAM (wrong keys?)."""

    exit_code = 8


class ExternalAuthenticationRequiredError(SSCardError):
    """A third-generation card (spec 3.00) shows the holder's data only to a terminal that has
    authenticated itself (EXTERNAL AUTHENTICATE; the reader libraries' -2203)."""

    exit_code = 8


class IdentityMismatchError(SSCardError):
    """The ID document does not match the card: the card does not belong to this person."""

    exit_code = 9


class CardDataError(SSCardError):
    """The card's data is malformed or incomplete."""

    exit_code = 5


# --- readers and transport (drivers layer) ----------------------------------------------------

class ReaderError(SSCardError):
    """Problem with the card reader."""

    exit_code = 3


class ServiceNotRunningError(ReaderError):
    """The PC/SC service (pcscd) is not running: start it, or ask IT to."""


class NoReaderError(ReaderError):
    """No card reader found: check that the reader is plugged in."""


class ReaderNotFoundError(ReaderError):
    """The requested reader was not found."""


class SharingViolationError(ReaderError):
    """Another program is using the card reader: close it and try again."""


class NoCardError(SSCardError):
    """No card in the reader: insert the card."""

    exit_code = 4


class CardRemovedError(NoCardError):
    """The card was removed during the operation: insert it again and repeat. Nothing was recorded."""


class CardUnresponsiveError(SSCardError):
    """The card does not respond: check it is inserted the right way round, or try another card."""

    exit_code = 4

    @classmethod
    def after(cls, where: str, seconds: float, held: bool = False) -> CardUnresponsiveError:
        """The card in ``where`` has waited ``seconds`` for an answer to one command, or (``held``)
        for the reader to let us at it (a connect, another program's transaction): given up on."""
        if held:
            return cls(f"The reader {where} has not let this terminal at the card for {seconds:.0f} s: another "
                       "program may be holding it (close that program, or take the card out and insert it again)")
        return cls(f"The card in {where} has not answered for {seconds:.0f} s: take it out and insert it again")


class TransportError(SSCardError):
    """Communication with the card failed."""

    exit_code = 4


class CardResetError(TransportError):
    """Another program reset the card (or powered it down) since our last command: what the card had
    selected or verified for us is gone. Nothing was sent; the connection must be renewed first."""

    def __init__(self, message: str = "Another program reset the card: repeat the operation") -> None:
        super().__init__(message)


# --- simulator profiles ---------------------------------------------------------------------

class ProfileError(SSCardError):
    """The card profile is invalid."""

    exit_code = 12


class ConfigError(SSCardError):
    """The terminal's configuration is invalid."""

    exit_code = 12


class KeyStoreError(ConfigError):
    """The key store cannot be used (key file or PSAM): ask IT to check the terminal's keys."""
