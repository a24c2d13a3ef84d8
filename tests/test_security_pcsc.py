"""Card security over the real PC/SC stack: the card in "Virtual PCD 00 00", the PSAM in
"Virtual PCD 00 01" (pcscd + vsmartcard-vpcd, our vpcd client running the simulators), through
drivers/pcsc.py exactly as on a terminal with two card slots."""
from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner
from leakcheck import id_leaks, leaks

from sscard.drivers import pcsc
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import check_genuine, reload_pin
from sscard.terminal.cli import main
from sscard.terminal.errors import CardAuthenticationError
from sscard.terminal.keystore import PSAMKeyStore, SoftwareKeyStore

pytestmark = pytest.mark.pcsc

READER0 = "Virtual PCD 00 00"
READER1 = "Virtual PCD 00 01"
NEW_PIN = "271828"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_genuine_card_passes_with_the_psam_in_the_second_slot(vpcd_card):
    vpcd_card("adult", slot=0)
    vpcd_card("psam", slot=1)
    with pcsc.connect(READER0) as card_conn, pcsc.connect(READER1) as psam_conn:
        card = SocialSecurityCard(card_conn)
        card.select()
        store = PSAMKeyStore(psam_conn)
        ref = check_genuine(card, store)
        check_genuine(card, SoftwareKeyStore.bundled_test_keys(), ref)
    assert ref.algorithm.value == "3DES"


def test_counterfeit_fails_over_pcscd(vpcd_card):
    vpcd_card("counterfeit", slot=0)
    vpcd_card("psam", slot=1)
    with pcsc.connect(READER0) as card_conn, pcsc.connect(READER1) as psam_conn:
        card = SocialSecurityCard(card_conn)
        card.select()
        with pytest.raises(CardAuthenticationError, match="card failed authentication"):
            check_genuine(card, PSAMKeyStore(psam_conn))


def test_sm4_card_pin_reload_over_pcscd(vpcd_card):
    vpcd_card("other-region", slot=0)
    vpcd_card("psam", slot=1)
    with pcsc.connect(READER0) as card_conn, pcsc.connect(READER1) as psam_conn:
        card = SocialSecurityCard(card_conn)
        card.select()
        store = PSAMKeyStore(psam_conn)
        ref = check_genuine(card, store)
        reload_pin(card, store, ref, NEW_PIN)
        card.verify_pin(NEW_PIN)


def test_cli_auth_and_reset_pin_over_two_vpcd_slots_leak_nothing(vpcd_card, caplog):
    vpcd_card("blocked-pin", slot=0)
    vpcd_card("psam", slot=1)
    with caplog.at_level(logging.DEBUG):
        auth = run("-v", "auth", "--reader", READER0, "--psam", READER1, "--terminal")
        reset = run("-v", "reset-pin", "--reader", READER0, "--psam", READER1, "--pin-stdin",
                    input=f"33030419780921256X\n{NEW_PIN}\n")
        verify = run("-v", "verify-pin", "--reader", READER0, "--pin-stdin", input=NEW_PIN + "\n")
    assert auth.exit_code == 0, auth.output
    assert f"PSAM in {READER1}" in auth.stdout
    assert reset.exit_code == 0, reset.output
    assert verify.exit_code == 0 and "PIN correct" in verify.stdout  # the card in pcscd's slot kept the new PIN
    text = auth.output + reset.output + verify.output + caplog.text
    assert f"{READER1} > 80 FA 05 00 [" in text
    assert leaks(text, [NEW_PIN, "135790"]) == []
    assert id_leaks(text) == []  # "33030419780921256X" among them, nor its birth date


def test_cli_counterfeit_over_pcscd_exit_8(vpcd_card):
    vpcd_card("counterfeit", slot=0)
    vpcd_card("psam", slot=1)
    result = run("auth", "--reader", READER0, "--psam", READER1)
    assert result.exit_code == 8 and "card failed authentication" in result.stderr
