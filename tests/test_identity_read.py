"""The identity read in as few commands as the card allows (terminal/card.py, "The identity read"):
SELECT with P2 0C and READ RECORD by SFI, 15 commands; the public readers' long form when a card
refuses the short ones; a strict T=0 chip (``strict:PROFILE``) that answers 6Cxx to Le 00."""
from __future__ import annotations

import pytest
from pcscd import LongFormOnly

from sscard.apdu import commands
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import unlocker
from sscard.terminal.keystore import SoftwareKeyStore


class Counting(MemoryConnection):
    def __init__(self, card) -> None:
        super().__init__(card)
        self.sent: list[bytes] = []

    def _exchange(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return super()._exchange(apdu)


def read(card) -> tuple[object, list[bytes]]:
    connection = Counting(card)
    identity = SocialSecurityCard(connection).read_identity(unlocker(SoftwareKeyStore.bundled_test_keys()))
    return identity, connection.sent


def test_fifteen_commands_on_a_card_that_takes_the_short_forms():
    identity, sent = read(load_card("adult"))
    assert len(sent) == 15
    assert sent[0][:4] == bytes.fromhex("00A4040C") and {a[3] for a in sent[1:]} == {0x2C, 0x34}  # SFI 5, SFI 6


def test_a_card_refusing_the_short_forms_is_read_the_long_way_with_the_same_result():
    short, _ = read(load_card("adult"))
    identity, sent = read(LongFormOnly(load_card("adult")))
    assert identity == short
    # SELECT P2 0C refused, SELECT P2 00 (+ GET RESPONSE on T=0), a READ by SFI refused, then
    # 2 x (SELECT by FID + 7 records): 20; a long-form card is asked each short form once only
    assert len(sent) == 20 and sent[1][:4] == bytes.fromhex("00A40400") and sent[4][:4] == bytes.fromhex("00A40000")


def test_a_strict_t0_chip_answers_6c_to_le_00_and_the_read_is_the_same():
    card = load_card("strict:adult")
    connection = MemoryConnection(card)
    connection.transmit(commands.select_ssc(fci=False))
    raw = card.execute(commands.read_record(1, sfi=5).to_bytes())
    assert raw[:1] == b"\x6c" and len(raw) == 2
    assert card.execute(commands.read_record(1, sfi=5, le=raw[1]).to_bytes())[-2:] == b"\x90\x00"
    identity, sent = read(load_card("strict:adult"))
    assert identity == read(load_card("adult"))[0] and len(sent) == 1 + 2 * 14  # each record asked twice
    card.power_down()
    assert card.execute(commands.select_ssc().to_bytes()) == b""  # powered down: mute


def test_strict_is_for_t0_cards():
    from sscard.drivers.errors import ProfileError

    with pytest.raises(ProfileError, match="T=0"):
        load_card("strict:other-region")


def test_a_third_generation_t1_card_in_fifteen_plus_its_authentication():
    _, sent = read(load_card("other-region"))
    assert len(sent) == 15 + 2  # + GET CHALLENGE, EXTERNAL AUTHENTICATE (the keys from the EF05 just read)
