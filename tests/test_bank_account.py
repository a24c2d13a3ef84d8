"""The card's bank account (terminal/bankaccount.py, apdu/emv.py, the simulator's PBOC debit
application in drivers/simulator/pboc.py): `sscard read --bank`, masked 6+4 unless asked, read the
EMV way, and every way the card can answer wrong said in words."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from jsonschema_rules import violations

from sscard.apdu.emv import afl_from_processing_options, dol_data, parse_dol, track2_account
from sscard.apdu.errors import CardDataError, TLVError
from sscard.apdu.tlv import ber_encode
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.drivers.simulator.base import WrappedCard
from sscard.terminal.bankaccount import NoBankApplicationError
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code

PAN = json.loads(open("fixtures/cards/adult.json", encoding="utf-8").read())["bank"]["pan"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_read_bank_prints_the_account_masked_6_and_4():
    text = run("read", "--bank")
    assert text.exit_code == 0, text.output
    assert f"{PAN[:6]}{'*' * (len(PAN) - 10)}{PAN[-4:]}" in text.output and PAN not in text.output
    shown = json.loads(run("read", "--bank", "--json").stdout)
    assert shown == {"application": "debit", "aid": "A000000333010101", "label": "UnionPay Debit",
                     "account_number": PAN[:6] + "*" * (len(PAN) - 10) + PAN[-4:], "expiry": "2029-03"}
    assert violations(shown) == []
    assert json.loads(run("read", "--bank", "--json", "--show-account").stdout)["account_number"] == PAN


def test_the_account_number_stays_out_of_the_trace():
    traced = run("-v", "read", "--bank")
    assert traced.exit_code == 0
    pan_bytes = " ".join(f"{PAN}F"[i:i + 2] for i in range(0, 20, 2))
    assert pan_bytes not in traced.output and PAN not in traced.output.replace(PAN[:6] + "*", "")


def test_a_card_without_a_bank_application_is_exit_5_in_words():
    result = run("read", "--bank", "-r", "sim:minority")
    assert result.exit_code == 5 and "has no bank application" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args", [["read", "--show-account"], ["read", "--bank", "--redact"]])
def test_options_that_do_not_go_together_are_usage_errors(args):
    assert run(*args).exit_code == 2


def test_after_the_bank_account_the_social_security_application_is_read_as_before():
    card = SocialSecurityCard(MemoryConnection(load_card("adult")))
    assert card.read_bank_account().pan == PAN
    assert card.read_identity().name == "张伟" and card.pin_tries_left() == 3


class OtherAnswers(WrappedCard):
    """The virtual card, with some commands answered otherwise: {the command's first bytes: raw answer}."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        super().__init__(load_card("adult"))
        self.answers = answers
        self.asked: list[bytes] = []

    def execute(self, apdu: bytes) -> bytes:
        self.asked.append(bytes(apdu))
        for prefix, answer in self.answers.items():
            if bytes(apdu).startswith(prefix):
                return answer
        return super().execute(apdu)


OK = b"\x90\x00"
GPO = bytes.fromhex("80A80000")
RECORD_1 = bytes.fromhex("00B2010C")  # SFI 1 record 1: track 2
RECORD_2 = bytes.fromhex("00B20114")  # SFI 2 record 1: 5A, 5F24
SELECT_PSE = bytes.fromhex("00A404000E") + b"1PAY.SYS.DDF01"


def bank(answers: dict[bytes, bytes]) -> SocialSecurityCard:
    return SocialSecurityCard(MemoryConnection(OtherAnswers(answers)))


def test_format_1_processing_options_and_track_2_alone_are_read():
    format1 = ber_encode(0x80, bytes.fromhex("7C00" "08010100")) + OK  # AIP, then AFL: SFI 1 only
    account = bank({GPO: format1}).read_bank_account()
    assert (account.pan, account.expiry) == (PAN, "2029-03")  # from the track 2 data of SFI 1


@pytest.mark.parametrize(("answers", "words"), [
    ({GPO: bytes.fromhex("6F00") + OK}, "not in an EMV format"),
    ({GPO: ber_encode(0x77, ber_encode(0x82, b"\x7c\x00")) + OK}, "names no records"),
    ({GPO: ber_encode(0x80, bytes.fromhex("7C00" "F8010100")) + OK}, "cannot exist"),
    ({GPO: ber_encode(0x80, bytes.fromhex("7C00" "08010100")) + OK,
      RECORD_1: ber_encode(0x70, ber_encode(0x57, bytes.fromhex("1234"))) + OK}, "track 2 data is malformed"),
    ({RECORD_2: ber_encode(0x70, ber_encode(0x5A, bytes.fromhex("12AB"))) + OK}, "not digits"),
    ({RECORD_2: bytes.fromhex("7005") + OK}, "malformed"),
    ({RECORD_2: ber_encode(0x70, ber_encode(0x5F24, bytes.fromhex("291399"))) + OK,
      RECORD_1: ber_encode(0x70, b"") + OK}, "no account number"),
])
def test_wrong_emv_answers_are_card_data_errors_in_words(answers, words):
    with pytest.raises(CardDataError, match=words) as raised:
        bank(answers).read_bank_account()
    assert exit_code(raised.value) == 5


def test_a_card_without_a_pse_is_tried_by_aid():
    card = bank({SELECT_PSE: bytes.fromhex("6A82")})
    assert card.read_bank_account().pan == PAN
    assert sum(apdu.startswith(SELECT_PSE) for apdu in card.connection.card.asked) == 1


def test_no_application_at_all_is_no_bank_application():
    with pytest.raises(NoBankApplicationError):
        SocialSecurityCard(MemoryConnection(load_card("minority"))).read_bank_account()


def test_data_object_lists():
    assert parse_dol(bytes.fromhex("9F1A029F37049C01")) == [(0x9F1A, 2), (0x9F37, 4), (0x9C, 1)]
    assert dol_data(bytes.fromhex("9F1A029F02069F3704"), {0x9F1A: b"\x01\x56", 0x9F37: b"abcdef"}) \
        == b"\x01\x56" + bytes(6) + b"cdef"  # unknown: zeros; too long: its rightmost bytes
    for cut in (bytes.fromhex("9F"), bytes.fromhex("9F1A"), bytes.fromhex("9F1A029F")):
        with pytest.raises(TLVError):
            parse_dol(cut)
    assert afl_from_processing_options(bytes.fromhex("80067C0010020300"))[0].sfi == 2
    assert track2_account(bytes.fromhex("6217003303001234565D29032200000F")) == (PAN, "2903")
