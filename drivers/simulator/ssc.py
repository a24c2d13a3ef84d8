"""The virtual social security card: a card OS in the vsmartcard ``VirtualICC`` pattern.

``SSCCard(profile)`` has an ATR, is powered up, down and reset, and executes one command APDU at a
time; :meth:`SSCCard.execute` never raises (a bug answers ``6F00``, malformed bytes ``6700``).
Commands are dispatched by INS to handlers that return ``(data, sw)`` or raise :class:`CardStatus`
carrying the status word; :meth:`SSCCard._deliver` then applies the transport rules (T=0 ``61xx``
and ``6Cxx``, ISO/IEC 7816-3 s12.2; ISO/IEC 7816-4 s5.1.3). Behaviour and conventions:
docs/simulator.md.

Volatile state (current DF/EF, PIN verified, last challenge, pending response) is cleared by power
down and reset; persistent state (PIN value and try counter, records, application lifecycle) lives
as long as the object.
"""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable

from apdu.command import Command
from apdu.commands import SSC_DF_NAME
from apdu.crypto import PINFormatError, bcd_to_pin
from apdu.errors import APDUFormatError
from drivers.simulator.filesystem import MF_FID, DF, RecordEF, build_filesystem
from drivers.simulator.profile import Profile

log = logging.getLogger(__name__)

SW_OK = 0x9000
SW_NOT_ACTIVATED = 0x6283
SW_WRONG_LENGTH = 0x6700
SW_INCOMPATIBLE_FILE = 0x6981
SW_PIN_BLOCKED = 0x6983
SW_CONDITIONS = 0x6985
SW_NO_CURRENT_EF = 0x6986
SW_WRONG_DATA = 0x6A80
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_RECORD_NOT_FOUND = 0x6A83
SW_WRONG_P1P2 = 0x6A86
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_TECHNICAL = 0x6F00

CLA_ISO = frozenset({0x00})
CLA_PROPRIETARY = frozenset({0x80})
#: CLA bytes the card knows at all; others answer 6E00 before anything else is looked at
KNOWN_CLA = CLA_ISO | CLA_PROPRIETARY
#: PIN block lengths accepted by VERIFY / CHANGE PIN: 4 to 12 digits in BCD
PIN_BLOCK = range(2, 7)
CHALLENGE_LENGTHS = (8, 16)
#: SELECT P2 (ISO 7816-4 s7.1.1, table 40): response FCI (00), FCP (04, answered with the FCI), none (0C)
SELECT_P2_RESPONSE = {0x00: True, 0x04: True, 0x0C: False}
#: SELECT P2 "next occurrence" (02) with each response option: the card has one application only
SELECT_P2_NEXT = frozenset({0x02, 0x06, 0x0E})

Reply = tuple[bytes, int]
Handler = Callable[[Command], Reply]


