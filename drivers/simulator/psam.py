"""The virtual PSAM: the terminal's secure access module, a card in its own reader slot that holds the
master keys and computes card cryptograms and MACs for the terminal without ever giving a key out.

Commands (PBOC PSAM form, docs/reference/commands.md, "PSAM"; details are the project convention of
docs/card-profile.md, "PSAM commands"):

- DES INIT ``80 1A <key usage> <key version> Lc D [|| challenge]``: pick a master key by usage
  (:class:`apdu.keyset.KeyUsage` code) and version (``02`` the 3DES key set of 2nd-generation cards,
  ``03`` the SM4 set of 3rd-generation cards), diversify it with D (8 bytes for both,
  ``apdu.crypto.diversify``). With the card's challenge appended, the key is readied for a MAC with a
  session key.
- DES CRYPT ``80 FA <mode> 00 Lc data Le``: mode ``00`` ECB-encrypt whole blocks (authentication keys,
  no challenge); mode ``05`` the 4-byte MAC of ``data`` (``apdu.crypto.session_mac``; MAC keys, after a
  DES INIT with the challenge). Anything else: ``69 85``.

Profile: ``fixtures/cards/psam.json`` (``"kind": "psam"``), validated by :func:`parse_psam_profile`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sscard.apdu.atr import PROTOCOLS
from sscard.apdu.command import Command
from sscard.apdu.commands import PSAM_MODE_ENCRYPT, PSAM_MODE_MAC
from sscard.apdu.crypto import DIVERSIFICATION_DATA_LENGTH, Algorithm, diversify, session_mac
from sscard.apdu.keyset import PSAM_KEY_VERSIONS, KeyFormatError, KeyUsage, MasterKeys, parse_master_keys
from sscard.apdu.status import SW
from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator.cardos import CLA_PROPRIETARY, CardOS, CardStatus, RandomSource, Reply
from sscard.drivers.simulator.profile import locate
from sscard.drivers.simulator.validator import ProfileValidator, read_profile_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PSAMProfile:
    """A validated PSAM profile: ATR, protocol and the master keys (never in a repr)."""

    source: str
    description: str
    atr: bytes
    protocol: str
    master_keys: MasterKeys = field(repr=False)
    test_only: bool = False


def parse_psam_profile(data: Any, source: str = "<psam>") -> PSAMProfile:
    """Validate a PSAM profile's decoded JSON; :class:`ProfileError` naming the field otherwise."""
    check = ProfileValidator(source)
    obj = check.fields(data, "", {"kind", "description", "atr", "protocol", "master_keys", "test_only"}, {"test_only"})
    check.kind(obj, "psam")
    protocol = check.choice(obj["protocol"], "protocol", PROTOCOLS)
    test_only = check.flag(obj.get("test_only", False), "test_only")
    try:
        keys = parse_master_keys(obj["master_keys"])
    except KeyFormatError as err:
        raise ProfileError(f"{source}: {err}") from None
    return PSAMProfile(source, check.string(obj["description"], "description"), check.atr(obj["atr"], protocol),
                       protocol, keys, test_only)


def load_psam_profile(name_or_path: str | Path) -> PSAMProfile:
    """Read and validate a PSAM profile by bundled name (``psam``) or path."""
    path = locate(name_or_path)
    return parse_psam_profile(read_profile_file(path), path.name)


@dataclass
class _Session:
    """What DES INIT readied: the diversified key, its use, and the card challenge for a MAC."""

    algorithm: Algorithm
    usage: KeyUsage
    key: bytes = field(repr=False)
    challenge: bytes | None


class PSAMCard(CardOS):
    """The virtual PSAM (implements ``SimulatedCard``); the readied key is volatile."""

    label = "virtual PSAM"

    def __init__(self, profile: PSAMProfile, random: RandomSource = os.urandom) -> None:
        self.profile = profile
        super().__init__(profile.atr, profile.protocol, random)
        self.handlers.update({
            0x1A: (CLA_PROPRIETARY, self._des_init),
            0xFA: (CLA_PROPRIETARY, self._des_crypt),
        })

    def _clear_volatile(self) -> None:
        super()._clear_volatile()
        self._session: _Session | None = None

    def _des_init(self, command: Command) -> Reply:
        """DES INIT ``80 1A usage version Lc D [|| challenge]`` (PBOC PSAM; convention in the module doc)."""
        self._session = None
        usage = KeyUsage.by_code(command.p1)
        algorithm = PSAM_KEY_VERSIONS.get(command.p2)
        if usage is None or algorithm is None or (algorithm, usage) not in self.profile.master_keys:
            raise CardStatus(SW.KEY_NOT_FOUND)
        d_length = DIVERSIFICATION_DATA_LENGTH
        if command.le is not None or not d_length <= len(command.data) <= d_length + algorithm.block_size:
            raise CardStatus(SW.WRONG_LENGTH)
        challenge = command.data[d_length:] or None
        if (challenge is not None) != usage.for_mac:
            raise CardStatus(SW.CONDITIONS)  # MAC keys need the challenge, authentication keys take none
        key = diversify(self.profile.master_keys[(algorithm, usage)], command.data[:d_length], algorithm)
        self._session = _Session(algorithm, usage, key, challenge)
        return b"", SW.OK

    def _des_crypt(self, command: Command) -> Reply:
        """DES CRYPT ``80 FA mode 00 Lc data Le``: mode 00 encrypt, 05 MAC (convention in the module doc)."""
        if command.p2 != 0x00 or command.p1 not in (PSAM_MODE_ENCRYPT, PSAM_MODE_MAC):
            raise CardStatus(SW.WRONG_P1P2)
        session = self._session
        if session is None or (command.p1 == PSAM_MODE_MAC) != session.usage.for_mac:
            raise CardStatus(SW.CONDITIONS)
        if not command.data:
            raise CardStatus(SW.WRONG_LENGTH)
        if command.p1 == PSAM_MODE_ENCRYPT:
            if len(command.data) % session.algorithm.block_size:
                raise CardStatus(SW.WRONG_LENGTH)
            return session.algorithm.encrypt_block(session.key, command.data), SW.OK
        if session.challenge is None:  # cannot happen: DES INIT gives MAC keys a challenge
            raise CardStatus(SW.CONDITIONS)
        return session_mac(session.key, session.challenge, command.data, session.algorithm), SW.OK
