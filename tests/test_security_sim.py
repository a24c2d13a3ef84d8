"""The virtual SSC's security commands and the virtual PSAM, APDU by APDU, over the memory driver.

INTERNAL / EXTERNAL AUTHENTICATE, UPDATE RECORD rights, RELOAD PIN and APPLICATION UNBLOCK MACs,
PSAM DES INIT / DES CRYPT; and the bundled key material: every genuine card's keys are the TEST
master keys diversified for its identification code, the counterfeit's are not, and the PSAM holds
the same master keys as the bundled key file (docs/card-profile.md, "Keys and security").
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sscard.apdu import commands
from sscard.apdu.command import Command
from sscard.apdu.crypto import Algorithm, card_key, diversification_data, session_mac
from sscard.apdu.keyset import KeyUsage, parse_master_keys, psam_key_version
from sscard.apdu.pin import pin_to_bcd
from sscard.drivers.errors import ProfileError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import PSAMCard, SSCCard, bundled_names, load_card, load_profile
from sscard.drivers.simulator.psam import parse_psam_profile

ROOT = Path(__file__).resolve().parents[1]
TEST_KEYS = parse_master_keys(json.loads((ROOT / "fixtures/keys/test-keys.json").read_text())["master_keys"])
IA, EA, PR, AM = KeyUsage.INTERNAL_AUTH, KeyUsage.EXTERNAL_AUTH, KeyUsage.PIN_RELOAD, KeyUsage.APP_MAINTENANCE


def connect(name: str) -> tuple[SSCCard, MemoryConnection]:
    card = load_card(name)
    conn = MemoryConnection(card)
    assert conn.transmit(commands.select_ssc()).sw in (0x9000, 0x6283)
    return card, conn


def cic(card: SSCCard) -> bytes:
    return bytes.fromhex(card.profile.card["card_identification_code"])


def mac_for(card: SSCCard, usage: KeyUsage, challenge: bytes, message: bytes) -> bytes:
    """What a terminal with the TEST master keys computes."""
    key = card_key(TEST_KEYS[(card.algorithm, usage)], cic(card), card.algorithm)
    return session_mac(key, challenge, message, card.algorithm)


# --- key material -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in bundled_names() if n != "counterfeit"])
def test_genuine_profiles_hold_the_test_master_keys_diversified(name):
    profile = load_profile(name)
    algorithm = Algorithm(profile.algorithm)
    code = bytes.fromhex(profile.card["card_identification_code"])
    for usage in KeyUsage:
        assert profile.keys[usage] == card_key(TEST_KEYS[(algorithm, usage)], code, algorithm), usage


def test_counterfeit_keys_are_not_derived_from_the_test_master_keys():
    profile = load_profile("counterfeit")
    code = bytes.fromhex(profile.card["card_identification_code"])
    for usage in KeyUsage:
        for algorithm in Algorithm:
            assert profile.keys[usage] != card_key(TEST_KEYS[(algorithm, usage)], code, algorithm)


def test_psam_holds_the_bundled_test_master_keys():
    psam = load_card("psam")
    assert isinstance(psam, PSAMCard) and psam.profile.test_only
    assert psam.profile.master_keys == TEST_KEYS
    assert "psam" not in bundled_names() and bundled_names("psam") == ["psam"]


def test_keys_never_show_in_reprs():
    profile, psam = load_profile("adult"), load_card("psam").profile
    for key in list(profile.keys.values()) + list(psam.master_keys.values()):
        assert key.hex() not in repr(profile).lower() and key.hex() not in repr(psam).lower()


def test_psam_profile_errors_name_the_field_not_the_key():
    data = json.loads((ROOT / "fixtures/cards/psam.json").read_text())
    data["master_keys"]["3DES"]["pin_reload"] = "0011"
    with pytest.raises(ProfileError, match=r"x.json: master_keys.3DES.pin_reload: must be 32 hex") as err:
        parse_psam_profile(data, "x.json")
    assert "0011" not in str(err.value)
    data["master_keys"] = {"AES": {}}
    with pytest.raises(ProfileError, match="unknown algorithm"):
        parse_psam_profile(data, "x.json")
    data["kind"] = "ssc"
    with pytest.raises(ProfileError, match="must be \"psam\""):
        parse_psam_profile(data, "x.json")


# --- INTERNAL AUTHENTICATE ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adult", "other-region", "not-activated"])
def test_internal_authenticate_encrypts_the_random_with_the_card_key(name):
    card, conn = connect(name)
    random = bytes(range(1, card.algorithm.block_size + 1))
    answer = conn.transmit(commands.internal_authenticate(IA.key_id, random)).check().data
    assert answer == card.algorithm.encrypt_block(card.profile.keys[IA], random)
    assert answer != random


@pytest.mark.parametrize("apdu,sw", [
    ("00 88 00 02 08 0102030405060708 08", 0x6A88),  # key id 02 is not a key
    ("00 88 01 01 08 0102030405060708 08", 0x6A86),
    ("00 88 00 01 04 01020304 04", 0x6700),  # not one 3DES block
])
def test_internal_authenticate_refusals(apdu, sw):
    card, _ = connect("adult")
    assert card.execute(bytes.fromhex(apdu.replace(" ", ""))) == sw.to_bytes(2, "big")


# --- EXTERNAL AUTHENTICATE and UPDATE RECORD ------------------------------------------------------

def external_auth(card: SSCCard, conn: MemoryConnection, right: bool = True) -> int:
    challenge = conn.transmit(commands.get_challenge(card.algorithm.block_size)).check().data
    key = card.profile.keys[EA] if right else bytes(16)
    return conn.transmit(commands.external_authenticate(EA.key_id, card.algorithm.encrypt_block(key, challenge))).sw


NEW_CARD_TYPE = bytes.fromhex("02 01 34")  # EF05 record 2, card type "4"


@pytest.mark.parametrize("name", ["adult", "other-region"])
def test_update_record_needs_external_authentication(name):
    card, conn = connect(name)
    assert conn.transmit(commands.select_fid(0xEF05)).sw == 0x9000
    assert conn.transmit(commands.update_record(2, NEW_CARD_TYPE)).sw == 0x6982
    assert external_auth(card, conn) == 0x9000 and card.external_authenticated
    assert conn.transmit(commands.update_record(2, NEW_CARD_TYPE)).sw == 0x9000
    assert conn.transmit(commands.read_record(2)).check().data == NEW_CARD_TYPE
    assert conn.transmit(commands.update_record(2, bytes.fromhex("03 01 34"))).sw == 0x6A80  # another tag
    assert conn.transmit(commands.update_record(9, bytes.fromhex("09 01 34"))).sw == 0x6A83
    card.power_down()
    card.power_up()  # the rights are volatile
    conn.transmit(commands.select_ssc())
    conn.transmit(commands.select_fid(0xEF05)).check()
    assert conn.transmit(commands.update_record(2, NEW_CARD_TYPE)).sw == 0x6982
    assert not card.external_authenticated


def test_external_authenticate_counts_down_its_own_counter_then_blocks():
    card, conn = connect("adult")
    answers = [external_auth(card, conn, right=False) for _ in range(card.external_auth_max_tries)]
    assert answers == [0x63C4, 0x63C3, 0x63C2, 0x63C1, 0x6983]
    assert external_auth(card, conn, right=True) == 0x6983  # blocked for good, even the right cryptogram
    assert card.pin_tries_left == 3  # the PIN counter is another counter
    assert not card.external_authenticated


def test_right_cryptogram_resets_the_counter():
    card, conn = connect("adult")
    assert external_auth(card, conn, right=False) == 0x63C4
    assert external_auth(card, conn) == 0x9000
    assert card.external_auth_tries_left == card.external_auth_max_tries


def test_a_challenge_serves_once_and_an_old_cryptogram_fails():
    card, conn = connect("adult")
    challenge = conn.transmit(commands.get_challenge(8)).check().data
    cryptogram = card.algorithm.encrypt_block(card.profile.keys[EA], challenge)
    assert conn.transmit(commands.external_authenticate(EA.key_id, cryptogram)).sw == 0x9000
    assert card.last_challenge is None
    assert conn.transmit(commands.external_authenticate(EA.key_id, cryptogram)).sw == 0x6985  # no challenge
    conn.transmit(commands.get_challenge(8)).check()
    assert conn.transmit(commands.external_authenticate(EA.key_id, cryptogram)).sw == 0x63C4  # replayed


def test_external_authenticate_with_a_challenge_of_the_wrong_size():
    card, conn = connect("adult")
    conn.transmit(commands.get_challenge(16)).check()  # 3DES card: the cryptogram is one 8-byte block
    assert conn.transmit(commands.external_authenticate(EA.key_id, bytes(8))).sw == 0x6985
    assert conn.transmit(commands.external_authenticate(0x0A, bytes(8))).sw == 0x6A88


# --- RELOAD PIN, APPLICATION UNBLOCK --------------------------------------------------------------

def reload(card: SSCCard, conn: MemoryConnection, pin: str, tamper: int = 0) -> int:
    challenge = conn.transmit(commands.get_challenge(card.algorithm.block_size)).check().data
    bcd = pin_to_bcd(pin)
    mac = mac_for(card, PR, challenge, commands.reload_pin_mac_input(bcd))
    mac = (int.from_bytes(mac, "big") ^ tamper).to_bytes(4, "big")
    return conn.transmit(commands.reload_pin(bcd, mac)).sw


@pytest.mark.parametrize("name", ["blocked-pin", "other-region"])
def test_reload_pin_sets_the_pin_and_unblocks_it(name):
    card, conn = connect(name)
    assert reload(card, conn, "135790") == 0x9000
    assert card.pin_tries_left == card.pin_max_tries and not card.pin_verified
    assert conn.transmit(commands.verify(pin_to_bcd("135790"))).sw == 0x9000


def test_reload_pin_with_a_bad_mac_is_refused_and_changes_nothing():
    card, conn = connect("blocked-pin")
    assert reload(card, conn, "135790", tamper=1) == 0x6988
    assert card.pin_tries_left == 0
    assert conn.transmit(commands.verify(pin_to_bcd("135790"))).sw == 0x6983


def test_reload_pin_cannot_be_replayed():
    card, conn = connect("adult")
    challenge = conn.transmit(commands.get_challenge(8)).check().data
    bcd = pin_to_bcd("135790")
    command = commands.reload_pin(bcd, mac_for(card, PR, challenge, commands.reload_pin_mac_input(bcd)))
    assert conn.transmit(command).sw == 0x9000
    assert conn.transmit(command).sw == 0x6985  # the challenge is used up
    conn.transmit(commands.get_challenge(8)).check()
    assert conn.transmit(command).sw == 0x6988  # a fresh challenge: the old MAC is wrong


def test_reload_pin_mac_of_another_key_is_refused():
    card, conn = connect("adult")
    challenge = conn.transmit(commands.get_challenge(8)).check().data
    bcd = pin_to_bcd("135790")
    mac = mac_for(card, AM, challenge, commands.reload_pin_mac_input(bcd))  # the maintenance key
    assert conn.transmit(commands.reload_pin(bcd, mac)).sw == 0x6988


@pytest.mark.parametrize("apdu,sw", [
    ("80 5E 00 00 05 12 01020304", 0x6700),  # PIN block of 1 byte
    ("80 5E 00 00 04 01020304", 0x6700),  # no PIN at all
    ("80 5E 00 01 07 123456 01020304", 0x6A86),
])
def test_reload_pin_refusals(apdu, sw):
    card, conn = connect("adult")
    conn.transmit(commands.get_challenge(8)).check()
    assert card.execute(bytes.fromhex(apdu.replace(" ", ""))) == sw.to_bytes(2, "big")


@pytest.mark.parametrize("name", ["not-activated", "adult"])
def test_application_unblock_activates(name):
    card, conn = connect(name)
    assert conn.transmit(commands.application_unblock(bytes(4))).sw == 0x6985  # no challenge
    conn.transmit(commands.get_challenge(card.algorithm.block_size)).check()
    assert conn.transmit(commands.application_unblock(bytes(4))).sw == 0x6988
    assert card.activated == (name == "adult")
    challenge = conn.transmit(commands.get_challenge(card.algorithm.block_size)).check().data
    mac = mac_for(card, AM, challenge, commands.application_unblock_mac_input())
    assert conn.transmit(commands.application_unblock(mac)).sw == 0x9000
    assert card.activated and conn.transmit(commands.select_ssc()).sw == 0x9000


# --- the PSAM -----------------------------------------------------------------------------------

@pytest.fixture
def psam() -> MemoryConnection:
    return MemoryConnection(load_card("psam"))


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("usage", [IA, EA])
def test_psam_encrypts_with_the_diversified_key(psam, algorithm, usage):
    d = diversification_data(bytes.fromhex("330300D15600000501234567FFFFFFFF"))
    data = bytes(range(algorithm.block_size))
    assert psam.transmit(commands.psam_des_init(usage.code, psam_key_version(algorithm), d)).sw == 0x9000
    out = psam.transmit(commands.psam_des_crypt(commands.PSAM_MODE_ENCRYPT, data)).check().data
    key = card_key(TEST_KEYS[(algorithm, usage)], bytes.fromhex("330300D15600000501234567FFFFFFFF"), algorithm)
    assert out == algorithm.encrypt_block(key, data)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("usage", [PR, AM])
def test_psam_macs_with_the_session_key(psam, algorithm, usage):
    code = bytes.fromhex("440300D15600000576543210FFFFFFFF")
    d = diversification_data(code)
    challenge = bytes(range(7, 7 + algorithm.block_size))
    message = bytes.fromhex("805E0000 07 135790")
    assert psam.transmit(commands.psam_des_init(usage.code, psam_key_version(algorithm), d, challenge)).sw == 0x9000
    out = psam.transmit(commands.psam_des_crypt(commands.PSAM_MODE_MAC, message)).check().data
    assert out == session_mac(card_key(TEST_KEYS[(algorithm, usage)], code, algorithm), challenge, message, algorithm)


@pytest.mark.parametrize("steps,sw", [
    ([("80 FA 00 00 08 0001020304050607 00", None)], 0x6985),  # DES CRYPT before DES INIT
    ([("80 1A 09 02 08 0001020304050607", None)], 0x6A88),  # no such key usage
    ([("80 1A 01 07 08 0001020304050607", None)], 0x6A88),  # no such key version
    ([("80 1A 01 02 04 00010203", None)], 0x6700),  # D of 4 bytes
    ([("80 1A 01 03 04 00010203", None)], 0x6700),  # D of 4 bytes, SM4 (D is 8 bytes for SM4 too)
    ([("80 1A 03 03 19 0001020304050607" + "00" * 17, None)], 0x6700),  # SM4 D || a 17-byte challenge
    ([("80 1A 01 02 10 00010203040506070001020304050607", None)], 0x6985),  # challenge with an auth key
    ([("80 1A 03 02 08 0001020304050607", None)], 0x6985),  # MAC key without a challenge
    ([("80 1A 01 02 08 0001020304050607", 0x9000), ("80 FA 05 00 04 01020304 00", None)], 0x6985),  # MAC, auth key
    ([("80 1A 03 02 10 00010203040506070001020304050607", 0x9000), ("80 FA 00 00 08 0001020304050607 00", None)],
     0x6985),  # encrypt with a MAC key: a PSAM never encrypts with it
    ([("80 1A 01 02 08 0001020304050607", 0x9000), ("80 FA 00 00 05 0001020304 00", None)], 0x6700),
    ([("80 FA 02 00 08 0001020304050607 00", None)], 0x6A86),
    ([("00 B0 00 00 00", None)], 0x6D00),  # no file can be read: keys never leave
])
def test_psam_refusals(psam, steps, sw):
    card = psam.card
    for apdu, expected in steps:
        reply = card.execute(bytes.fromhex(apdu.replace(" ", "")))
        if expected is not None:
            assert reply[-2:] == expected.to_bytes(2, "big")
    assert int.from_bytes(reply[-2:], "big") == sw


def test_psam_forgets_the_key_at_power_down(psam):
    psam.transmit(commands.psam_des_init(IA.code, 0x02, bytes(8))).check()
    psam.card.power_down()
    psam.card.power_up()
    assert psam.transmit(commands.psam_des_crypt(commands.PSAM_MODE_ENCRYPT, bytes(8))).sw == 0x6985


def test_psam_speaks_t0_through_get_response(psam):
    psam.transmit(commands.psam_des_init(IA.code, 0x02, bytes(8))).check()
    raw = psam.card.execute(Command(0x80, 0xFA, 0x00, 0x00, bytes(8), le=256).to_bytes())
    assert raw == bytes.fromhex("6108")  # the data waits for GET RESPONSE, as on the SSC
