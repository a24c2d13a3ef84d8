"""Key stores: where the terminal's master keys are and what computes with them, never handing a key
out; and :class:`CardKeyRef`, which of them a card's keys derive from.

Primitives (ciphers, diversification, MACs) are in :mod:`apdu.crypto`; the key usages and key-file
format in :mod:`apdu.keyset`; the protocols that use a key store in :mod:`terminal.cardsecurity`.
Key ids and MAC inputs are the project convention of docs/card-profile.md, "Keys and security".

Two key stores hold the master keys and compute with keys diversified for one card:

- :class:`SoftwareKeyStore`: master keys in a JSON file of the terminal's user, readable by that user
  only, in a folder no one else can write (anything else is refused:
  :func:`terminal.private.read_private_file`), or the bundled TEST keys, which say so;
- :class:`PSAMKeyStore`: a PSAM in another reader slot does the crypto; the keys never leave it.

The platform's key service is a third (:class:`terminal.remotekeys.RemoteKeyStore`);
:func:`open_key_store` opens the one a terminal is configured with.
Nothing here logs or puts in a message a key or the card identification code.
"""
from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sscard.apdu import commands
from sscard.apdu.command import Command
from sscard.apdu.crypto import Algorithm, diversification_data, diversify, session_mac
from sscard.apdu.errors import CardStatusError
from sscard.apdu.keyset import KeyFormatError, KeyUsage, MasterKeys, parse_master_keys, psam_key_version
from sscard.drivers.connection import CARD_TIMEOUT_S, Connection
from sscard.drivers.errors import CardResetError
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.errors import KeyStoreError
from sscard.terminal.private import read_private_file

if TYPE_CHECKING:
    from sscard.terminal.config import RemoteKeys

#: the bundled TEST key file (package data): public keys, for the simulator and development only
TEST_KEYS = "keys/test-keys.json"
KEY_FILE_KIND = "master-keys"
MAX_KEY_FILE_BYTES = 65536


@dataclass(frozen=True)
class CardKeyRef:
    """Which keys a card has: its algorithm and the diversification data from its identification code."""

    algorithm: Algorithm
    diversification: bytes

    @classmethod
    def for_card(cls, card_identification_code: str, spec_version: str) -> CardKeyRef:
        """From EF05 tags 01 and 03 (``apdu.crypto.diversification_data``; docs/crypto.md)."""
        algorithm = Algorithm.for_spec_version(spec_version)
        return cls(algorithm, diversification_data(bytes.fromhex(card_identification_code)))

    @classmethod
    def read(cls, card: SocialSecurityCard) -> CardKeyRef:
        """Read EF05 records 1 and 3 from the card and build the reference."""
        return cls.for_card(*card.card_key_data())

    def __repr__(self) -> str:  # the diversification data is part of the card identification code
        return f"CardKeyRef({self.algorithm.value})"


# --- key stores -------------------------------------------------------------------------------------

class KeyStore(ABC):
    """Computes with the master keys diversified for one card, never handing a key out.

    ``encrypt`` serves the authentication keys (a challenge, ECB), ``mac`` the MAC keys
    (``apdu.crypto.session_mac``); asking for the other use is refused, as a PSAM refuses it.
    """

    #: True when the keys are the public TEST keys (the CLI warns)
    test_only: bool = False
    #: where the keys are, for messages ("key file /etc/sscard/keys.json", "PSAM in Virtual PCD 00 01")
    description: str = "key store"

    @abstractmethod
    def encrypt(self, usage: KeyUsage, card: CardKeyRef, data: bytes) -> bytes:
        """ECB-encrypt ``data`` (whole blocks) with the card's diversified ``usage`` key."""

    @abstractmethod
    def mac(self, usage: KeyUsage, card: CardKeyRef, challenge: bytes, message: bytes) -> bytes:
        """The 4-byte MAC of ``message`` for a MAC-protected command, with the card's challenge."""

    def close(self) -> None:
        """Release what the key store holds (the PSAM's reader)."""

    @staticmethod
    def _check_use(usage: KeyUsage, for_mac: bool) -> None:
        if usage.for_mac != for_mac:
            raise KeyStoreError(f"The {usage.label} key cannot be used to {'MAC' if for_mac else 'encrypt'}")


