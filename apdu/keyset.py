"""Key sets: which keys a social security card and a PSAM hold, and the JSON that names them.

Pure data, no I/O: the software key store (terminal/keystore.py), the simulated card
(drivers/simulator/profile.py) and the simulated PSAM (drivers/simulator/psam.py) all parse their
keys with :func:`parse_keys`, so one format and one set of checks serve all three.

Project convention (docs/card-profile.md, "Keys and security"): four keys per application, each
16 bytes, named by :class:`KeyUsage`. A PSAM or key file holds the *master* keys of each usage for
each algorithm; a card holds its own *diversified* keys (``apdu.crypto.card_key``) for its algorithm.
No function here puts key bytes into an error message.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from sscard.apdu.crypto import Algorithm

__all__ = [
    "PSAM_KEY_VERSIONS", "KeyFormatError", "KeyUsage", "MasterKeys", "parse_keys", "parse_master_keys",
    "psam_key_version",
]

_HEX32 = re.compile(r"^[0-9A-Fa-f]{32}$")


class KeyFormatError(ValueError):
    """A key set is malformed. The message names the field, never the key bytes.

    Plain ValueError: the caller wraps it in its own error (ProfileError, KeyStoreError).
    """


class KeyUsage(enum.Enum):
    """What a key is for (project convention, docs/card-profile.md "Keys and security").

    ``code`` is the PSAM DES INIT key usage (P1) byte; ``key_id`` the card's key reference in
    INTERNAL / EXTERNAL AUTHENTICATE P2 (None: the key is not referenced by an authentication).
    """

    INTERNAL_AUTH = ("internal_auth", 0x01, 0x01)
    EXTERNAL_AUTH = ("external_auth", 0x02, 0x04)
    PIN_RELOAD = ("pin_reload", 0x03, None)
    APP_MAINTENANCE = ("app_maintenance", 0x04, None)

    def __init__(self, label: str, code: int, key_id: int | None) -> None:
        self.label = label
        self.code = code
        self.key_id = key_id

    @property
    def reference(self) -> int:
        """The card's reference to this authentication key (INTERNAL / EXTERNAL AUTHENTICATE P2);
        ValueError for a key no authentication references."""
        if self.key_id is None:
            raise ValueError(f"the {self.label} key is not referenced by an authentication")
        return self.key_id

    @property
    def for_mac(self) -> bool:
        """True for keys that only compute MACs (PIN reload, application maintenance); the others
        only encrypt a challenge (authentication). A PSAM refuses the other use (convention)."""
        return self in (KeyUsage.PIN_RELOAD, KeyUsage.APP_MAINTENANCE)

    @classmethod
    def by_label(cls, label: str) -> KeyUsage:
        for usage in cls:
            if usage.label == label:
                return usage
        raise KeyFormatError(f"unknown key usage {label!r}")

    @classmethod
    def by_code(cls, code: int) -> KeyUsage | None:
        for usage in cls:
            if usage.code == code:
                return usage
        return None


#: master keys by (algorithm, usage)
MasterKeys = dict[tuple[Algorithm, KeyUsage], bytes]

#: PSAM DES INIT P2, the key version: the key set of one card generation (convention,
#: docs/card-profile.md "PSAM commands"): 02 the 3DES keys of 2nd-generation cards, 03 the SM4 keys
PSAM_KEY_VERSIONS = {0x02: Algorithm.TDES, 0x03: Algorithm.SM4}


def psam_key_version(algorithm: Algorithm) -> int:
    """The PSAM DES INIT P2 that selects ``algorithm``'s key set."""
    return next(version for version, alg in PSAM_KEY_VERSIONS.items() if alg is algorithm)


def parse_keys(obj: Any, algorithm: Algorithm, where: str = "keys") -> dict[KeyUsage, bytes]:
    """One algorithm's keys: ``{"internal_auth": "32 hex", ...}``, every usage present, nothing else.

    Checks each key is 16 bytes, and for 3DES that its halves differ (K1 = K2 is single DES).
    Raises :class:`KeyFormatError` naming ``where.usage``.
    """
    if not isinstance(obj, Mapping):
        raise KeyFormatError(f"{where}: must be a JSON object of keys by usage")
    labels = {usage.label for usage in KeyUsage}
    for name in obj:
        if name not in labels:
            raise KeyFormatError(f"{where}.{name}: unknown key usage (allowed: {', '.join(sorted(labels))})")
    out: dict[KeyUsage, bytes] = {}
    for usage in KeyUsage:
        value = obj.get(usage.label)
        path = f"{where}.{usage.label}"
        if value is None:
            raise KeyFormatError(f"{path}: missing field")
        if not isinstance(value, str) or not _HEX32.match(value.replace(" ", "")):
            raise KeyFormatError(f"{path}: must be 32 hex digits (a 16-byte key)")
        key = bytes.fromhex(value.replace(" ", ""))
        if algorithm is Algorithm.TDES and key[:8] == key[8:]:
            raise KeyFormatError(f"{path}: the two halves of a 3DES key must differ (K1 = K2 is single DES)")
        out[usage] = key
    return out


def parse_master_keys(obj: Any, where: str = "master_keys") -> MasterKeys:
    """Master keys for one or both algorithms: ``{"3DES": {usage: hex, ...}, "SM4": {...}}``."""
    if not isinstance(obj, Mapping) or not obj:
        raise KeyFormatError(f"{where}: must be a JSON object with \"3DES\" and/or \"SM4\"")
    out: MasterKeys = {}
    for name, keys in obj.items():
        try:
            algorithm = Algorithm(name)
        except ValueError:
            raise KeyFormatError(f"{where}.{name}: unknown algorithm (allowed: 3DES, SM4)") from None
        for usage, key in parse_keys(keys, algorithm, f"{where}.{name}").items():
            out[(algorithm, usage)] = key
    return out