class CardStatus(Exception):
    """Raised by a handler: answer this status word (state changes made before it stay)."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw


def _sw(sw: int) -> bytes:
    return bytes((sw >> 8 & 0xFF, sw & 0xFF))


class SSCCard:
    """The SSC chip personalised from a :class:`Profile` (implements ``SimulatedCard``)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.protocol = profile.protocol
        generation = 3 if profile.algorithm == "SM4" else 2
        self.mf, self.app = build_filesystem(profile.card, profile.holder, generation)
        # persistent
        self._pin = profile.pin.value
        self.pin_tries_left = profile.pin.tries_left
        self.pin_max_tries = profile.pin.max_tries
        self.activated = profile.state == "active"
        self.powered = False
        #: INS -> (accepted CLA bytes, handler); the crypto task adds 82, 88, 18 and PIN reload here
        self.handlers: dict[int, tuple[frozenset[int], Handler]] = {
            0xA4: (CLA_ISO, self._select),
            0xB2: (CLA_ISO, self._read_record),
            0xB0: (CLA_ISO, self._read_binary),
            0x20: (CLA_ISO, self._verify),
            0x5E: (CLA_PROPRIETARY, self._change_pin),
            0x84: (CLA_ISO, self._get_challenge),
            0xC0: (CLA_ISO, self._get_response),
        }
        self._clear_volatile()

    # --- SimulatedCard ---------------------------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self.profile.atr

    def power_up(self) -> None:
        self.powered = True
        self._clear_volatile()

    def power_down(self) -> None:
        self.powered = False
        self._clear_volatile()

    def reset(self) -> None:
        self._clear_volatile()

    def execute(self, apdu: bytes) -> bytes:
        """Execute one command APDU and return ``data || SW1 SW2``. Never raises."""
        try:
            reply = self._execute(bytes(apdu))
        except Exception:  # a simulator bug answers like a card with an internal error
            log.exception("virtual SSC: internal error on INS %s", bytes(apdu[1:2]).hex().upper() or "-")
            self._pending = b""
            reply = _sw(SW_TECHNICAL)
        return reply

    # --- lifecycle (bank activation task) ----------------------------------------------------------

    def activate(self) -> None:
        """Put the SSC application in the active state: SELECT answers 9000 from now on."""
        self.activated = True

    @property
    def pin_verified(self) -> bool:
        return self._verified

    @property
    def current_ef(self) -> RecordEF | None:
        return self._ef

    @property
    def application_selected(self) -> bool:
        return self._df is self.app

    @property
    def last_challenge(self) -> bytes | None:
        """The last GET CHALLENGE answer since power up (for the authentication handlers)."""
        return self._challenge

    # --- dispatch ----------------------------------------------------------------------------------

    def _clear_volatile(self) -> None:
        self._df: DF = self.mf
        self._ef: RecordEF | None = None
        self._verified = False
        self._challenge: bytes | None = None
        self._pending = b""
        self._previous_pending = b""

    def _execute(self, apdu: bytes) -> bytes:
        # a pending response survives only until the next command (ISO 7816-4 s7.6.1)
        self._previous_pending, self._pending = self._pending, b""
        if len(apdu) < 4:
            return _sw(SW_WRONG_LENGTH)
        cla, ins = apdu[0], apdu[1]
        if cla not in KNOWN_CLA:
            return _sw(SW_CLA_NOT_SUPPORTED)
        try:
            command = Command.from_bytes(apdu)
        except APDUFormatError:
            return _sw(SW_WRONG_LENGTH)
        if command.is_extended:  # short APDUs only
            return _sw(SW_WRONG_LENGTH)
        entry = self.handlers.get(ins)
        if entry is None:
            return _sw(SW_INS_NOT_SUPPORTED)
        classes, handler = entry
        if cla not in classes:
            return _sw(SW_CLA_NOT_SUPPORTED)
        try:
            data, sw = handler(command)
        except CardStatus as status:
            data, sw = b"", status.sw
        log.debug("virtual SSC: INS %02X -> %04X (%d bytes)", ins, sw, len(data))
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
        """
        if sw >> 8 == 0x61:  # GET RESPONSE chunking already done
            return data + _sw(sw)
        if not data or sw != SW_OK:
            return _sw(sw)
        if self.protocol == "T=0" and command.data:
            return self._more(data)
        le = command.le
        if le is None:
            return _sw(sw)
        if not command.data and le != 256 and (le < len(data) or (self.protocol == "T=0" and le > len(data))):
            return _sw(0x6C00 | (len(data) & 0xFF))
        if le < len(data):
            return data[:le] + self._more(data[le:])
        return data + _sw(sw)

    def _more(self, data: bytes) -> bytes:
        """Keep ``data`` for GET RESPONSE and answer ``61xx``."""
        self._pending = data
        return _sw(0x6100 | (len(data) if len(data) < 256 else 0))

    # --- handlers ----------------------------------------------------------------------------------

    def _select(self, command: Command) -> Reply:
        """SELECT (ISO 7816-4 s7.1.1): by DF name (P1 04), by FID (P1 00 any, P1 02 EF under current DF)."""
        p1, p2 = command.p1, command.p2
        if p1 == 0x04:
            if p2 in SELECT_P2_NEXT and command.data:
                raise CardStatus(SW_FILE_NOT_FOUND)
            if p2 not in SELECT_P2_RESPONSE:
                raise CardStatus(SW_WRONG_P1P2)
            if not command.data:
                raise CardStatus(SW_WRONG_LENGTH)
            if command.data != SSC_DF_NAME:
                raise CardStatus(SW_FILE_NOT_FOUND)
            self._df, self._ef = self.app, None
            if not self.activated:
                return b"", SW_NOT_ACTIVATED
            return (self.app.fci if SELECT_P2_RESPONSE[p2] else b""), SW_OK
        if p1 in (0x00, 0x02):
            if p2 not in SELECT_P2_RESPONSE:
                raise CardStatus(SW_WRONG_P1P2)
            if not command.data and p1 == 0x00:  # P1 00 without data selects the MF
                self._df, self._ef = self.mf, None
                return b"", SW_OK
            if len(command.data) != 2:
                raise CardStatus(SW_WRONG_LENGTH)
            fid = int.from_bytes(command.data, "big")
            if fid == MF_FID:
                if p1 == 0x02:  # the MF is not an EF
                    raise CardStatus(SW_FILE_NOT_FOUND)
                self._df, self._ef = self.mf, None
                return b"", SW_OK
            ef = self._df.files.get(fid)
            if ef is None:
                raise CardStatus(SW_FILE_NOT_FOUND)
            self._ef = ef
            return b"", SW_OK  # convention: SELECT by FID returns no FCP
        raise CardStatus(SW_WRONG_P1P2)

    def _read_record(self, command: Command) -> Reply:
        """READ RECORD ``00 B2 n P2 Le`` (ISO 7816-4 s7.3.3): P2 04 current EF, SFI<<3|04 by SFI."""
        if command.data or command.le is None:
            raise CardStatus(SW_WRONG_LENGTH)
        number, p2 = command.p1, command.p2
        sfi = p2 >> 3
        if p2 & 0x07 != 0x04 or number in (0x00, 0xFF) or sfi == 0x1F:
            raise CardStatus(SW_WRONG_P1P2)
        ef = self._ef_for(sfi)
        record = ef.record(number)
        if record is None:
            raise CardStatus(SW_RECORD_NOT_FOUND)
        return record, SW_OK

    def _ef_for(self, sfi: int) -> RecordEF:
        """The current EF (``sfi`` 0) or the EF with that SFI, which becomes current (s7.3.1)."""
        if sfi == 0:
            if self._ef is None:
                raise CardStatus(SW_NO_CURRENT_EF)
            return self._ef
        if self._df is not self.app:  # convention: nothing is readable before the application is selected
            raise CardStatus(SW_NO_CURRENT_EF)
        ef = self.app.by_sfi(sfi)
        if ef is None:
            raise CardStatus(SW_FILE_NOT_FOUND)
        self._ef = ef
        return ef

    def _read_binary(self, command: Command) -> Reply:
        """READ BINARY (ISO 7816-4 s7.2.3): the card has record EFs only, so 6981 (6986 with no EF)."""
        if command.data or command.le is None:
            raise CardStatus(SW_WRONG_LENGTH)
        if command.p1 & 0x80:  # P1 = 100xxxxx: SFI in P1, offset in P2
            if command.p1 & 0x60:
                raise CardStatus(SW_WRONG_P1P2)
            self._ef_for(command.p1 & 0x1F)
        elif self._ef is None:
            raise CardStatus(SW_NO_CURRENT_EF)
        raise CardStatus(SW_INCOMPATIBLE_FILE)

    def _verify(self, command: Command) -> Reply:
        """VERIFY ``00 20 00 00 [Lc PIN]`` (ISO 7816-4 s7.5.6; PBOC 63Cx / 6983)."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW_WRONG_P1P2)
        if command.le is not None:
            raise CardStatus(SW_WRONG_LENGTH)
        if not command.data:  # status query: no try is spent
            if self.pin_tries_left == 0:
                raise CardStatus(SW_PIN_BLOCKED)
            if self._verified:
                return b"", SW_OK
            raise CardStatus(0x63C0 | self.pin_tries_left)
        self._check_pin(self._pin_from(command.data))
        return b"", SW_OK

    def _change_pin(self, command: Command) -> Reply:
        """CHANGE PIN ``80 5E 01 00 Lc old FF new`` (PBOC); the old PIN is checked as VERIFY does.

        P1 00 (RELOAD PIN, MAC-protected) comes with the crypto task: 6A81 until then.
        """
        if command.p2 != 0x00 or command.p1 not in (0x00, 0x01):
            raise CardStatus(SW_WRONG_P1P2)
        if command.p1 == 0x00:
            raise CardStatus(SW_FUNCTION_NOT_SUPPORTED)
        if command.le is not None:
            raise CardStatus(SW_WRONG_LENGTH)
        data = command.data
        split = data.find(0xFF)
        if split not in PIN_BLOCK or len(data) - split - 1 not in PIN_BLOCK:
            raise CardStatus(SW_WRONG_LENGTH)
        old, new = self._pin_from(data[:split]), self._pin_from(data[split + 1:])
        self._check_pin(old)
        self._pin = new
        log.info("virtual SSC: PIN changed")
        return b"", SW_OK

    def _pin_from(self, block: bytes) -> str:
        if len(block) not in PIN_BLOCK:
            raise CardStatus(SW_WRONG_LENGTH)
        try:
            return bcd_to_pin(block)
        except PINFormatError:
            raise CardStatus(SW_WRONG_DATA) from None

    def _check_pin(self, pin: str) -> None:
        """Compare with the card's PIN; count the try (PBOC: 63Cx, 6983 once blocked)."""
        if self.pin_tries_left == 0:
            raise CardStatus(SW_PIN_BLOCKED)
        if hmac.compare_digest(pin.encode(), self._pin.encode()):
            self.pin_tries_left = self.pin_max_tries
            self._verified = True
            return
        self._verified = False
        self.pin_tries_left -= 1
        log.info("virtual SSC: wrong PIN, %d tries left", self.pin_tries_left)
        raise CardStatus(SW_PIN_BLOCKED if self.pin_tries_left == 0 else 0x63C0 | self.pin_tries_left)

    def _get_challenge(self, command: Command) -> Reply:
        """GET CHALLENGE ``00 84 00 00 Le`` (ISO 7816-4 s7.5.3): 8 bytes (3DES) or 16 (SM4)."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW_WRONG_P1P2)
        if command.data or command.le not in CHALLENGE_LENGTHS:
            raise CardStatus(SW_WRONG_LENGTH)
        self._challenge = os.urandom(command.le)
        return self._challenge, SW_OK

    def _get_response(self, command: Command) -> Reply:
        """GET RESPONSE ``00 C0 00 00 Le`` (ISO 7816-4 s7.6.1) right after a ``61xx``.

        Le 00: up to 256 bytes; Le shorter than what is left: Le bytes and ``61xx`` for the rest;
        Le longer (not 00): ``6Cxx`` on T=0 (the data stays pending), everything on T=1.
        """
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW_WRONG_P1P2)
        if command.data or command.le is None:
            raise CardStatus(SW_WRONG_LENGTH)
        pending = self._previous_pending
        if not pending:
            raise CardStatus(SW_CONDITIONS)
        le = command.le
        if le > len(pending) and le != 256 and self.protocol == "T=0":
            self._pending = pending
            raise CardStatus(0x6C00 | (len(pending) & 0xFF))
        chunk, rest = pending[:le], pending[le:]
        if rest:
            self._pending = rest
            return chunk, 0x6100 | (len(rest) if len(rest) < 256 else 0)
        return chunk, SW_OK