class SoftwareKeyStore(KeyStore):
    """Master keys in memory, read from a key file (:meth:`from_file`) or the bundled TEST keys
    (:meth:`bundled_test_keys`). Format: ``{"kind": "master-keys", "test_only": bool,
    "master_keys": {"3DES": {usage: hex}, "SM4": {...}}}`` (docs/card-profile.md)."""

    def __init__(self, master_keys: MasterKeys, description: str, test_only: bool = False) -> None:
        self._keys = dict(master_keys)
        self.description = description
        self.test_only = test_only

    def __repr__(self) -> str:
        return f"SoftwareKeyStore({self.description})"

    def _card_key(self, usage: KeyUsage, card: CardKeyRef) -> bytes:
        master = self._keys.get((card.algorithm, usage))
        if master is None:
            raise KeyStoreError(f"The {self.description} has no {card.algorithm.value} {usage.label} key")
        return diversify(master, card.diversification, card.algorithm)

    def encrypt(self, usage: KeyUsage, card: CardKeyRef, data: bytes) -> bytes:
        self._check_use(usage, for_mac=False)
        return card.algorithm.encrypt_block(self._card_key(usage, card), data)

    def mac(self, usage: KeyUsage, card: CardKeyRef, challenge: bytes, message: bytes) -> bytes:
        self._check_use(usage, for_mac=True)
        return session_mac(self._card_key(usage, card), challenge, message, card.algorithm)

    @classmethod
    def from_file(cls, path: str | Path) -> SoftwareKeyStore:
        """Load a key file (docs/card-profile.md, "Key stores"; docs/security.md, "Stolen keys"): refused
        (KeyStoreError, exit 12) unless only its owner, the user running the terminal, can read it or
        put another file in its place (:func:`terminal.private.read_private_file`); then the content
        must be a well-formed master-key file."""
        raw = read_private_file(Path(path), "key file", MAX_KEY_FILE_BYTES, KeyStoreError)
        return cls._parse(raw, f"key file {path}")

    @classmethod
    def bundled_test_keys(cls) -> SoftwareKeyStore:
        """The TEST master keys shipped in fixtures/keys/test-keys.json (they are public: the file is in
        the repository, so no permission check applies). Development and the simulator only."""
        raw = (resources.files("sscard.fixtures") / TEST_KEYS).read_bytes()
        store = cls._parse(raw, "bundled TEST keys (fixtures/keys/test-keys.json)")
        if not store.test_only:
            raise KeyStoreError("The bundled key file is not marked test-only: refusing it")
        return store

    @classmethod
    def _parse(cls, raw: bytes, description: str) -> SoftwareKeyStore:
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise KeyStoreError(f"The {description} is too large to be a key file")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyStoreError(f"The {description} is not valid JSON") from None
        if not isinstance(data, dict) or data.get("kind") != KEY_FILE_KIND:
            raise KeyStoreError(f"The {description} is not a master key file (\"kind\": \"{KEY_FILE_KIND}\")")
        test_only = data.get("test_only", False)
        if not isinstance(test_only, bool):
            raise KeyStoreError(f"The {description}: test_only must be true or false")
        try:
            keys = parse_master_keys(data.get("master_keys"))
        except KeyFormatError as err:
            raise KeyStoreError(f"The {description}: {err}") from None
        return cls(keys, description, test_only)


