"""Reading without a PSAM: the platform's key service as the terminal's key store
(terminal/remotekeys.py, central/keyservice.py), served by the virtual platform on a loopback port."""
from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner
from flowing import configs, platform, write_config  # noqa: F401  (fixtures)

from sscard.apdu.keyset import KeyUsage
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.message.envelope import Credentials, gateway_headers
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import check_genuine, unlocker
from sscard.terminal.cli import main
from sscard.terminal.errors import CardAuthenticationError, KeyStoreError
from sscard.terminal.gateway import test_credentials as credentials_of
from sscard.terminal.keystore import CardKeyRef, SoftwareKeyStore
from sscard.terminal.remotekeys import RemoteKeyStore

CLINIC = "H33030200001"


@pytest.fixture
def remote(platform):
    store = RemoteKeyStore(platform.url, credentials_of(CLINIC))
    yield store
    store.close()


@pytest.mark.parametrize("profile", ["adult", "other-region"])
def test_the_key_service_computes_what_the_key_file_computes(remote, profile):
    card = SocialSecurityCard(MemoryConnection(load_card(profile)))
    ref = CardKeyRef.read(card)
    local = SoftwareKeyStore.bundled_test_keys()
    for usage in (KeyUsage.INTERNAL_AUTH, KeyUsage.EXTERNAL_AUTH):
        block = bytes(range(ref.algorithm.block_size))
        assert remote.encrypt(usage, ref, block) == local.encrypt(usage, ref, block)
    assert remote.test_only and "remote security module" in remote.description


def test_a_genuine_card_passes_and_a_third_generation_card_is_read_through_it(remote):
    adult = SocialSecurityCard(MemoryConnection(load_card("adult")))
    check_genuine(adult, remote)
    with pytest.raises(CardAuthenticationError):
        check_genuine(SocialSecurityCard(MemoryConnection(load_card("counterfeit"))), remote)
    chen = SocialSecurityCard(MemoryConnection(load_card("other-region")))
    check_genuine(chen, remote)
    assert chen.read_identity(unlocker(remote)).social_security_number == "440304199007123447"


def test_macs_are_not_served_and_say_where_they_are(remote):
    ref = CardKeyRef.read(SocialSecurityCard(MemoryConnection(load_card("adult"))))
    with pytest.raises(KeyStoreError, match="needs the PSAM or a key file"):
        remote.mac(KeyUsage.PIN_RELOAD, ref, bytes(8), b"x")
    with pytest.raises(KeyStoreError):
        remote.encrypt(KeyUsage.PIN_RELOAD, ref, bytes(8))


def test_a_key_service_that_cannot_be_asked_is_a_key_store_error(platform):
    with pytest.raises(KeyStoreError, match="cannot be asked"):
        RemoteKeyStore("http://127.0.0.1:9", credentials_of(CLINIC), timeout=2)
    with pytest.raises(KeyStoreError, match="cannot be asked"):
        RemoteKeyStore(platform.url, Credentials(credentials_of(CLINIC).paasid, "0" * 32))


@pytest.mark.parametrize(("body", "words"), [
    ({"usage": "pin_reload", "algorithm": "3DES", "diversification": "00" * 8, "data": "00" * 8}, "usage"),
    ({"usage": "internal_auth", "algorithm": "AES", "diversification": "00" * 8, "data": "00" * 8}, "algorithm"),
    ({"usage": "internal_auth", "algorithm": "SM4", "diversification": "00" * 8, "data": "00" * 8}, "32 hex"),
    ({"usage": "internal_auth", "algorithm": "3DES", "diversification": "zz" * 8, "data": "00" * 8}, "hex"),
    ({"usage": "internal_auth"}, "a key request is"),
    ([1, 2], "a key request is"),
])
def test_the_key_service_refuses_what_is_not_a_key_request_in_words(platform, body, words):
    headers = {"Content-Type": "application/json", **gateway_headers(credentials_of(CLINIC))}
    answer = httpx.post(f"{platform.url}/api/keys/encrypt", content=json.dumps(body), headers=headers, timeout=5)
    assert answer.status_code == 400 and words in answer.text
    unsigned = httpx.post(f"{platform.url}/api/keys/encrypt", json=body, timeout=5)
    assert unsigned.status_code in (401, 403)


def test_a_counter_configured_with_the_remote_store_reads_and_registers_a_third_generation_card(configs):
    clinic = configs["clinic"]
    text = clinic.read_text(encoding="utf-8")
    clinic.write_text(text.replace('store = "psam:sim:psam"', 'store = "remote"'), encoding="utf-8")
    env = {"SSCARD_CONFIG": str(clinic)}
    read = CliRunner().invoke(main, ["read", "-r", "sim:other-region", "--json"], env=env)
    assert read.exit_code == 0, read.output
    assert json.loads(read.stdout)["name"] == "陈静" and "TEST keys" in read.stderr  # the service's are TEST keys
    registered = CliRunner().invoke(main, ["desk", "register", "-r", "sim:other-region", "--department", "急诊科",
                                           "--pin-stdin", "--json"], input="802613\n", env=env)
    assert registered.exit_code == 0, registered.output
    assert json.loads(registered.stdout)["cross_region"] is True
    # a bank counter's MAC'd commands are not the key service's: said before the card is changed
    refused = CliRunner().invoke(main, ["reset-pin", "-r", "sim:blocked-pin", "--pin-stdin"],
                                 input="33030419780921256X\n135790\n", env=env)
    assert refused.exit_code == 12 and "needs the PSAM or a key file" in refused.output
    tries = CliRunner().invoke(main, ["verify-pin", "-r", "sim:blocked-pin", "--pin-stdin"], input="135790\n")
    assert tries.exit_code == 7  # the card was not changed: still blocked
