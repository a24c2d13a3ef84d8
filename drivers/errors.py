"""The drivers' errors: readers and transport (PC/SC, pcscd's virtual reader, memory), and the
simulator's card profiles. The tree of every error is in :mod:`apdu.errors`; exit codes in
terminal/cli/exits.py."""
from __future__ import annotations

from sscard.apdu.errors import SSCardError

# --- readers -----------------------------------------------------------------------------------

class ReaderError(SSCardError):
    """Problem with the card reader."""


class ServiceNotRunningError(ReaderError):
    """The PC/SC service (pcscd) is not running: start it, or ask IT to."""


class NoReaderError(ReaderError):
    """No card reader found: check that the reader is plugged in."""


class ReaderNotFoundError(ReaderError):
    """The requested reader was not found."""


class SharingViolationError(ReaderError):
    """Another program is using the card reader: close it and try again."""


# --- the card in the reader, and the transport ---------------------------------------------------

class NoCardError(SSCardError):
    """No card in the reader: insert the card."""


class CardRemovedError(NoCardError):
    """The card was removed during the operation: insert it again and repeat. Nothing was recorded."""


class CardUnresponsiveError(SSCardError):
    """The card does not respond: check it is inserted the right way round, or try another card."""

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


class CardResetError(TransportError):
    """Another program reset the card (or powered it down) since our last command: what the card had
    selected or verified for us is gone. Nothing was sent; the connection must be renewed first."""

    def __init__(self, message: str = "Another program reset the card: repeat the operation") -> None:
        super().__init__(message)


# --- the simulator -------------------------------------------------------------------------------

class ProfileError(SSCardError):
    """The card profile is invalid."""
