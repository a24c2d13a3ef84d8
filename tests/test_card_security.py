"""The terminal's security protocols end to end over the memory driver: terminal/cardsecurity.py and
terminal/card.py against the virtual SSC, with the software key store and the virtual PSAM.

Genuine cards pass the internal authentication, the counterfeit fails, a replayed answer fails because
every check uses a fresh random; external authentication and its counter; PIN verify, change and
reload (bad MAC, blocked PIN, weak PIN); application unblock.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sscard.apdu import commands
from sscard.apdu.errors import (
    AuthenticationMethodBlockedError,
    PINBlockedError,
    TerminalAuthenticationError,
    WrongPINError,
)
from sscard.apdu.keyset import KeyUsage
from sscard.apdu.pin import PINFormatError, WeakPINError
from sscard.drivers.errors import CardRemovedError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import SSCCard, bundled_names, load_card, load_profile
from sscard.drivers.simulator.base import WrappedCard
from sscard.drivers.simulator.profile import parse_profile
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import authenticate_terminal, check_genuine, reload_pin, unblock_application
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.errors import CardAuthenticationError, KeyStoreError
from sscard.terminal.keystore import CardKeyRef, KeyStore, PSAMKeyStore, SoftwareKeyStore

ROOT = Path(__file__).resolve().parents[1]
GENUINE = [name for name in bundled_names() if name != "counterfeit"]
NEW_PIN = "258036"


class Recording(MemoryConnection):
    """The memory driver, keeping every command APDU sent."""

    def __init__(self, card, **kw) -> None:
        super().__init__(card, **kw)
        self.sent: list[bytes] = []

    def _exchange(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return super()._exchange(apdu)


def session(name: str | SSCCard) -> SocialSecurityCard:
    chip = load_card(name) if isinstance(name, str) else name
    card = SocialSecurityCard(Recording(chip, name=f"sim:{name}"))
    card.select()
    return card


def software() -> KeyStore:
    return SoftwareKeyStore.bundled_test_keys()


def psam() -> KeyStore:
    return PSAMKeyStore(MemoryConnection(load_card("psam"), name="sim:psam"))


STORES = {"software": software, "psam": psam}


@pytest.fixture
def key_file_store(tmp_path) -> KeyStore:
    """The TEST master keys from a key file not marked test-only: what a site's own file looks like."""
    data = json.loads((Path(__file__).resolve().parents[1] / "fixtures/keys/test-keys.json").read_text())
    data["test_only"] = False
    path = tmp_path / "site-keys.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return SoftwareKeyStore.from_file(path)


@pytest.fixture
def wrong_keys(tmp_path) -> KeyStore:
    """A well-formed key file (mode 600) whose master keys are not the cards'."""
    data = json.loads((ROOT / "fixtures/keys/test-keys.json").read_text())
    for keys in data["master_keys"].values():
        for usage in keys:
            keys[usage] = os.urandom(16).hex()
    path = tmp_path / "other-keys.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return SoftwareKeyStore.from_file(path)


# --- internal authentication: the genuine-card check ---------------------------------------------

@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("name", GENUINE)
def test_genuine_cards_pass(name, store):
    card = session(name)
    ref = check_genuine(card, STORES[store]())
    assert ref.algorithm.value == load_profile(name).algorithm


@pytest.mark.parametrize("store", STORES)
def test_counterfeit_fails_with_exit_8(store):
    with pytest.raises(CardAuthenticationError) as err:
        check_genuine(session("counterfeit"), STORES[store]())
    assert "card failed authentication" in str(err.value) and exit_code(err.value) == 8


def test_the_test_keys_vouch_only_for_virtual_cards(key_file_store):
    """A card forged with the public TEST keys passes them: in a real reader they are refused outright,
    before any command, while a key file (or PSAM) checks the same card as usual."""
    card = session("adult")
    card.connection.virtual = False  # as PCSCConnection is for any reader but vsmartcard's "Virtual PCD"
    sent = len(card.connection.sent)
    with pytest.raises(KeyStoreError) as err:
        check_genuine(card, software())
    assert exit_code(err.value) == 12 and "TEST keys" in str(err.value) and "PSAM" in str(err.value)
    assert len(card.connection.sent) == sent  # nothing was asked of the card
    assert check_genuine(card, key_file_store).algorithm.value == "3DES"  # the same keys from a file: checked


