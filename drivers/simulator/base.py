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
