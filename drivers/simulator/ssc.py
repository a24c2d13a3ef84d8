"""The virtual social security card: a card OS (drivers/simulator/cardos.py) with the SSC's files,
PIN and security commands.

``SSCCard(profile)`` has an ATR, is powered up, down and reset, and executes one command APDU at a
time; :meth:`SSCCard.execute` never raises. The reading and PIN handlers are here, the
authentication and MAC-protected ones in its :class:`~drivers.simulator.ssc_security.CardSecurity`
(``security``), which holds the card's keys. Behaviour and conventions: docs/simulator.md and
docs/card-profile.md.

Volatile state (current DF/EF, PIN verified, external authentication, last challenge, pending
response) is cleared by power down and reset; persistent state (PIN value and try counter, external
authentication try counter, records, application lifecycle) lives as long as the object.
"""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
from typing import Any

from sscard.apdu.catalogue import EF06, THIRD_GENERATION
from sscard.apdu.command import Command
from sscard.apdu.commands import AID_PBOC_DEBIT, SSC_DF_NAME
from sscard.apdu.crypto import Algorithm
from sscard.apdu.pin import PIN_BLOCK_LENGTHS, PINFormatError, bcd_to_pin
from sscard.apdu.status import SW
from sscard.drivers.simulator import pboc
from sscard.drivers.simulator.cardos import CLA_ISO, CLA_PROPRIETARY, CardOS, CardStatus, RandomSource, Reply
from sscard.drivers.simulator.filesystem import DF, MF_FID, FileSelection, RecordEF, build_filesystem
from sscard.drivers.simulator.profile import Profile
from sscard.drivers.simulator.ssc_security import EXTERNAL_AUTH_MAX_TRIES, CardSecurity

log = logging.getLogger(__name__)


CHALLENGE_LENGTHS = (8, 16)
#: SELECT P2 (ISO 7816-4 s7.1.1, table 40): response FCI (00), FCP (04, answered with the FCI), none (0C)
SELECT_P2_RESPONSE = {0x00: True, 0x04: True, 0x0C: False}
#: SELECT P2 "next occurrence" (02) with each response option: the card has one application only
SELECT_P2_NEXT = frozenset({0x02, 0x06, 0x0E})


