"""Responses, status words -> typed errors (apdu/response.py, apdu/status.py, each command's table in
apdu/commands.py) and the errors of apdu/errors.py, drivers/errors.py and terminal/errors.py."""
from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings, strategies as st

from sscard.apdu import commands, errors as e
from sscard.apdu.response import Response
from sscard.apdu.status import GENERAL, SW, Table, counter, error_for
from sscard.drivers import errors as d
from sscard.terminal import errors as t
from sscard.terminal.cli.exits import exit_code

H = bytes.fromhex


# --- the general table --------------------------------------------------------------------------

@pytest.mark.parametrize("sw", sorted(GENERAL), ids=lambda sw: f"{sw:04X}")
def test_every_table_entry_maps_to_its_class_and_message(sw):
    cls, text = GENERAL[sw]
    err = error_for(sw)
    assert type(err) is cls
    assert err.sw == sw
    assert text in str(err)
    assert f"{sw:04X}" in str(err)
    with pytest.raises(cls) as info:
        Response.status(sw).check()
    assert info.value.sw == sw and str(info.value) == str(err)


def test_table_classes_are_card_status_errors():
    for sw, (cls, text) in GENERAL.items():
        assert issubclass(cls, e.CardStatusError), f"{sw:04X}"
        assert text and text[0].isupper(), f"{sw:04X}: message should read as a sentence"


def test_table_does_not_shadow_transport_and_pin_words():
    """61xx/6Cxx are the Connection's; 63Cx is the command's; 9000 is success."""
    for sw in GENERAL:
        assert sw >> 8 not in (0x61, 0x6C) and counter(sw) is None and sw != SW.OK


def test_every_word_has_one_name():
    assert len({int(sw) for sw in SW}) == len(SW.__members__)
    assert all(name.isupper() for name in SW.__members__)


@pytest.mark.parametrize("sw, cls", [
    (0x6A82, e.FileNotFoundOnCardError),
    (0x6A83, e.RecordNotFoundError),
    (0x6982, e.SecurityStatusError),
    (0x6700, e.WrongLengthError),
    (0x6D00, e.InstructionNotSupportedError),
    (0x6E00, e.ClassNotSupportedError),
    (0x6988, e.WrongDataError),
    (0x6A86, e.WrongParametersError),
    (0x6985, e.ConditionsNotSatisfiedError),
    (0x6983, e.AuthenticationMethodBlockedError),
])
def test_well_known_iso_words(sw, cls):
    """ISO 7816-4 s5.1.3 tables 5-6: the words a terminal meets most."""
    assert type(error_for(sw)) is cls


def test_response_is_frozen_and_data_is_bytes():
    resp = Response(bytearray(b"\x01"), 0x90, 0)
    assert type(resp.data) is bytes
    with pytest.raises(AttributeError):
        resp.sw1 = 0x6A  # type: ignore[misc]


# --- each command's table first (apdu/commands.py) ------------------------------------------------

def test_63c2_to_verify_is_wrong_pin_with_two_tries_left():
    err = error_for(0x63C2, commands.VERIFY_SW)
    assert type(err) is e.WrongPINError
    assert err.tries_left == 2
    assert exit_code(err) == 6
    assert "2 tries left" in str(err) and "63C2" in str(err)


def test_63c1_says_one_try():
    err = error_for(0x63C1, commands.VERIFY_SW)
    assert err.tries_left == 1
    assert "1 try left" in str(err)


def test_63cf_is_fifteen_tries():
    assert error_for(0x63CF, commands.VERIFY_SW).tries_left == 15


@pytest.mark.parametrize("sw", [0x63C0, 0x6983])
@pytest.mark.parametrize("table", [commands.VERIFY_SW, commands.CHANGE_PIN_SW, commands.VERIFY_ON_PAD_SW])
def test_blocked_pin(sw, table):
    err = error_for(sw, table)
    assert type(err) is e.PINBlockedError
    assert not isinstance(err, e.WrongPINError)
    assert exit_code(err) == 7
    assert f"{sw:04X}" in str(err)
    assert "blocked" in str(err).lower()


def test_wrong_pin_raised_by_check():
    with pytest.raises(e.WrongPINError) as info:
        Response.from_bytes(H("63C2")).check(commands.VERIFY_SW)
    assert info.value.tries_left == 2


