"""The virtual platform's key service: a remote security module for counters without a PSAM.

Hospital counters that have no PSAM read third-generation cards through a security module on the
network (the reader libraries' ``iReadCardBas_HSM_Step1`` / ``Step2``: the card's identification and
randoms go to the key service, its cryptograms come back; docs/card-profile.md, "Reading with a
remote security module"). Here the virtual platform plays that service, with the TEST master keys
of fixtures/keys/test-keys.json (so it vouches for the virtual cards only, and says ``test_only``):

- ``POST /api/keys/info`` ``{}`` -> ``{"test_only": true, "algorithms": ["3DES", "SM4"],
  "usages": ["internal_auth", "external_auth"]}``;
- ``POST /api/keys/encrypt`` ``{"usage": "internal_auth" | "external_auth", "algorithm": "3DES" | "SM4",
  "diversification": 16 hex (the card's diversification data), "data": one block in hex (16 or 32
  hex: the terminal's random, or the card's challenge)}`` -> ``{"cryptogram": hex}``: the data
  encrypted with the card's key of that usage (the master key diversified for the card, ECB; the
  same computation as a PSAM's DES INIT + DES CRYPT).

Signed like every platform request (gateway credentials, a nonce used once). Only the authentication
keys are served: a MAC for a PIN reload or an activation stays with a PSAM or a key file at the
counter. Not less powerful for that: whoever holds an institution's gateway credentials can have any
card's challenge encrypted with its external-authentication key, which opens the card's records to
UPDATE RECORD, and can relay a forged card's internal authentication. A real key service binds each
request to a card session, limits and logs them per institution; this virtual one does not (TEST keys,
virtual cards only). Bad requests answer 400 with what is wrong.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

from sscard.apdu.crypto import Algorithm, diversify
from sscard.apdu.keyset import KeyUsage, MasterKeys, parse_master_keys

#: the usages the service computes with (authentication only: module docstring)
SERVED = (KeyUsage.INTERNAL_AUTH, KeyUsage.EXTERNAL_AUTH)
TEST_KEYS = "keys/test-keys.json"


class KeyRequestError(ValueError):
    """A key-service request that is not one (the message says what is wrong)."""


class KeyService:
    """The TEST master keys behind ``/api/keys/*`` (module docstring)."""

    def __init__(self) -> None:
        data = json.loads((resources.files("sscard.fixtures") / TEST_KEYS).read_text(encoding="utf-8"))
        if data.get("test_only") is not True:
            raise ValueError("the bundled key file is not marked test-only")
        self._keys: MasterKeys = parse_master_keys(data["master_keys"])

    def info(self) -> dict[str, Any]:
        return {"test_only": True, "algorithms": sorted({algorithm.value for algorithm, _ in self._keys}),
                "usages": [usage.label for usage in SERVED]}

    def encrypt(self, request: Any) -> dict[str, str]:
        """The cryptogram for one request (module docstring); KeyRequestError when it is not one."""
        if not isinstance(request, dict) or set(request) != {"usage", "algorithm", "diversification", "data"}:
            raise KeyRequestError("a key request is {usage, algorithm, diversification, data}")
        usage = next((u for u in SERVED if u.label == request["usage"]), None)
        if usage is None:
            raise KeyRequestError(f"usage must be one of {', '.join(u.label for u in SERVED)}")
        try:
            algorithm = Algorithm(request["algorithm"])
        except ValueError:
            raise KeyRequestError("algorithm must be 3DES or SM4") from None
        diversification = _hex(request["diversification"], "diversification", (8,))
        data = _hex(request["data"], "data", (algorithm.block_size,))
        key = diversify(self._keys[(algorithm, usage)], diversification, algorithm)
        return {"cryptogram": algorithm.encrypt_block(key, data).hex().upper()}


def _hex(value: Any, name: str, sizes: tuple[int, ...]) -> bytes:
    if not isinstance(value, str) or len(value) > 64:
        raise KeyRequestError(f"{name} must be hex")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise KeyRequestError(f"{name} must be hex") from None
    if len(raw) not in sizes:
        raise KeyRequestError(f"{name} must be {' or '.join(str(2 * s) for s in sizes)} hex digits")
    return raw
