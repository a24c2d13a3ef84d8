"""Reading a card in two steps with the hospital's remote security module (the reader libraries'
``iReadCardBas_HSM_Step1`` / ``iReadCardBas_HSM_Step2``; docs/service.md, "Two steps with a remote
security module").

A counter without a PSAM whose hospital software talks to its own key service (an "encryption
machine" on the network) cannot let this terminal ask that service itself; the software carries the
questions and answers. HIS code calls ``iReadCardBas`` and, on -2201/-2202/-2203, falls back to:

1. ``Step1(iType)``: the card's region, the ATR's historical bytes, its algorithm, its card
   identification code and four randoms, each field followed by '|':
   ``region | historical bytes | algorithm | card identification code | random1 | random2 | random3 |
   random4 |``. The algorithm is ``01`` for 3DES (second-generation cards), ``03`` for SM4
   (third-generation) (**convention**: the public code shows ``03``; the other values are ours).
   ``random1 || random2`` is the terminal's random for the genuine-card check (INTERNAL
   AUTHENTICATE, already answered by the card and kept here); ``random3 || random4`` is the card's
   challenge (GET CHALLENGE) for a card that wants the terminal authenticated (spec 3.00), else both
   are empty. Each random is half a block (8 hex for 3DES, 16 for SM4).
2. The key service encrypts each pair with the card's key of that use (internal authentication,
   external authentication), the master key diversified by the card identification code
   (docs/crypto.md): one block each, 16 hex (3DES) or 32 hex (SM4).
3. ``Step2(pKey)``: ``pKey`` is the two answers, each followed by '|' (the second empty when Step1's
   randoms 3 and 4 were). The terminal compares the first with the card's own answer (a counterfeit
   card fails: -21), sends the second to the card (EXTERNAL AUTHENTICATE), reads the holder's data
   and answers iReadCardBas's 11 fields.

The card's session is held between the two steps (a challenge is good for the card session that
asked for it) for :data:`HELD_S` seconds at most; any other call on that reader ends it. The layout of
the fields is as public HIS code shows it; it is not confirmed by a specification text.
"""
from __future__ import annotations

import os
import string
import time
from collections.abc import Callable
from dataclasses import dataclass

from sscard.apdu.atr import historical_bytes
from sscard.apdu.catalogue import issuing_region
from sscard.apdu.crypto import Algorithm
from sscard.apdu.errors import CardDataError
from sscard.apdu.keyset import KeyUsage
from sscard.terminal.card import Identity, SocialSecurityCard, needs_terminal_authentication
from sscard.terminal.cardsecurity import card_cryptogram, compare_cryptograms
from sscard.terminal.convention import STEP1, STEP2, ConventionError
from sscard.terminal.keystore import CardKeyRef

#: how long Step1's card session waits for Step2
HELD_S = 60.0
#: Step1's algorithm field (module docstring)
ALGORITHM_CODES = {Algorithm.TDES: "01", Algorithm.SM4: "03"}


@dataclass
class HeldRead:
    """What Step1 leaves for Step2: the card's session, its keys, the card's answer to random1 ||
    random2 and its challenge (empty when it wants no external authentication)."""

    card: SocialSecurityCard
    code: str  # the card identification code Step1 read
    ref: CardKeyRef
    answer: bytes
    challenge: bytes
    out: str  # Step1's pOutInfo
    deadline: float

    def close(self) -> None:
        self.card.connection.disconnect()

    def __enter__(self) -> HeldRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def step1(card: SocialSecurityCard, *, random: Callable[[int], bytes] = os.urandom,
          clock: Callable[[], float] = time.monotonic) -> HeldRead:
    """Step1 on a selected card (module docstring): reads EF05's card identification code and spec
    version, asks the card's internal authentication and, for a 3.00 card, its challenge."""
    code, spec_version = card.card_key_data()
    ref = CardKeyRef.for_card(code, spec_version)
    block = ref.algorithm.block_size

    def ask() -> tuple[bytes, bytes, bytes]:
        ours = random(block)
        answer = card_cryptogram(card, ours)
        challenge = card.get_challenge(block) if needs_terminal_authentication(spec_version) else b""
        return ours, answer, challenge

    ours, answer, challenge = card.atomically(ask)
    fields = (issuing_region(code), historical_bytes(card.connection.atr).hex().upper(), ALGORITHM_CODES[ref.algorithm], code,
              *_halves(ours), *_halves(challenge))
    return HeldRead(card, code, ref, answer, challenge, "".join(f"{field}|" for field in fields), clock() + HELD_S)


def step2(held: HeldRead, p_key: str, *, clock: Callable[[], float] = time.monotonic) -> Identity:
    """Step2 (module docstring): the genuine-card verdict on the key service's first answer, external
    authentication with its second, then the identity read. ConventionError for a late or malformed
    ``pKey``; CardAuthenticationError (-21) for a card whose answer is not the key service's."""
    if clock() > held.deadline:
        raise ConventionError(f"{STEP2} came more than {HELD_S:g} s after {STEP1}: call {STEP1} again")
    internal, external = _answers(p_key, held.ref.algorithm.block_size, bool(held.challenge))
    compare_cryptograms(held.answer, internal)

    def unlock(card: SocialSecurityCard, code: str, spec_version: str) -> None:
        card.external_authenticate(KeyUsage.EXTERNAL_AUTH.reference, external)

    identity = held.card.read_identity(unlock)
    if identity.card_identification_code != held.code:  # cannot be, on one card session: said, not assumed
        raise CardDataError("The card read in Step2 is not the card of Step1")
    return identity


def _halves(block: bytes) -> tuple[str, str]:
    half = len(block) // 2
    return block[:half].hex().upper(), block[half:].hex().upper()


def _answers(p_key: str, block: int, external_needed: bool) -> tuple[bytes, bytes]:
    """pKey's two cryptograms (module docstring): the first one block, the second one block when the
    card asked for external authentication, else absent or empty."""
    fields = p_key.split("|")
    if fields and fields[-1] == "":
        fields.pop()  # each field is followed by '|'
    expected = "two cryptograms" if external_needed else "one cryptogram"
    shape = f"pKey is {expected} of {block * 2} hex digits, each followed by '|'"
    if not 1 <= len(fields) <= 2 or (external_needed and len(fields) != 2):
        raise ConventionError(shape)
    answers = []
    for field in fields:
        if len(field) not in (0, block * 2) or field.strip(string.hexdigits):
            raise ConventionError(shape)
        answers.append(bytes.fromhex(field))
    internal, external = answers[0], answers[1] if len(answers) == 2 else b""
    if not internal or (external_needed and not external) or (external and not external_needed):
        raise ConventionError(shape)
    return internal, external