def test_genuine_card_fails_against_other_keys(wrong_keys):
    with pytest.raises(CardAuthenticationError):
        check_genuine(session("adult"), wrong_keys)


class ReplayClone(WrappedCard):
    """A clone: the genuine card's data, and one INTERNAL AUTHENTICATE answer it recorded, replayed."""

    def __init__(self, data_source: SSCCard, recorded_answer: bytes) -> None:
        super().__init__(data_source)
        self.answer = recorded_answer

    def execute(self, apdu: bytes) -> bytes:
        if apdu[1] == 0x88:
            return self.answer + b"\x90\x00"
        return self.inner.execute(apdu)


def test_replayed_authentication_answer_fails():
    genuine = session("adult")
    old_random = bytes.fromhex("0102030405060708")
    recorded = genuine.internal_authenticate(KeyUsage.INTERNAL_AUTH.key_id, old_random)
    clone = session(ReplayClone(load_card("counterfeit"), recorded))
    # the recording is right for its random: a terminal repeating its random would be fooled
    check_genuine(clone, software(), random=lambda n: old_random)
    with pytest.raises(CardAuthenticationError):
        check_genuine(clone, software())  # a fresh random each time: refused


def test_every_check_sends_a_fresh_random():
    card = session("adult")
    for _ in range(3):
        check_genuine(card, software())
    randoms = [apdu[5:13] for apdu in card.connection.sent if apdu[1] == 0x88]
    assert len(randoms) == 3 and len(set(randoms)) == 3


def test_card_that_refuses_internal_authenticate_is_not_genuine():
    chip = load_card("adult")
    del chip.handlers[0x88]  # a card without the command answers 6D00
    with pytest.raises(CardAuthenticationError, match="refused the internal authentication .SW 6D00"):
        check_genuine(session(chip), software())


def test_card_removed_during_the_check_is_removal_not_counterfeit():
    card = SocialSecurityCard(MemoryConnection(load_card("adult"), remove_after=4))
    card.select()
    with pytest.raises(CardRemovedError):
        check_genuine(card, software())


# --- external authentication ---------------------------------------------------------------------

@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("name", ["adult", "other-region"])
def test_external_authentication_grants_update(name, store):
    chip = load_card(name)
    card = session(chip)
    ref = check_genuine(card, STORES[store]())
    conn = card.connection
    conn.transmit(commands.select_fid(0xEF05)).check()
    assert conn.transmit(commands.update_record(2, b"\x02\x014")).sw == 0x6982
    authenticate_terminal(card, STORES[store](), ref)
    assert chip.external_authenticated
    assert conn.transmit(commands.update_record(2, b"\x02\x014")).sw == 0x9000


def test_wrong_terminal_keys_count_down_then_block(wrong_keys):
    chip = load_card("adult")
    card = session(chip)
    ref = CardKeyRef.read(card)
    for left in (4, 3, 2, 1):
        with pytest.raises(TerminalAuthenticationError, match=f"{left} tr(y|ies) left") as err:
            authenticate_terminal(card, wrong_keys, ref)
        assert exit_code(err.value) == 8
    with pytest.raises(AuthenticationMethodBlockedError) as err:
        authenticate_terminal(card, wrong_keys, ref)
    assert exit_code(err.value) == 8 and "blocked" in str(err.value)
    with pytest.raises(AuthenticationMethodBlockedError):
        authenticate_terminal(card, software(), ref)  # even the right keys, now
    assert chip.pin_tries_left == 3


# --- PIN ----------------------------------------------------------------------------------------

PIN = load_profile("adult").pin.value


def test_verify_and_tries_left():
    card = session("adult")
    assert card.pin_tries_left() == 3
    with pytest.raises(WrongPINError) as err:
        card.verify_pin("999999")
    assert err.value.tries_left == 2 and exit_code(err.value) == 6
    card.verify_pin(PIN)
    assert card.pin_tries_left() is None  # verified


def test_change_pin_then_only_the_new_pin_works():
    card = session("adult")
    card.change_pin(PIN, NEW_PIN)
    card.verify_pin(NEW_PIN)
    with pytest.raises(WrongPINError):
        card.verify_pin(PIN)


def test_change_pin_with_a_wrong_current_pin_costs_a_try():
    chip = load_card("adult")
    card = session(chip)
    with pytest.raises(WrongPINError) as err:
        card.change_pin("999999", NEW_PIN)
    assert err.value.tries_left == 2
    card.verify_pin(PIN)  # unchanged