class PSAMKeyStore(KeyStore):
    """A PSAM in another reader slot computes for the terminal (DES INIT, DES CRYPT; docs/card-profile.md
    "PSAM commands"). The PSAM's refusals become KeyStoreError; a removed PSAM stays CardRemovedError."""

    def __init__(self, connection: Connection, wait_s: float = CARD_TIMEOUT_S) -> None:
        self.connection = connection
        self.description = f"PSAM in {connection.name}"
        self.wait_s = wait_s
        #: a PSAM answers one command pair at a time, whichever thread (the service's readers) asks
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PSAMKeyStore({self.connection.name})"

    def _run(self, usage: KeyUsage, card: CardKeyRef, mode: int, data: bytes, challenge: bytes = b"") -> bytes:
        init = commands.psam_des_init(usage.code, psam_key_version(card.algorithm), card.diversification, challenge)
        # the MAC input of RELOAD PIN holds the new PIN: that DES CRYPT is kept out of traces
        crypt = commands.psam_des_crypt(mode, data, secret=usage is KeyUsage.PIN_RELOAD)
        if not self._lock.acquire(timeout=self.wait_s):
            raise KeyStoreError(f"The PSAM in {self.connection.name} is still busy with a command it has not "
                                "answered: take it out and insert it again")
        try:
            try:
                return self._pair(init, crypt, usage, card)
            except CardResetError:  # another program reset the PSAM: DES INIT again, once, is harmless
                self.connection.reconnect()
                try:
                    return self._pair(init, crypt, usage, card)
                except CardResetError as err:
                    raise KeyStoreError(f"The PSAM in {self.connection.name} keeps being reset by another "
                                        "program") from err
        finally:
            self._lock.release()

    def _pair(self, init: Command, crypt: Command, usage: KeyUsage, card: CardKeyRef) -> bytes:
        """DES INIT and DES CRYPT as one PC/SC transaction: no other program's DES INIT between them."""
        with self.connection.transaction():
            for command, what in ((init, "DES INIT"), (crypt, "DES CRYPT")):
                response = self.connection.transmit(command)
                try:
                    response.check()
                except CardStatusError as err:
                    raise KeyStoreError(
                        f"The PSAM refused {what} for the {card.algorithm.value} {usage.label} key "
                        f"(SW {err.sw:04X}): is it the right PSAM?"
                    ) from None
            return response.data

    def encrypt(self, usage: KeyUsage, card: CardKeyRef, data: bytes) -> bytes:
        self._check_use(usage, for_mac=False)
        out = self._run(usage, card, commands.PSAM_MODE_ENCRYPT, data)
        if len(out) != len(data):
            raise KeyStoreError(f"The PSAM answered {len(out)} bytes to encrypt {len(data)}")
        return out

    def mac(self, usage: KeyUsage, card: CardKeyRef, challenge: bytes, message: bytes) -> bytes:
        self._check_use(usage, for_mac=True)
        out = self._run(usage, card, commands.PSAM_MODE_MAC, message, challenge)
        if len(out) != commands.MAC_LENGTH:
            raise KeyStoreError(f"The PSAM answered a MAC of {len(out)} bytes")
        return out

    def close(self) -> None:
        self.connection.disconnect()


def _open_reader(spec: str) -> Connection:
    """The PSAM's reader, shared (the CLI passes its own ``connect``, which honours ``--exclusive``)."""
    from sscard.terminal.readers import open_connection

    return open_connection(spec)


@contextlib.contextmanager
def open_key_store(psam: str | None = None, key_file: str | Path | None = None, remote: RemoteKeys | None = None,
                   connect: Callable[[str], Connection] | None = None) -> Iterator[KeyStore]:
    """The key store a terminal is configured with: a PSAM reader spec (``sim:psam``, ``1``,
    ``"Virtual PCD 00 01"``), a key file, the platform's key service (``remote``:
    terminal/remotekeys.py), or, with none, the bundled TEST keys (``test_only``)."""
    if sum(bool(choice) for choice in (psam, key_file, remote)) > 1:
        raise KeyStoreError("Choose one key store: a PSAM, a key file or the remote security module")
    if remote:
        from sscard.terminal.gateway import load_credentials
        from sscard.terminal.remotekeys import RemoteKeyStore

        store: KeyStore = RemoteKeyStore(remote.url, load_credentials(remote.credentials, remote.institution)[0])
    elif psam:
        store = PSAMKeyStore((connect or _open_reader)(psam))
    elif key_file:
        store = SoftwareKeyStore.from_file(key_file)
    else:
        store = SoftwareKeyStore.bundled_test_keys()
    try:
        yield store
    finally:
        store.close()


__all__ = ["CardKeyRef", "KeyStore", "PSAMKeyStore", "SoftwareKeyStore", "open_key_store"]
