"""PIN pad readers (PC/SC part 10 FEATURE_VERIFY_PIN_DIRECT, apdu/part10.py): where the reader has a
keypad the holder types the PIN there and the terminal never sees it; tested with the in-memory PIN
pad reader (drivers/pinpad.py) and the counter flows."""
from __future__ import annotations

import pytest
from flowing import PINS, platform, site  # noqa: F401  (fixtures)

from sscard.apdu import part10
from sscard.apdu.errors import MalformedError, PINBlockedError, PINEntryError, WrongPINError
from sscard.drivers.pinpad import CANCEL, TIMEOUT, PinPadConnection
from sscard.drivers.simulator import load_card
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.flows.common import ScriptedClerk
from sscard.terminal.flows.desk import register


def test_the_structure_a_reader_reads_is_the_one_the_terminal_wrote():
    request = part10.parse_verify_pin_structure(part10.verify_pin_structure(0x00, 0x20, 0x00, 0x00))
    assert (request.min_digits, request.max_digits, request.template[:5]) == (6, 6, bytes.fromhex("0020000003"))
    assert request.format_string & 0x03 == 0x01 and request.block_string & 0x0F == 3  # BCD, 3 bytes
    assert part10.parse_features(bytes.fromhex("0604 42330006 0A04 42330012".replace(" ", ""))) == {
        0x06: 0x42330006, 0x0A: 0x42330012}
    for broken in (bytes.fromhex("0604423300"), bytes.fromhex("0603423300")):
        with pytest.raises(MalformedError):
            part10.parse_features(broken)


def test_the_pin_is_typed_on_the_keypad_and_never_passes_through_the_terminal():
    connection = PinPadConnection(load_card("adult"), typed=[PINS["adult"]])
    card = SocialSecurityCard(connection)
    assert card.has_pin_pad()
    card.verify_pin_on_pad()
    assert connection.security_raised and connection.typed == []
    assert card.pin_tries_left() is None  # verified


def test_a_wrong_pin_cancel_and_timeout_at_the_keypad():
    card = SocialSecurityCard(PinPadConnection(load_card("adult"), typed=["000000", CANCEL, TIMEOUT]))
    with pytest.raises(WrongPINError) as wrong:
        card.verify_pin_on_pad()
    assert wrong.value.tries_left == 2
    for words in ("cancelled", "in time"):
        with pytest.raises(PINEntryError, match=words) as err:
            card.verify_pin_on_pad()
        assert exit_code(err.value) == 6
    assert card.pin_tries_left() == 2  # cancel and timeout spent no try


def test_a_registration_at_a_pin_pad_asks_the_clerk_for_no_pin(site):
    clerk = ScriptedClerk()  # no PIN given: asking the clerk would be refused
    connection = PinPadConnection(load_card("adult"), typed=["111111", PINS["adult"]])
    result = register(connection, site, "outpatient", "内科", clerk)
    assert result.mdtrt_id and any("keypad" in line for line in clerk.said)
    assert any("Wrong PIN: 2 tries left" in line for line in clerk.said)  # asked again at the keypad


def test_a_cancelled_pin_entry_records_nothing(site):
    connection = PinPadConnection(load_card("adult"), typed=[CANCEL])
    with pytest.raises(PINEntryError):
        register(connection, site, "outpatient", "内科", ScriptedClerk())
    assert site.outbox.counts()["pending"] == 0 and site.outbox.records() == []


def test_a_blocked_pin_is_said_before_the_keypad_is_asked():
    connection = PinPadConnection(load_card("blocked-pin"), typed=["123456"])
    with pytest.raises(PINBlockedError):
        from sscard.terminal.flows.common import verify_holder_pin

        class At:
            card = SocialSecurityCard(connection)

        verify_holder_pin(At, ScriptedClerk())  # type: ignore[arg-type]
    assert connection.requests == []  # the holder was not asked to type anything
