"""The terminal's side of the card's security protocols: the genuine-card check (internal
authentication), external authentication, and the MAC-protected PIN reload and application unblock.

Each computes with a key store (:mod:`terminal.keystore`) and sends the APDUs of
:class:`terminal.card.SocialSecurityCard`. Protocols, key ids and MAC inputs are the project
convention of docs/card-profile.md, "Keys and security"; the card's side is the simulator's
drivers/simulator/ssc_security.py.

Nothing here logs or puts in a message a key, a PIN or the card identification code.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

from sscard.apdu import commands
from sscard.apdu.crypto import constant_time_equal, wipe
from sscard.apdu.errors import CardStatusError
from sscard.apdu.keyset import KeyUsage
from sscard.apdu.pin import check_new_pin, pin_to_bcd
from sscard.drivers.errors import CardRemovedError, NoCardError, TransportError
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.errors import CardAuthenticationError, KeyStoreError
from sscard.terminal.keystore import CardKeyRef, KeyStore

log = logging.getLogger(__name__)


def check_genuine(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef | None = None,
                  random: Callable[[int], bytes] = os.urandom) -> CardKeyRef:
    """The genuine-card check: INTERNAL AUTHENTICATE with a fresh random, compared with what the key
    store computes (docs/card-profile.md, "Internal authentication"). Returns the card's key reference.

    Raises CardAuthenticationError ("The card failed authentication ...", exit 8) on a wrong
    cryptogram or when the card refuses the command; a removed card stays CardRemovedError. With the
    bundled TEST keys, a card that is not virtual (``Connection.virtual``) is refused first
    (KeyStoreError, exit 12): those keys are public, so a forged card would pass them.
    """
    refuse_test_keys_for_real_cards(card, store)
    return card.atomically(lambda: _internal_authentication(card, store, ref or CardKeyRef.read(card), random))


def _internal_authentication(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef,
                             random: Callable[[int], bytes]) -> CardKeyRef:
    challenge = random(ref.algorithm.block_size)
    answer = card_cryptogram(card, challenge)
    compare_cryptograms(answer, store.encrypt(KeyUsage.INTERNAL_AUTH, ref, challenge))
    log.info("internal authentication passed (%s, %s)", ref.algorithm.value, store.description)
    return ref


def card_cryptogram(card: SocialSecurityCard, challenge: bytes) -> bytes:
    """The card's INTERNAL AUTHENTICATE answer to ``challenge``; a card that refuses the command is
    CardAuthenticationError (exit 8), a removed one stays CardRemovedError."""
    try:
        return card.internal_authenticate(KeyUsage.INTERNAL_AUTH.reference, challenge)
    except (CardRemovedError, NoCardError, TransportError):
        raise
    except CardStatusError as err:
        log.info("internal authentication refused by the card (SW %04X)", err.sw)
        raise CardAuthenticationError(
            f"The card failed authentication: it refused the internal authentication (SW {err.sw:04X}). "
            "It may be counterfeit. Do not accept it."
        ) from None


def compare_cryptograms(answer: bytes, expected: bytes) -> None:
    """The genuine-card check's verdict: CardAuthenticationError unless the card's cryptogram is the
    key store's (compared in constant time)."""
    if not constant_time_equal(answer, expected):
        log.info("internal authentication: the card's cryptogram is wrong")
        raise CardAuthenticationError()


def refuse_test_keys_for_real_cards(card: SocialSecurityCard, store: KeyStore) -> None:
    """Public TEST keys (bundled, or a key service that says it has them) vouch for virtual cards only:
    with a card in a real reader they prove nothing (a forged card passes them) and a real card's
    EXTERNAL AUTHENTICATE would spend one of its tries for good on their wrong cryptogram.
    KeyStoreError (exit 12) before anything is sent."""
    if store.test_only and not card.connection.virtual:
        raise KeyStoreError(
            f"This terminal uses TEST keys ({store.description}), which prove nothing about a card in a real "
            f"reader ({card.connection.name}): anyone can make a card that passes them. Configure the PSAM "
            '([keys] store = "psam:READER", --psam) or a key file ("file:PATH", --key-file).'
        )


def authenticate_terminal(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef) -> None:
    """External authentication: GET CHALLENGE, then EXTERNAL AUTHENTICATE with the challenge encrypted
    by the card's external-authentication key. The card then allows UPDATE RECORD until power down.
    Never with TEST keys on a real card (:func:`refuse_test_keys_for_real_cards`)."""
    refuse_test_keys_for_real_cards(card, store)

    def authenticate() -> None:
        challenge = card.get_challenge(ref.algorithm.block_size)
        cryptogram = store.encrypt(KeyUsage.EXTERNAL_AUTH, ref, challenge)
        card.external_authenticate(KeyUsage.EXTERNAL_AUTH.reference, cryptogram)

    card.atomically(authenticate)  # the challenge is ours until it is used
    log.info("external authentication passed")


def unlocker(store: KeyStore) -> Callable[[SocialSecurityCard, str, str], None]:
    """What ``SocialSecurityCard.read_identity`` calls for a third-generation card: external
    authentication with ``store``, the card's keys picked by the EF05 values the read has already."""
    return lambda card, code, spec_version: authenticate_terminal(card, store, CardKeyRef.for_card(code, spec_version))


def _mac_protected(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef, usage: KeyUsage,
                   message: bytes, send: Callable[[bytes], None]) -> None:
    """GET CHALLENGE, MAC ``message`` with the key store, ``send(mac)``; the card refusing the MAC is
    TerminalAuthenticationError (``commands.MAC_PROTECTED_SW``): the terminal's keys are not the card's."""
    def protected() -> None:  # one operation: the challenge is ours until the MAC'd command uses it
        challenge = card.get_challenge(ref.algorithm.block_size)
        send(store.mac(usage, ref, challenge, message))

    card.atomically(protected)


def reload_pin(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef, new_pin: str) -> None:
    """RELOAD PIN at a bank counter: set ``new_pin`` (weak PINs refused first) and reset the try
    counter, with a MAC from the PIN-reload key (docs/card-profile.md, "MAC-protected commands")."""
    check_new_pin(new_pin)
    block = bytearray(pin_to_bcd(new_pin))
    message = bytearray(commands.reload_pin_mac_input(bytes(block)))
    try:
        _mac_protected(card, store, ref, KeyUsage.PIN_RELOAD, bytes(message), lambda mac: card.reload_pin(bytes(block), mac))
    finally:
        wipe(block)
        wipe(message)
    log.info("PIN reloaded")


def unblock_application(card: SocialSecurityCard, store: KeyStore, ref: CardKeyRef) -> None:
    """APPLICATION UNBLOCK with a MAC from the application-maintenance key: activates the card."""
    _mac_protected(card, store, ref, KeyUsage.APP_MAINTENANCE, commands.application_unblock_mac_input(),
                   card.application_unblock)
    log.info("application unblocked")


__all__ = [
    "authenticate_terminal", "card_cryptogram", "check_genuine", "compare_cryptograms", "refuse_test_keys_for_real_cards",
    "reload_pin", "unblock_application", "unlocker",
]