@pytest.mark.parametrize("sw, words", [(0x6400, "in time"), (0x6401, "cancelled")])
def test_the_pin_pads_own_words(sw, words):
    err = error_for(sw, commands.VERIFY_ON_PAD_SW)
    assert type(err) is e.PINEntryError and words in str(err) and exit_code(err) == 6
    assert type(error_for(sw, commands.VERIFY_SW)) is e.UnknownStatusError  # a card's VERIFY never says it


def test_external_authenticate_decodes_its_63cx_through_its_table():
    err = error_for(0x63C3, commands.EXTERNAL_AUTHENTICATE_SW)
    assert type(err) is e.TerminalAuthenticationError and "3 tries left" in str(err) and exit_code(err) == 8
    for sw in (0x63C0, 0x6983):
        blocked = error_for(sw, commands.EXTERNAL_AUTHENTICATE_SW)
        assert type(blocked) is e.AuthenticationMethodBlockedError and exit_code(blocked) == 8
    assert type(error_for(0x6A88, commands.EXTERNAL_AUTHENTICATE_SW)) is e.WrongDataError  # then the general table


def test_a_refused_mac_is_the_terminals_keys_once():
    for table in (commands.RELOAD_PIN_SW, commands.APPLICATION_UNBLOCK_SW):
        err = error_for(0x6988, table)
        assert type(err) is e.TerminalAuthenticationError and "keys" in str(err) and exit_code(err) == 8
    assert type(error_for(0x6988)) is e.WrongDataError  # to a command that is not MAC-protected


@pytest.mark.parametrize("sw", [0x63C2, 0x63C0, 0x6983])
def test_a_pin_answer_to_a_read_is_a_confused_card(sw):
    err = error_for(sw, commands.READ_SW)
    assert type(err) is e.CardStatusError and "PIN answer to a read" in str(err) and exit_code(err) == 5


def test_a_counter_no_table_expects_is_a_card_status_error_not_a_wrong_pin():
    err = error_for(0x63C2)
    assert type(err) is e.CardStatusError and exit_code(err) == 5 and "63C2" in str(err)


def test_a_table_is_looked_at_first_then_the_general_one():
    table = Table({SW.FILE_NOT_FOUND: (e.CardStatusError, "Not here")})
    assert str(error_for(0x6A82, table)) == "Not here (SW 6A82)"
    assert type(error_for(0x6A83, table)) is e.RecordNotFoundError
    assert type(error_for(0x9F12, table)) is e.UnknownStatusError


# --- unknown and transport words ----------------------------------------------------------------

@pytest.mark.parametrize("sw", [0x9F12, 0x6400, 0x6300, 0x9001, 0x0000, 0xFFFF])
def test_unknown_status_word(sw):
    err = error_for(sw)
    assert type(err) is e.UnknownStatusError
    assert f"{sw:04X}" in str(err)
    assert exit_code(err) == 5


def test_unknown_9f12_via_check():
    with pytest.raises(e.UnknownStatusError, match="9F12"):
        Response(b"", 0x9F, 0x12).check()


def test_6cxx_left_unhandled_is_wrong_length_with_the_length():
    assert type(error_for(0x6C10)) is e.WrongLengthError
    assert "16 bytes" in str(error_for(0x6C10))
    assert "256 bytes" in str(error_for(0x6C00))


def test_61xx_left_unhandled_is_a_card_status_error():
    err = error_for(0x6110)
    assert isinstance(err, e.CardStatusError) and "16 more bytes" in str(err)
    assert "256 more bytes" in str(error_for(0x6100))


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 0xFFFF))
def test_every_status_word_is_success_or_a_card_status_error(sw):
    err = error_for(sw)
    if sw == SW.OK:
        assert err is None
    else:
        assert isinstance(err, e.CardStatusError)
        assert err.sw == sw and f"{sw:04X}" in str(err)


# --- Response -----------------------------------------------------------------------------------

def test_9000_is_ok_and_check_returns_self():
    resp = Response.from_bytes(H("01029000"))
    assert resp.ok and resp.sw == 0x9000
    assert resp.data == H("0102")
    assert resp.check() is resp
    assert error_for(0x9000) is None


@pytest.mark.parametrize("raw", ["", "90"])
def test_response_shorter_than_a_status_word_is_rejected(raw):
    with pytest.raises(e.APDUFormatError):
        Response.from_bytes(H(raw))


