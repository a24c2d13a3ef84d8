"""The in-memory driver: a simulated chip in this process, behind the same Connection as a reader."""
from __future__ import annotations

from sscard.drivers.connection import CLOSED_MESSAGE, Connection
from sscard.drivers.errors import CardRemovedError, NoCardError, TransportError
from sscard.drivers.simulator.base import SimulatedCard


class MemoryConnection(Connection):
    """A connection to a simulated card held in memory (the embedded default reader).

    ``remove()`` pulls the card: every later command raises :class:`CardRemovedError`, as a real
    reader does; ``remove_after`` pulls it automatically once that many APDUs have been exchanged
    (used to test removal at every step of a flow). ``disconnect()`` powers the chip down and closes
    the connection: every later command raises :class:`TransportError` ("The connection to the card
    is closed"), as :class:`drivers.pcsc.PCSCConnection` does.
    """

    virtual = True

    def __init__(self, card: SimulatedCard, name: str = "memory", remove_after: int | None = None) -> None:
        super().__init__()
        self.card = card
        self.name = name
        self.remove_after = remove_after
        self._present = True
        self._closed = False
        card.power_up()

    @property
    def atr(self) -> bytes:
        if not self._present:
            raise NoCardError()
        return self.card.atr

    def remove(self) -> None:
        """Pull the card out of the virtual reader (powers it down)."""
        if self._present:
            self._present = False
            if not self._closed:
                self.card.power_down()

    def _exchange(self, apdu: bytes) -> bytes:
        if self._closed:
            raise TransportError(CLOSED_MESSAGE)
        if self.remove_after is not None and self.apdu_count > self.remove_after:
            self.remove()
        if not self._present:
            raise CardRemovedError()
        return self.card.execute(apdu)

    def disconnect(self) -> None:
        """Power the card down (once) and close the connection. Never raises."""
        if not self._closed:
            self._closed = True
            if self._present:
                self.card.power_down()