class SSCCard(CardOS):
    """The SSC chip personalised from a :class:`Profile` (implements ``SimulatedCard``).

    ``random`` is where GET CHALLENGE takes its bytes (``os.urandom``; tests of worked examples
    pass a fixed source).
    """

    label = "virtual SSC"

    def __init__(self, profile: Profile, random: RandomSource = os.urandom) -> None:
        self.profile = profile
        self.algorithm = Algorithm(profile.algorithm)
        #: 2 (3DES) or 3 (SM4, spec 3.00): a third-generation card shows EF06 (the holder's personal
        #: data) only after EXTERNAL AUTHENTICATE (the reader libraries' -2203; docs/card-profile.md)
        self.generation = self.algorithm.generation
        self.mf, self.app = build_filesystem(profile.card, profile.holder, self.generation)
        self.files = FileSelection(self.mf)
        # persistent
        self._pin = profile.pin.value
        self.pin_tries_left = profile.pin.tries_left
        self.pin_max_tries = profile.pin.max_tries
        self.activated = profile.state == "active"
        #: the bank application's DFs by name, when the profile has an account (drivers/simulator/pboc.py)
        self.bank: dict[bytes, DF] = {}
        if profile.bank_pan:
            expiry, issued = profile.card["expiry_date"], profile.card["issue_date"]
            assert isinstance(expiry, dt.date) and isinstance(issued, dt.date)
            pse, debit = pboc.bank_files(profile.bank_pan, expiry, issued)
            self.bank = {pse.name: pse, debit.name: debit}  # type: ignore[dict-item]
        self.external_auth_max_tries = EXTERNAL_AUTH_MAX_TRIES
        self.external_auth_tries_left = EXTERNAL_AUTH_MAX_TRIES
        #: INTERNAL and EXTERNAL AUTHENTICATE, UPDATE RECORD and the MAC-protected commands, with the keys
        self.security = CardSecurity(self, profile.keys)
        super().__init__(profile.atr, profile.protocol, random)
        self.handlers.update({
            0xA4: (CLA_ISO, self._select),
            0xB2: (CLA_ISO, self._read_record),
            0xB0: (CLA_ISO, self._read_binary),
            0x20: (CLA_ISO, self._verify),
            0x5E: (CLA_PROPRIETARY, self._change_pin),
            0x84: (CLA_ISO, self._get_challenge),
            0xA8: (CLA_PROPRIETARY, self._get_processing_options),
        })
        self.handlers.update(self.security.handlers())

    # --- lifecycle (bank activation task) ----------------------------------------------------------

    def activate(self) -> None:
        """Put the SSC application in the active state: SELECT answers 9000 from now on."""
        self.activated = True

    # --- what survives power-down (drivers/simulator/state.py) ---------------------------------------

    def persistent_state(self) -> dict[str, Any]:
        """The PIN, its try counter, the lifecycle, the external authentication try counter and the
        records, as JSON values."""
        return {
            "pin": self._pin,
            "pin_tries_left": self.pin_tries_left,
            "activated": self.activated,
            "external_auth_tries_left": self.external_auth_tries_left,
            "records": {f"{fid:04X}": [record.hex() for record in ef.records] for fid, ef in self.app.files.items()},
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`persistent_state` (ValueError/TypeError/KeyError when it is not one)."""
        pin, tries, auth_tries = state["pin"], state["pin_tries_left"], state["external_auth_tries_left"]
        if not isinstance(pin, str) or not pin.isdigit() or not isinstance(state["activated"], bool):
            raise ValueError("PIN or lifecycle")
        if not all(type(n) is int and 0 <= n <= limit for n, limit in
                   ((tries, self.pin_max_tries), (auth_tries, self.external_auth_max_tries))):
            raise ValueError("try counter")
        records = state["records"]
        files = {f"{fid:04X}": ef for fid, ef in self.app.files.items()}
        if not isinstance(records, dict) or set(records) != set(files) or any(
                not isinstance(saved, list) or len(saved) != len(files[fid].records) for fid, saved in records.items()):
            raise ValueError("records")
        restored = {fid: [bytes.fromhex(record) for record in saved] for fid, saved in records.items()}
        self._pin, self.pin_tries_left, self.activated = pin, tries, state["activated"]
        self.external_auth_tries_left = auth_tries
        for fid, saved_records in restored.items():
            files[fid].records[:] = saved_records

    @property
    def pin_verified(self) -> bool:
        return self._verified

    @property
    def current_ef(self) -> RecordEF | None:
        return self.files.ef

    @property
    def application_selected(self) -> bool:
        return self.files.df is self.app

    @property
    def last_challenge(self) -> bytes | None:
        """The last GET CHALLENGE answer since power up, until a command uses it up."""
        return self._challenge

    def _clear_volatile(self) -> None:
        super()._clear_volatile()
        self.files.clear()
        self._verified = False
        self._challenge: bytes | None = None
        self.external_authenticated = False

    def take_challenge(self) -> bytes | None:
        """The last GET CHALLENGE answer, used up now (one try per challenge), or None."""
        challenge, self._challenge = self._challenge, None
        return challenge

    def set_pin(self, pin: str) -> None:
        """A new PIN (RELOAD PIN): its try counter reset (a blocked PIN unblocked), not verified."""
        self._pin = pin
        self.pin_tries_left = self.pin_max_tries
        self._verified = False

    # --- handlers ----------------------------------------------------------------------------------

    def _select(self, command: Command) -> Reply:
        """SELECT (ISO 7816-4 s7.1.1): by DF name (P1 04), by FID (P1 00 any, P1 02 EF under current DF)."""
        p1, p2 = command.p1, command.p2
        if p1 == 0x04:
            if p2 in SELECT_P2_NEXT and command.data:
                raise CardStatus(SW.FILE_NOT_FOUND)
            if p2 not in SELECT_P2_RESPONSE:
                raise CardStatus(SW.WRONG_P1P2)
            if not command.data:
                raise CardStatus(SW.WRONG_LENGTH)
            bank = self.bank.get(bytes(command.data))
            if bank is not None:  # the PSE or the debit application: active whatever the SSC's state
                self.files.select_df(bank)
                return (bank.fci if SELECT_P2_RESPONSE[p2] else b""), SW.OK
            if command.data != SSC_DF_NAME:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self.files.select_df(self.app)
            if not self.activated:
                return b"", SW.NOT_ACTIVATED
            return (self.app.fci if SELECT_P2_RESPONSE[p2] else b""), SW.OK
        if p1 in (0x00, 0x02):
            if p2 not in SELECT_P2_RESPONSE:
                raise CardStatus(SW.WRONG_P1P2)
            if not command.data and p1 == 0x00:  # P1 00 without data selects the MF
                self.files.select_df(self.mf)
                return b"", SW.OK
            if len(command.data) != 2:
                raise CardStatus(SW.WRONG_LENGTH)
            fid = int.from_bytes(command.data, "big")
            if fid == MF_FID:
                if p1 == 0x02:  # the MF is not an EF
                    raise CardStatus(SW.FILE_NOT_FOUND)
                self.files.select_df(self.mf)
                return b"", SW.OK
            ef = self.files.df.files.get(fid)
            if ef is None:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self.files.ef = ef
            return b"", SW.OK  # convention: SELECT by FID returns no FCP
        raise CardStatus(SW.WRONG_P1P2)

    def _read_record(self, command: Command) -> Reply:
        """READ RECORD ``00 B2 n P2 Le`` (ISO 7816-4 s7.3.3): P2 04 current EF, SFI<<3|04 by SFI."""
        if command.data or command.le is None:
            raise CardStatus(SW.WRONG_LENGTH)
        number, p2 = command.p1, command.p2
        sfi = p2 >> 3
        if p2 & 0x07 != 0x04 or number in (0x00, 0xFF) or sfi == 0x1F:
            raise CardStatus(SW.WRONG_P1P2)
        ef = self.ef_for(sfi)
        if ef.fid == EF06 and self.generation >= THIRD_GENERATION and not self.external_authenticated:
            raise CardStatus(SW.SECURITY_STATUS)
        return ef.read(number), SW.OK

    def ef_for(self, sfi: int) -> RecordEF:
        """The current EF (``sfi`` 0) or the EF with that SFI, which becomes current (s7.3.1)."""
        if sfi and self.files.df is self.mf:  # convention: nothing is readable before an application is selected
            raise CardStatus(SW.NO_CURRENT_EF)
        return self.files.ef_for(sfi)

    def _get_processing_options(self, command: Command) -> Reply:
        """GET PROCESSING OPTIONS ``80 A8 00 00 Lc 83 len PDOL-data 00`` of the bank application
        (EMV Book 3 s6.5.8; drivers/simulator/pboc.py): ``69 85`` unless it is selected, ``67 00``
        unless the data is the PDOL's."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if self.files.df is not self.bank.get(AID_PBOC_DEBIT):
            raise CardStatus(SW.CONDITIONS)
        data = command.data
        if command.le is None or len(data) != 2 + pboc.PDOL_DATA_LENGTH or data[:2] != bytes((0x83, pboc.PDOL_DATA_LENGTH)):
            raise CardStatus(SW.WRONG_LENGTH)
        return pboc.processing_options(), SW.OK

    def _read_binary(self, command: Command) -> Reply:
        """READ BINARY (ISO 7816-4 s7.2.3): the card has record EFs only, so 6981 (6986 with no EF)."""
        if command.data or command.le is None:
            raise CardStatus(SW.WRONG_LENGTH)
        if command.p1 & 0x80:  # P1 = 100xxxxx: SFI in P1, offset in P2
            if command.p1 & 0x60:
                raise CardStatus(SW.WRONG_P1P2)
            self.ef_for(command.p1 & 0x1F)
        elif self.files.ef is None:
            raise CardStatus(SW.NO_CURRENT_EF)
        raise CardStatus(SW.INCOMPATIBLE_FILE)

    def _verify(self, command: Command) -> Reply:
        """VERIFY ``00 20 00 00 [Lc PIN]`` (ISO 7816-4 s7.5.6; PBOC 63Cx / 6983)."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if command.le is not None:
            raise CardStatus(SW.WRONG_LENGTH)
        if not command.data:  # status query: no try is spent
            if self.pin_tries_left == 0:
                raise CardStatus(SW.AUTH_BLOCKED)
            if self._verified:
                return b"", SW.OK
            raise CardStatus(SW.COUNTER | self.pin_tries_left)
        self._check_pin(self.pin_from(command.data))
        return b"", SW.OK

    def _change_pin(self, command: Command) -> Reply:
        """CHANGE PIN ``80 5E 01 00 Lc old FF new`` (PBOC); the old PIN is checked as VERIFY does.

        P1 00 is RELOAD PIN (MAC-protected, :meth:`CardSecurity.reload_pin`).
        """
        if command.p2 != 0x00 or command.p1 not in (0x00, 0x01):
            raise CardStatus(SW.WRONG_P1P2)
        if command.p1 == 0x00:
            return self.security.reload_pin(command)
        if command.le is not None:
            raise CardStatus(SW.WRONG_LENGTH)
        data = command.data
        split = data.find(0xFF)
        if split not in PIN_BLOCK_LENGTHS or len(data) - split - 1 not in PIN_BLOCK_LENGTHS:
            raise CardStatus(SW.WRONG_LENGTH)
        old, new = self.pin_from(data[:split]), self.pin_from(data[split + 1:])
        self._check_pin(old)
        self._pin = new
        log.info("virtual SSC: PIN changed")
        return b"", SW.OK

    def pin_from(self, block: bytes) -> str:
        """The PIN a VERIFY, CHANGE PIN or RELOAD PIN block holds: ``67 00`` for a block of the wrong
        length, ``6A 80`` when it is not BCD digits."""
        if len(block) not in PIN_BLOCK_LENGTHS:
            raise CardStatus(SW.WRONG_LENGTH)
        try:
            return bcd_to_pin(block)
        except PINFormatError:
            raise CardStatus(SW.WRONG_DATA) from None

    def _check_pin(self, pin: str) -> None:
        """Compare with the card's PIN; count the try (PBOC: 63Cx, 6983 once blocked)."""
        if self.pin_tries_left == 0:
            raise CardStatus(SW.AUTH_BLOCKED)
        if hmac.compare_digest(pin.encode(), self._pin.encode()):
            self.pin_tries_left = self.pin_max_tries
            self._verified = True
            return
        self._verified = False
        self.pin_tries_left -= 1
        log.info("virtual SSC: wrong PIN, %d tries left", self.pin_tries_left)
        raise CardStatus(SW.AUTH_BLOCKED if self.pin_tries_left == 0 else SW.COUNTER | self.pin_tries_left)

    def _get_challenge(self, command: Command) -> Reply:
        """GET CHALLENGE ``00 84 00 00 Le`` (ISO 7816-4 s7.5.3): 8 bytes (3DES) or 16 (SM4)."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if command.data or command.le not in CHALLENGE_LENGTHS:
            raise CardStatus(SW.WRONG_LENGTH)
        self._challenge = self.random(command.le)
        return self._challenge, SW.OK
