"""The card-OS interface every simulated chip implements (the vsmartcard ``VirtualICC`` pattern).

A chip has an ATR, is powered up, down and reset, and executes one command APDU at a time:
``execute(bytes) -> bytes`` never raises; every problem is answered with a status word.
Power down and reset clear volatile state (PIN verified, security status, selected file).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SimulatedCard(Protocol):
    """What the memory and vpcd drivers need from a simulated chip."""

    @property
    def atr(self) -> bytes: ...

    def power_up(self) -> None: ...

    def power_down(self) -> None: ...

    def reset(self) -> None: ...

    def execute(self, apdu: bytes) -> bytes: ...


class WrappedCard:
    """A chip that passes everything to ``inner``: subclasses override :meth:`execute` to change some
    answers (hostile cards, clones, test chips watching a command), power and ATR stay the inner's."""

    def __init__(self, inner: SimulatedCard) -> None:
        self.inner = inner

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def power_up(self) -> None:
        self.inner.power_up()

    def power_down(self) -> None:
        self.inner.power_down()

    def reset(self) -> None:
        self.inner.reset()

    def execute(self, apdu: bytes) -> bytes:
        return self.inner.execute(apdu)