def test_response_from_bytes_and_back():
    raw = H("0110330300D15600000599110145FFFFFFFF9000")  # docs/reference/card.md, READ RECORD 1 of EF05
    resp = Response.from_bytes(raw)
    assert resp.data == raw[:-2] and (resp.sw1, resp.sw2) == (0x90, 0x00)
    assert resp.to_bytes() == raw
    assert str(resp) == raw.hex(" ").upper()


def test_response_status_builder():
    resp = Response.status(0x6A82, b"\x01")
    assert (resp.sw1, resp.sw2, resp.data) == (0x6A, 0x82, b"\x01")
    assert not resp.ok


@pytest.mark.parametrize("sw1, sw2", [(0x100, 0), (0, -1), ("90", 0)])
def test_response_rejects_bad_status_bytes(sw1, sw2):
    with pytest.raises(e.APDUFormatError):
        Response(b"", sw1, sw2)


def test_response_is_frozen_and_data_is_bytes():
    resp = Response(bytearray(b"\x01"), 0x90, 0)
    assert type(resp.data) is bytes
    with pytest.raises(AttributeError):
        resp.sw1 = 0x6A  # type: ignore[misc]


# --- the hierarchy and exit codes ---------------------------------------------------------------

ALL_ERRORS = [cls for module in (e, d, t) for _, cls in inspect.getmembers(module, inspect.isclass)
              if issubclass(cls, e.SSCardError) and cls.__module__ == module.__name__]


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_has_a_message_and_an_exit_code(cls):
    err = cls(0x63C3) if issubclass(cls, e.CardStatusError) else cls()
    assert str(err) and not str(err).startswith(("<", "None"))
    assert 1 <= exit_code(err) <= 125
    assert not hasattr(err, "exit_code")  # the CLI's table says it (terminal/cli/exits.py), not the class


@pytest.mark.parametrize("cls, code", [
    (e.SSCardError, 1),
    (d.ReaderError, 3), (d.ServiceNotRunningError, 3), (d.NoReaderError, 3),
    (d.NoCardError, 4), (d.CardRemovedError, 4), (d.TransportError, 4), (d.CardUnresponsiveError, 4),
    (e.MalformedError, 5), (e.APDUFormatError, 5), (e.TLVError, 5), (e.CardDataError, 5),
    (e.CardStatusError, 5), (e.UnknownStatusError, 5),
    (e.WrongPINError, 6), (e.PINBlockedError, 7), (t.CardAuthenticationError, 8),
])
def test_exit_codes(cls, code):
    assert exit_code(cls) == code


def test_hierarchy():
    assert issubclass(e.TLVError, e.MalformedError) and issubclass(e.APDUFormatError, e.MalformedError)
    assert issubclass(e.MalformedError, ValueError)
    assert issubclass(d.CardRemovedError, d.NoCardError)
    assert issubclass(e.PINBlockedError, e.CardStatusError)
    assert issubclass(e.WrongPINError, e.CardStatusError)


def test_default_message_is_first_docstring_line():
    assert str(d.CardRemovedError()).startswith("The card was removed during the operation")
    assert str(e.CardStatusError(0x6F00)) == "The card refused the command. (SW 6F00)"
    assert str(d.TransportError("boom")) == "boom"


# --- mask() -------------------------------------------------------------------------------------

def test_mask_id_number_keeps_only_the_ends():
    idn = "11010119900307123X"
    masked = e.mask(idn)
    assert masked == "1101" + "*" * 12 + "3X"
    assert len(masked) == len(idn)
    assert "19900307" not in masked and "0101199003071" not in masked


def test_mask_card_number():
    assert e.mask("A12345678") == "A123***78"


@pytest.mark.parametrize("text", ["", "1", "123456"])
def test_mask_short_text_is_fully_masked(text):
    assert e.mask(text) == "*" * len(text)


def test_mask_custom_ends():
    assert e.mask("6217000010000000123", keep_start=6, keep_end=4) == "621700" + "*" * 9 + "0123"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789X", min_size=7, max_size=30))
def test_mask_never_reveals_the_middle(text):
    masked = e.mask(text)
    assert len(masked) == len(text)
    assert masked[:4] == text[:4] and masked[-2:] == text[-2:]
    assert set(masked[4:-2]) == {"*"}