@pytest.mark.parametrize("weak", ["111111", "123456", "654321", "000000", "987654", "567890"])
def test_weak_new_pin_is_refused_before_anything_is_sent(weak):
    card = session("adult")
    sent = card.connection.apdu_count
    with pytest.raises(WeakPINError) as err:
        card.change_pin(PIN, weak)
    assert exit_code(err.value) == 11 and weak not in str(err.value)
    with pytest.raises(WeakPINError):
        reload_pin(card, software(), CardKeyRef.read(card), weak)
    assert card.connection.apdu_count == sent + 2  # only CardKeyRef.read's 2 READ RECORD (by SFI)


def test_new_pin_same_as_old_or_malformed_is_refused():
    card = session("adult")
    with pytest.raises(PINFormatError, match="differ"):
        card.change_pin(PIN, PIN)
    with pytest.raises(PINFormatError, match="digits"):
        card.change_pin(PIN, "13579a")


@pytest.mark.parametrize("length", [4, 5, 7, 8, 12])
def test_a_new_pin_not_6_digits_is_refused_before_anything_is_sent(length):
    new = "2580369147036"[:length]  # no run, not one digit: only the length is wrong
    card = session("adult")
    sent = card.connection.apdu_count
    with pytest.raises(PINFormatError, match="must be 6 digits") as err:
        card.change_pin(PIN, new)
    assert not isinstance(err.value, WeakPINError) and exit_code(err.value) == 11 and new not in str(err.value)
    with pytest.raises(PINFormatError, match="must be 6 digits"):
        reload_pin(card, software(), CardKeyRef.read(card), new)
    assert card.connection.apdu_count == sent + 2  # only CardKeyRef.read's 2 READ RECORD (by SFI)


def test_a_card_whose_pin_is_4_digits_still_verifies_and_changes_to_6():
    data = json.loads((ROOT / "fixtures" / "cards" / "adult.json").read_text(encoding="utf-8"))
    data["pin"]["value"] = "2580"  # a card may hold 4 to 12 digits: VERIFY takes what it holds
    card = session(SSCCard(parse_profile(data, "adult-4-digit-pin.json")))
    card.verify_pin("2580")
    card.change_pin("2580", NEW_PIN)
    card.verify_pin(NEW_PIN)


def test_change_pin_on_a_blocked_card():
    card = session("blocked-pin")
    with pytest.raises(PINBlockedError) as err:
        card.change_pin(load_profile("blocked-pin").pin.value, NEW_PIN)
    assert exit_code(err.value) == 7


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("name", ["blocked-pin", "other-region"])
def test_reload_pin_resets_a_blocked_pin(name, store):
    chip = load_card(name)
    card = session(chip)
    keys = STORES[store]()
    ref = check_genuine(card, keys)
    reload_pin(card, keys, ref, NEW_PIN)
    assert card.pin_tries_left() == chip.pin_max_tries
    card.verify_pin(NEW_PIN)


def test_reload_pin_with_the_wrong_keys_is_refused_and_the_pin_stays_blocked(wrong_keys):
    card = session("blocked-pin")
    ref = CardKeyRef.read(card)
    with pytest.raises(TerminalAuthenticationError, match="refused the MAC: this terminal.s keys .* .SW 6988") as err:
        reload_pin(card, wrong_keys, ref, NEW_PIN)
    assert exit_code(err.value) == 8
    with pytest.raises(PINBlockedError):
        card.verify_pin(NEW_PIN)


def test_reload_pin_of_a_counterfeit_is_refused():
    card = session("counterfeit")
    with pytest.raises(TerminalAuthenticationError):
        reload_pin(card, software(), CardKeyRef.read(card), NEW_PIN)


# --- application unblock --------------------------------------------------------------------------

@pytest.mark.parametrize("store", STORES)
def test_unblock_application_activates_the_card(store):
    card = session("not-activated")
    assert card.activated is False
    keys = STORES[store]()
    unblock_application(card, keys, check_genuine(card, keys))
    assert card.activated and card.select() is True


def test_unblock_with_wrong_keys_leaves_it_not_activated(wrong_keys):
    card = session("not-activated")
    with pytest.raises(TerminalAuthenticationError):
        unblock_application(card, wrong_keys, CardKeyRef.read(card))
    assert card.select() is False
