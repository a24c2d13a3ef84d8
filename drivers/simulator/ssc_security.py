"""The SSC's security commands: :class:`CardSecurity`, a part of each :class:`drivers.simulator.ssc.SSCCard`.

INTERNAL AUTHENTICATE (the genuine-card check), EXTERNAL AUTHENTICATE (the terminal proves itself;
its own try counter) which grants UPDATE RECORD, and the MAC-protected RELOAD PIN and APPLICATION
UNBLOCK. Keys, key ids, MAC inputs: docs/card-profile.md, "Keys and security" (project convention
where docs/reference/commands.md is silent). Every cryptogram and MAC is compared in constant time.

A :class:`CardSecurity` holds the card's keys and answers the commands; the state they change is the
card's own: the last challenge (``take_challenge``), the files (``ef_for``), the PIN (``pin_from``,
``set_pin``), the external authentication's try counter and result, and the lifecycle (``activate``).
The card registers :meth:`CardSecurity.handlers` and passes RELOAD PIN (CHANGE PIN with P1 00) on.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sscard.apdu.command import Command
from sscard.apdu.commands import MAC_LENGTH, mac_input
from sscard.apdu.crypto import constant_time_equal, session_mac
from sscard.apdu.keyset import KeyUsage
from sscard.apdu.pin import PIN_BLOCK_LENGTHS
from sscard.apdu.status import SW
from sscard.drivers.simulator.cardos import CLA_ISO, CLA_SECURE, CardStatus, Handler, Reply

if TYPE_CHECKING:
    from sscard.drivers.simulator.ssc import SSCCard

log = logging.getLogger(__name__)

#: EXTERNAL AUTHENTICATE tries before the key blocks (convention; persistent, like the PIN counter)
EXTERNAL_AUTH_MAX_TRIES = 5


class CardSecurity:
    """INS 88, 82, DC, 5E P1 00 and 18 of one virtual SSC, with its keys (docs/card-profile.md, "Keys
    and security")."""

    def __init__(self, card: SSCCard, keys: dict[KeyUsage, bytes]) -> None:
        self.card = card
        self._keys = keys

    def handlers(self) -> dict[int, tuple[frozenset[int], Handler]]:
        """The card's handlers for these commands (RELOAD PIN shares INS 5E with CHANGE PIN: the card
        passes it to :meth:`reload_pin`)."""
        return {
            0x88: (CLA_ISO, self._internal_authenticate),
            0x82: (CLA_ISO, self._external_authenticate),
            0xDC: (CLA_ISO, self._update_record),
            0x18: (CLA_SECURE, self._application_unblock),
        }

    def _take_challenge(self, longest: int) -> bytes:
        """The last GET CHALLENGE answer, used up now whatever the outcome (one try per challenge)."""
        challenge = self.card.take_challenge()
        if challenge is None or len(challenge) > longest:
            raise CardStatus(SW.CONDITIONS)
        return challenge

    def _check_key_reference(self, command: Command, usage: KeyUsage) -> None:
        if command.p1 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if command.p2 != usage.key_id:
            raise CardStatus(SW.KEY_NOT_FOUND)
        if len(command.data) != self.card.algorithm.block_size:
            raise CardStatus(SW.WRONG_LENGTH)

    def _internal_authenticate(self, command: Command) -> Reply:
        """INTERNAL AUTHENTICATE ``00 88 00 01 Lc random [Le]`` (ISO 7816-4 s7.5.2).

        Convention: the random is one block (8 bytes 3DES, 16 SM4), answered ECB-encrypted with the
        card's internal-authentication key. Works whether or not the application is activated.
        """
        self._check_key_reference(command, KeyUsage.INTERNAL_AUTH)
        return self.card.algorithm.encrypt_block(self._keys[KeyUsage.INTERNAL_AUTH], command.data), SW.OK

    def _external_authenticate(self, command: Command) -> Reply:
        """EXTERNAL AUTHENTICATE ``00 82 00 04 Lc cryptogram`` (ISO 7816-4 s7.5.4).

        The cryptogram must be the card's last challenge ECB-encrypted with its external-authentication
        key. Success grants update rights until power down; failure counts down the key's own try
        counter (``63 Cx``, ``69 83`` once blocked). No challenge, or one already used: ``69 85``.
        """
        self._check_key_reference(command, KeyUsage.EXTERNAL_AUTH)
        if command.le is not None:
            raise CardStatus(SW.WRONG_LENGTH)
        if self.card.external_auth_tries_left == 0:
            raise CardStatus(SW.AUTH_BLOCKED)
        challenge = self._take_challenge(self.card.algorithm.block_size)
        if len(challenge) != self.card.algorithm.block_size:
            raise CardStatus(SW.CONDITIONS)
        expected = self.card.algorithm.encrypt_block(self._keys[KeyUsage.EXTERNAL_AUTH], challenge)
        if constant_time_equal(expected, command.data):
            self.card.external_auth_tries_left = self.card.external_auth_max_tries
            self.card.external_authenticated = True
            return b"", SW.OK
        self.card.external_authenticated = False
        self.card.external_auth_tries_left -= 1
        log.info("virtual SSC: external authentication failed, %d tries left", self.card.external_auth_tries_left)
        raise CardStatus(SW.AUTH_BLOCKED if self.card.external_auth_tries_left == 0 else SW.COUNTER | self.card.external_auth_tries_left)

    def _update_record(self, command: Command) -> Reply:
        """UPDATE RECORD ``00 DC n P2 Lc TLV`` (ISO 7816-4 s7.3.5): P2 04 current EF or SFI<<3|04.

        Convention: only after EXTERNAL AUTHENTICATE (else ``69 82``); the data must be one simple
        TLV with the record's tag (else ``6A 80``); the record must exist (``6A 83``).
        """
        if command.p2 & 0x07 != 0x04 or command.p1 in (0x00, 0xFF):
            raise CardStatus(SW.WRONG_P1P2)
        if not command.data or command.le is not None:
            raise CardStatus(SW.WRONG_LENGTH)
        if not self.card.external_authenticated:
            raise CardStatus(SW.SECURITY_STATUS)
        ef = self.card.ef_for(command.p2 >> 3)
        old = ef.read(command.p1)
        data = command.data
        if len(data) < 2 or data[0] != old[0] or data[1] != len(data) - 2:
            raise CardStatus(SW.WRONG_DATA)
        ef.records[command.p1 - 1] = bytes(data)
        return b"", SW.OK

    def _check_mac(self, command: Command, usage: KeyUsage) -> bytes:
        """Verify the trailing 4-byte MAC (``apdu.crypto.session_mac`` over header, Lc and data);
        return the data before it. ``69 85`` without a fresh challenge, ``69 88`` on a wrong MAC."""
        challenge = self._take_challenge(self.card.algorithm.block_size)
        body, mac = command.data[:-MAC_LENGTH], command.data[-MAC_LENGTH:]
        message = mac_input(command.cla, command.ins, command.p1, command.p2, body)
        expected = session_mac(self._keys[usage], challenge, message, self.card.algorithm)
        if not constant_time_equal(expected, mac):
            log.info("virtual SSC: wrong MAC on INS %02X", command.ins)
            raise CardStatus(SW.MAC_WRONG)
        return body

    def reload_pin(self, command: Command) -> Reply:
        """RELOAD PIN ``80 5E 00 00 Lc new-PIN MAC`` (PBOC form; the bank counter's PIN reset).

        The MAC is checked first (``69 88``, no PIN try spent); then the PIN is replaced, its try
        counter reset (a blocked PIN is unblocked) and the PIN is not verified.
        """
        if command.le is not None or len(command.data) - MAC_LENGTH not in PIN_BLOCK_LENGTHS:
            raise CardStatus(SW.WRONG_LENGTH)
        block = self._check_mac(command, KeyUsage.PIN_RELOAD)
        self.card.set_pin(self.card.pin_from(block))
        log.info("virtual SSC: PIN reloaded")
        return b"", SW.OK

    def _application_unblock(self, command: Command) -> Reply:
        """APPLICATION UNBLOCK ``84 18 00 00 04 MAC`` (PBOC/EMV): activates the SSC application."""
        if command.p1 != 0x00 or command.p2 != 0x00:
            raise CardStatus(SW.WRONG_P1P2)
        if command.le is not None or len(command.data) != MAC_LENGTH:
            raise CardStatus(SW.WRONG_LENGTH)
        self._check_mac(command, KeyUsage.APP_MAINTENANCE)
        self.card.activate()
        log.info("virtual SSC: application unblocked")
        return b"", SW.OK
