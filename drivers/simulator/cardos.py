"""The card OS every simulated chip shares: INS dispatch, status words, T=0/T=1 transport, GET RESPONSE.

The vsmartcard ``VirtualICC`` pattern: a chip has an ATR, is powered up, down and reset, and executes
one command APDU at a time; :meth:`CardOS.execute` never raises (a bug answers ``6F00``, malformed
bytes ``6700``). Commands are dispatched by INS to handlers that return ``(data, sw)`` or raise
:class:`CardStatus` carrying the status word; :meth:`CardOS._deliver` then applies the transport
rules (T=0 ``61xx`` and ``6Cxx``, ISO/IEC 7816-3 s12.2; ISO/IEC 7816-4 s5.1.3). docs/simulator.md.

Subclasses (the SSC, the PSAM) fill ``handlers`` and extend :meth:`_clear_volatile`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

from sscard.apdu.command import Command
from sscard.apdu.errors import APDUFormatError
from sscard.apdu.status import SW

log = logging.getLogger(__name__)


CLA_ISO = frozenset({0x00})
CLA_PROPRIETARY = frozenset({0x80})
#: CLA 84: proprietary with secure messaging (a MAC-protected command, PBOC APPLICATION UNBLOCK)
CLA_SECURE = frozenset({0x84})

Reply = tuple[bytes, int]
Handler = Callable[[Command], Reply]
#: where random bytes come from (GET CHALLENGE); tests pass a fixed one to check worked examples
RandomSource = Callable[[int], bytes]


class CardStatus(Exception):
    """Raised by a handler: answer this status word (state changes made before it stay)."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


def _sw(sw: int) -> bytes:
    return bytes((sw >> 8 & 0xFF, sw & 0xFF))


