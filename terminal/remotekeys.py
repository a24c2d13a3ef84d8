"""A remote security module as the terminal's key store (``[keys] store = "remote"``).

A counter without a PSAM still has to check that a card is genuine and, for a third-generation card,
authenticate itself before reading the holder's data. The reader libraries do it in two steps
(``iReadCardBas_HSM_Step1``: the card's identification and randoms out; the key service's
cryptograms in; ``Step2``: finish the read). Here the two steps are a key store like the others: its
cryptograms come from the platform's key service (central/keyservice.py; the virtual platform plays
it), asked over the same signed HTTP as every platform call, so every command that checks or
authenticates a card works with it unchanged:

- the genuine-card check sends the terminal's random (INTERNAL AUTHENTICATE) and compares the card's
  answer with the service's cryptogram of the same random;
- external authentication sends the service's cryptogram of the card's challenge (GET CHALLENGE).

MACs (a PIN reload, an activation) are not served: those change a card and stay with a PSAM or a key
file at the counter (KeyStoreError, exit 12, says so). The service says whether its keys are TEST keys
(the virtual platform's are): then, as with the bundled TEST keys, a card in a real reader is refused.
"""
from __future__ import annotations

from typing import Any

from sscard.apdu.keyset import KeyUsage
from sscard.message.envelope import Credentials
from sscard.terminal.errors import KeyStoreError
from sscard.terminal.keystore import CardKeyRef, KeyStore
from sscard.terminal.upload import CentralClient, CentralError

#: seconds one question to the key service may take
TIMEOUT_S = 10.0


class RemoteKeyStore(KeyStore):
    """The platform's key service at ``url`` (module docstring)."""

    def __init__(self, url: str, credentials: Credentials, timeout: float = TIMEOUT_S,
                 client: CentralClient | None = None) -> None:
        self.client = client or CentralClient(url, credentials=credentials, timeout=timeout)
        self.description = f"remote security module at {self.client.url}"
        info = self._ask("/api/keys/info", {})
        if not isinstance(info, dict) or not isinstance(info.get("test_only"), bool):
            raise KeyStoreError(f"The {self.description} did not say what keys it has")
        self.test_only = info["test_only"]

    def _ask(self, path: str, payload: dict[str, Any]) -> Any:
        try:
            return self.client.post(path, payload)
        except CentralError as err:
            raise KeyStoreError(f"The {self.description} cannot be asked: {err}") from None

    def encrypt(self, usage: KeyUsage, card: CardKeyRef, data: bytes) -> bytes:
        self._check_use(usage, for_mac=False)
        answer = self._ask("/api/keys/encrypt", {"usage": usage.label, "algorithm": card.algorithm.value,
                                                 "diversification": card.diversification.hex().upper(),
                                                 "data": data.hex().upper()})
        cryptogram = answer.get("cryptogram") if isinstance(answer, dict) else None
        try:
            raw = bytes.fromhex(cryptogram) if isinstance(cryptogram, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != len(data):
            raise KeyStoreError(f"The {self.description} answered no cryptogram ({str(answer)[:80]})")
        return raw

    def mac(self, usage: KeyUsage, card: CardKeyRef, challenge: bytes, message: bytes) -> bytes:
        raise KeyStoreError(f"The {self.description} authenticates cards only: the {usage.label} MAC (a PIN "
                            "reload or an activation) needs the PSAM or a key file at this counter")

    def close(self) -> None:
        self.client.close()