class CardOS:
    """Dispatch and transport for one simulated chip (implements ``SimulatedCard``)."""

    #: short name in log lines ("virtual SSC", "virtual PSAM")
    label = "virtual card"

    def __init__(self, atr: bytes, protocol: str, random: RandomSource = os.urandom) -> None:
        self._atr = atr
        self.protocol = protocol
        self.random = random
        self.powered = False
        #: a T=0 chip as strict as the standard lets it be (``strict:PROFILE``, docs/simulator.md):
        #: Le 00 with fewer than 256 bytes to send answers ``6Cxx``; powered down, it is mute
        self.strict_t0 = False
        #: INS -> (accepted CLA bytes, handler)
        self.handlers: dict[int, tuple[frozenset[int], Handler]] = {0xC0: (CLA_ISO, self._get_response)}
        self._clear_volatile()

    @property
    def known_cla(self) -> frozenset[int]:
        """CLA bytes the card knows at all; others answer 6E00 before anything else is looked at."""
        return frozenset().union(*(classes for classes, _ in self.handlers.values()))

    # --- SimulatedCard ---------------------------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self._atr

    def power_up(self) -> None:
        self.powered = True
        self._clear_volatile()

    def power_down(self) -> None:
        self.powered = False
        self._clear_volatile()

    def reset(self) -> None:
        self._clear_volatile()

    def execute(self, apdu: bytes) -> bytes:
        """Execute one command APDU and return ``data || SW1 SW2`` (nothing from a strict chip that is
        powered down). Never raises."""
        if self.strict_t0 and not self.powered:
            return b""
        try:
            reply = self._execute(bytes(apdu))
        except Exception:  # a simulator bug answers like a card with an internal error
            log.exception("%s: internal error on INS %s", self.label, bytes(apdu[1:2]).hex().upper() or "-")
            self._pending = b""
            reply = _sw(SW.TECHNICAL)
        return reply

    # --- dispatch ----------------------------------------------------------------------------------

    def _clear_volatile(self) -> None:
        """Forget the volatile state (power down, reset); subclasses add theirs."""
        self._pending = b""
        self._previous_pending = b""

    def _execute(self, apdu: bytes) -> bytes:
        # a pending response survives only until the next command (ISO 7816-4 s7.6.1)
        self._previous_pending, self._pending = self._pending, b""
        if len(apdu) < 4:
            return _sw(SW.WRONG_LENGTH)
        cla, ins = apdu[0], apdu[1]
        if cla not in self.known_cla:
            return _sw(SW.CLA_NOT_SUPPORTED)
        try:
            command = Command.from_bytes(apdu)
        except APDUFormatError:
            return _sw(SW.WRONG_LENGTH)
        if command.is_extended:  # short APDUs only
            return _sw(SW.WRONG_LENGTH)
        entry = self.handlers.get(ins)
        if entry is None:
            return _sw(SW.INS_NOT_SUPPORTED)
        classes, handler = entry
        if cla not in classes:
            return _sw(SW.CLA_NOT_SUPPORTED)
        try:
            data, sw = handler(command)
        except CardStatus as status:
            data, sw = b"", status.sw
        log.debug("%s: INS %02X -> %04X (%d bytes)", self.label, ins, sw, len(data))
        return self._deliver(command, data, sw)

    def _deliver(self, command: Command, data: bytes, sw: int) -> bytes:
        """Apply the transport rules to a handler's answer (docs/simulator.md, "Transport").

        - ``61xx`` from GET RESPONSE: its chunk as it is.
        - No data, or a status other than 9000: the status word alone.
        - T=0, command with data (case 4 as the card sees it: the T=0 TPDU carries no Le): ``61xx``,
          the data waits for GET RESPONSE (xx = 00 for 256 or more).
        - No Le (case 1/3 on T=1, case 1 on T=0): no data expected, the status word alone.
        - Case 2 with Le not 00: Le shorter than the data -> ``6Cxx``; on T=0 also Le longer.
        - Case 4 on T=1 with Le shorter than the data: Le bytes and ``61xx`` for the rest.
        - A strict T=0 chip (:attr:`strict_t0`): case 2 with Le 00 (P3 00, 256 bytes) and fewer bytes
          to send: ``6Cxx``, as a real T=0 card answers; the terminal sends the command again.
        """
        if sw >> 8 == 0x61:  # GET RESPONSE chunking already done
            return data + _sw(sw)
        if not data or sw != SW.OK:
            return _sw(sw)
        if self.protocol == "T=0" and command.data:
            return self._more(data)
        le = command.le
        if le is None:
            return _sw(sw)
        if not command.data and le != 256 and (le < len(data) or (self.protocol == "T=0" and le > len(data))):
            return _sw(0x6C00 | (len(data) & 0xFF))
        if self.strict_t0 and self.protocol == "T=0" and not command.data and le == 256 and len(data) < 256:
            return _sw(0x6C00 | len(data))  # P3 00 asks for 256 bytes exactly (ISO 7816-3 s12.2.2)
        if le < len(data):
            return data[:le] + self._more(data[le:])
        return data + _sw(sw)

    def _more(self, data: bytes) -> bytes:
        """Keep ``data`` for GET RESPONSE and answer ``61xx``."""
        self._pending = data
        return _sw(0x6100 | (len(data) if len(data) < 256 else 0))

    def _get_response(self, command: Command) -> Reply:
        """GET RESPONSE ``00 C0 00 00 Le`` (ISO 7816-4 s7.6.1) right after a ``61xx``.

        Le 00: up to 256 bytes; Le shorter than what is left: Le bytes and ``61xx`` for the rest;
        Le longer (not 00): ``6Cxx`` on T=0 (the data stays pending), everything on T=1.
        """
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if command.data or command.le is None:
            raise CardStatus(SW.WRONG_LENGTH)
        pending = self._previous_pending
        if not pending:
            raise CardStatus(SW.CONDITIONS)
        le = command.le
        if le > len(pending) and le != 256 and self.protocol == "T=0":
            self._pending = pending
            raise CardStatus(0x6C00 | (len(pending) & 0xFF))
        chunk, rest = pending[:le], pending[le:]
        if rest:
            self._pending = rest
            return chunk, 0x6100 | (len(rest) if len(rest) < 256 else 0)
        return chunk, SW.OK
