"""The virtual SSC chip, driven through the real Connection.transmit path (MemoryConnection)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sscard.apdu import commands
from sscard.apdu.atr import parse_atr
from sscard.apdu.catalogue import CARD_ITEMS, EF05, EF06, HOLDER_ITEMS
from sscard.apdu.command import Command
from sscard.apdu.commands import SSC_DF_NAME
from sscard.apdu.errors import PINBlockedError, WrongPINError
from sscard.apdu.pin import pin_to_bcd
from sscard.apdu.tlv import decode_simple
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import SimulatedCard, SSCCard, bundled_names, load_card, load_profile
from sscard.drivers.simulator.ssc import CLA_PROPRIETARY

# the FCI as docs/simulator.md specifies it, built by hand rather than by the simulator's code
FCI_2ND = bytes((0x6F, 0x17, 0x84, 0x0F)) + SSC_DF_NAME + bytes.fromhex("A5 04 9F 08 01 02")
FCI_3RD = FCI_2ND[:-1] + b"\x03"


class Recording(MemoryConnection):
    """A MemoryConnection that keeps every raw exchange, to see what transmit really sent."""

    def __init__(self, card: SimulatedCard) -> None:
        super().__init__(card)
        self.log: list[tuple[bytes, bytes]] = []

    def _exchange(self, apdu: bytes) -> bytes:
        reply = super()._exchange(apdu)
        self.log.append((apdu, reply))
        return reply


def sw(raw: bytes) -> int:
    return int.from_bytes(raw[-2:], "big")


def run(card: SSCCard, hexapdu: str) -> bytes:
    return card.execute(bytes.fromhex(hexapdu.replace(" ", "")))


@pytest.fixture
def adult() -> SSCCard:
    card = load_card("adult")
    card.power_up()
    return card


def selected(card: SSCCard, fid: int | None = EF05) -> SSCCard:
    conn = MemoryConnection(card)
    assert conn.transmit(commands.select_ssc()).sw == 0x9000
    if fid is not None:
        assert conn.transmit(commands.select_fid(fid)).sw == 0x9000
    return card


# --- reading the card ---------------------------------------------------------------------------

def authenticate(conn: MemoryConnection) -> None:
    """EXTERNAL AUTHENTICATE with the TEST keys (terminal/cardsecurity.py)."""
    from sscard.terminal.card import SocialSecurityCard
    from sscard.terminal.cardsecurity import authenticate_terminal
    from sscard.terminal.keystore import CardKeyRef, SoftwareKeyStore

    card = SocialSecurityCard(conn)
    authenticate_terminal(card, SoftwareKeyStore.bundled_test_keys(), CardKeyRef.read(card))


def test_a_third_generation_card_shows_ef06_only_to_an_authenticated_terminal():
    conn = MemoryConnection(load_card("other-region"))  # spec 3.00, SM4
    assert conn.transmit(commands.select_ssc()).sw == 0x9000
    assert conn.transmit(commands.read_record(1, sfi=5)).sw == 0x9000  # EF05: the card's data, open
    assert conn.transmit(commands.read_record(1, sfi=6)).sw == 0x6982  # EF06: the holder's, not yet
    authenticate(conn)
    assert conn.transmit(commands.read_record(1, sfi=6)).sw == 0x9000
    conn.card.power_down()
    conn.card.power_up()  # the authentication is volatile
    conn.transmit(commands.select_ssc())
    assert conn.transmit(commands.read_record(1, sfi=6)).sw == 0x6982
    adult = MemoryConnection(load_card("adult"))  # a second-generation card asks no authentication
    adult.transmit(commands.select_ssc())
    assert adult.transmit(commands.read_record(1, sfi=6)).sw == 0x9000

@pytest.mark.parametrize("name", bundled_names())
def test_every_record_decodes_to_the_profile_values(name):
    profile = load_profile(name)
    conn = MemoryConnection(SSCCard(profile))
    assert conn.transmit(commands.select_ssc()).sw in (0x9000, 0x6283)
    for items, values in ((CARD_ITEMS, profile.card), (HOLDER_ITEMS, profile.holder)):
        if items is HOLDER_ITEMS and profile.algorithm == "SM4":  # a third-generation card: EF06 after
            authenticate(conn)                                     # the terminal authenticated itself
        assert conn.transmit(commands.select_fid(items[0].fid)).sw == 0x9000
        for item in items:
            response = conn.transmit(commands.read_record(item.record)).check()
            record = decode_simple(response.data)
            assert list(record) == [item.tag]
            raw = record[item.tag]
            if item.key in values:
                assert item.decode(raw) == values[item.key], item.key
            else:
                assert raw == b"", f"{item.key} absent from the profile must be an empty TLV"


def test_chinese_names_come_back_exactly():
    for name, expected in (("adult", "张伟"), ("minority", "阿依古丽·买买提吐尔逊·阿卜杜热合曼")):
        conn = MemoryConnection(load_card(name))
        conn.transmit(commands.select_ssc())
        conn.transmit(commands.select_fid(EF06))
        name_tlv = decode_simple(conn.transmit(commands.read_record(2)).check().data)[0x09]
        ext_tlv = decode_simple(conn.transmit(commands.read_record(3)).check().data)[0x4E]
        assert (name_tlv + ext_tlv).decode("gbk") == expected


def test_absent_item_is_an_empty_tlv(adult):
    selected(adult, EF06)
    assert run(adult, "00 B2 03 04 00") == bytes.fromhex("4E 00 90 00")


def test_read_record_by_sfi_without_select(adult):
    selected(adult, fid=None)
    reply = run(adult, "00 B2 01 2C 00")  # SFI 5
    assert reply[:2] == bytes.fromhex("01 10") and sw(reply) == 0x9000
    assert reply[2:-2].hex().upper() == load_profile("adult").card["card_identification_code"]
    # the EF read by SFI becomes the current EF (ISO 7816-4 s7.3.1)
    assert sw(run(adult, "00 B2 07 04 00")) == 0x9000
    assert adult.current_ef is not None and adult.current_ef.fid == EF05
    reply = run(adult, "00 B2 01 34 00")  # SFI 6
    assert decode_simple(reply[:-2])[0x08] == b"330302198506151239"


# --- transport: T=0 61xx / 6Cxx, T=1 direct ------------------------------------------------------

def test_t0_select_answers_61xx_and_the_chain_yields_exactly_the_fci(adult):
    assert run(adult, "00 A4 04 00 0F" + SSC_DF_NAME.hex()) == bytes((0x61, len(FCI_2ND)))
    adult.power_down()
    adult.power_up()
    conn = Recording(adult)
    response = conn.transmit(commands.select_df_name(SSC_DF_NAME))
    assert response.sw == 0x9000 and response.data == FCI_2ND
    assert [c[:2] for c, _ in conn.log] == [b"\x00\xa4", b"\x00\xc0"]


def test_t0_get_response_in_chunks_and_6cxx_keeps_the_data(adult):
    assert len(FCI_2ND) == 0x19
    assert run(adult, "00 A4 04 00 0F" + SSC_DF_NAME.hex()) == b"\x61\x19"
    first = run(adult, "00 C0 00 00 0A")
    assert first == FCI_2ND[:10] + b"\x61\x0f"
    assert run(adult, "00 C0 00 00 20") == b"\x6c\x0f"  # too long on T=0: the card says how much is left
    assert run(adult, "00 C0 00 00 0F") == FCI_2ND[10:] + b"\x90\x00"
    assert sw(run(adult, "00 C0 00 00 00")) == 0x6985  # nothing left


def test_pending_response_is_lost_after_another_command(adult):
    assert sw(run(adult, "00 A4 04 00 0F" + SSC_DF_NAME.hex())) == 0x6119
    assert sw(run(adult, "00 20 00 00")) == 0x63C3
    assert sw(run(adult, "00 C0 00 00 19")) == 0x6985


class BigCard(SSCCard):
    """A test-only card with one extra command answering 300 bytes: proves 6100 = 256 end to end."""

    BIG = bytes(range(256)) + bytes(range(44))

    def __init__(self, profile):
        super().__init__(profile)
        self.handlers[0xCA] = (CLA_PROPRIETARY, lambda command: (self.BIG, 0x9000))


def test_6100_means_256_and_the_rest_follows():
    card = BigCard(load_profile("adult"))
    card.power_up()
    assert run(card, "80 CA 00 00 01 00") == b"\x61\x00"
    assert run(card, "00 C0 00 00 00") == BigCard.BIG[:256] + b"\x61\x2c"
    assert run(card, "00 C0 00 00 2C") == BigCard.BIG[256:] + b"\x90\x00"
    conn = Recording(BigCard(load_profile("adult")))
    response = conn.transmit(Command(0x80, 0xCA, 0, 0, b"\x00", le=256))
    assert response.sw == 0x9000 and response.data == BigCard.BIG
    assert len(conn.log) == 3


def test_t0_read_record_wrong_le_is_6cxx_and_transmit_reissues_once(adult):
    selected(adult)
    record = run(adult, "00 B2 01 04 00")[:-2]
    assert len(record) == 18
    assert run(adult, "00 B2 01 04 05") == b"\x6c\x12"
    assert run(adult, "00 B2 01 04 20") == b"\x6c\x12"  # longer than the record: also 6Cxx on T=0
    assert run(adult, "00 B2 01 04 12") == record + b"\x90\x00"
    conn = Recording(adult)  # powers the card up again: select again
    conn.transmit(commands.select_ssc())
    conn.transmit(commands.select_fid(EF05))
    conn.log.clear()
    response = conn.transmit(commands.read_record(1, le=5))
    assert response.sw == 0x9000 and response.data == record
    assert [c for c, _ in conn.log] == [bytes.fromhex("00 B2 01 04 05"), bytes.fromhex("00 B2 01 04 12")]


def test_t1_answers_data_directly():
    card = load_card("other-region")
    conn = Recording(card)
    # case 3 SELECT as public readers send it: no data expected, one APDU
    assert conn.transmit(commands.select_ssc()).data == b""
    response = conn.transmit(commands.select_df_name(SSC_DF_NAME))
    assert response.sw == 0x9000 and response.data == FCI_3RD
    assert len(conn.log) == 2 and all(r[-2] != 0x61 for _, r in conn.log)
    conn.transmit(commands.select_fid(EF05))
    record = conn.transmit(commands.read_record(1)).data
    assert run(card, "00 B2 01 04 40") == record + b"\x90\x00"  # Le longer: fine on T=1
    assert run(card, "00 B2 01 04 05") == bytes((0x6C, len(record)))  # Le shorter: 6Cxx
    # case 4 with a short Le on T=1: Le bytes, then 61xx for the rest
    reply = run(card, "00 A4 04 00 0F" + SSC_DF_NAME.hex() + "10")
    assert reply == FCI_3RD[:16] + bytes((0x61, len(FCI_3RD) - 16))
    assert run(card, "00 C0 00 00 00") == FCI_3RD[16:] + b"\x90\x00"


# --- the answer to every wrong command -----------------------------------------------------------

WRONG = [
    # (apdu, sw, what)
    ("10 B2 01 04 00", 0x6E00, "unknown CLA"),
    ("FF B2 01 04 00", 0x6E00, "CLA FF"),
    ("80 B2 01 04 00", 0x6E00, "proprietary CLA on an ISO command"),
    ("00 5E 01 00 07 123456FF654321", 0x6E00, "ISO CLA on CHANGE PIN"),
    ("00 12 00 00", 0x6D00, "unknown INS"),
    ("00 B2 01 05 00", 0x6A86, "READ RECORD P2 not ...100"),
    ("00 B2 00 04 00", 0x6A86, "READ RECORD record 0"),
    ("00 B2 01 FC 00", 0x6A86, "READ RECORD SFI 31"),
    ("00 A4 08 00 02 3F00", 0x6A86, "SELECT P1 08"),
    ("00 A4 00 10 02 EF05", 0x6A86, "SELECT P2 10"),
    ("00 20 00 01 03 123456", 0x6A86, "VERIFY P2 01"),
    ("00 84 01 00 08", 0x6A86, "GET CHALLENGE P1 01"),
    ("00 C0 01 00 00", 0x6A86, "GET RESPONSE P1 01"),
    ("00 A4 00 00 03 EF0500", 0x6700, "SELECT FID of 3 bytes"),
    ("00 A4 00 00 05 EF05", 0x6700, "Lc larger than the data"),
    ("00 A4 04 00 00", 0x6700, "SELECT by name with no name"),
    ("00 B2 01 04", 0x6700, "READ RECORD without Le"),
    ("00 B2 01 04 01 00 00", 0x6700, "READ RECORD with data"),
    ("00 84 00 00 04", 0x6700, "GET CHALLENGE of 4 bytes"),
    ("00 20 00 00 01 12", 0x6700, "VERIFY PIN block of 1 byte"),
    ("00 20 00 00 03 123456 00", 0x6700, "VERIFY with Le"),
    ("80 5E 01 00 06 123456 654321", 0x6700, "CHANGE PIN without the FF separator"),
    ("00 B2 01", 0x6700, "3-byte header"),
    ("00 B2 01 04 00 00 00", 0x6700, "extended Le"),
    ("00 B2 08 04 00", 0x6A83, "record 8 of EF05"),
    ("00 A4 00 00 02 0001", 0x6A82, "FID not on the card"),
    ("00 A4 02 00 02 3F00", 0x6A82, "MF selected as an EF"),
    ("00 A4 04 00 05 A000000333", 0x6A82, "DF name not on the card"),
    ("00 A4 04 02 0F" + SSC_DF_NAME.hex(), 0x6A82, "next occurrence of the SSC DF"),
    ("00 B2 01 3C 00", 0x6A82, "SFI 7"),
    ("00 B0 00 00 00", 0x6981, "READ BINARY on a record EF"),
    ("00 C0 00 00 00", 0x6985, "GET RESPONSE with nothing pending"),
    ("00 20 00 00 03 12345A", 0x6A80, "VERIFY PIN block not BCD"),
    ("80 5E 00 00 07 123456 01020304", 0x6985, "RELOAD PIN without a fresh challenge"),
]


@pytest.mark.parametrize("apdu,expected,what", WRONG, ids=[w[2] for w in WRONG])
def test_wrong_command_answers(adult, apdu, expected, what):
    selected(adult)
    assert sw(run(adult, apdu)) == expected, what
    assert adult.pin_tries_left == 3  # no wrong command costs a PIN try


@pytest.mark.parametrize("apdu,expected", [
    ("00 B2 01 04 00", 0x6986),  # no EF selected, no application
    ("00 B2 01 2C 00", 0x6986),  # by SFI before the application is selected
    ("00 B0 00 00 00", 0x6986),
    ("00 A4 00 00 02 EF05", 0x6A82),  # EF05 is not under the MF
])
def test_before_the_application_is_selected(adult, apdu, expected):
    assert sw(run(adult, apdu)) == expected


def test_application_selected_but_no_ef(adult):
    selected(adult, fid=None)
    assert sw(run(adult, "00 B2 01 04 00")) == 0x6986


def test_select_mf_leaves_the_application(adult):
    selected(adult)
    assert run(adult, "00 A4 00 00 02 3F00") == b"\x90\x00"
    assert not adult.application_selected and adult.current_ef is None
    assert sw(run(adult, "00 B2 01 2C 00")) == 0x6986


# --- PIN ----------------------------------------------------------------------------------------

PIN = load_profile("adult").pin.value


def test_verify_counts_down_then_blocks_for_good(adult):
    conn = MemoryConnection(adult)
    wrong = commands.verify(pin_to_bcd("000000"))
    answers = [conn.transmit(wrong).sw for _ in range(3)]
    assert answers == [0x63C2, 0x63C1, 0x6983]
    assert conn.transmit(commands.verify(pin_to_bcd(PIN))).sw == 0x6983
    assert conn.transmit(commands.verify_status()).sw == 0x6983
    with pytest.raises(PINBlockedError):
        conn.transmit(commands.verify(pin_to_bcd(PIN))).check(commands.VERIFY_SW)
    adult.power_down()
    adult.power_up()
    assert conn.transmit(commands.verify(pin_to_bcd(PIN))).sw == 0x6983  # the counter is persistent


def test_right_pin_resets_the_counter(adult):
    conn = MemoryConnection(adult)
    with pytest.raises(WrongPINError) as err:
        conn.transmit(commands.verify(pin_to_bcd("999999"))).check(commands.VERIFY_SW)
    assert err.value.tries_left == 2
    assert conn.transmit(commands.verify_status()).sw == 0x63C2
    assert conn.transmit(commands.verify(pin_to_bcd(PIN))).sw == 0x9000
    assert conn.transmit(commands.verify_status()).sw == 0x9000
    assert conn.transmit(commands.verify(pin_to_bcd("999999"))).sw == 0x63C2
    assert conn.transmit(commands.verify_status()).sw == 0x63C2  # a wrong PIN drops the verified state


def test_blocked_card_refuses_the_right_pin():
    conn = MemoryConnection(load_card("blocked-pin"))
    pin = load_profile("blocked-pin").pin.value
    assert conn.transmit(commands.verify_status()).sw == 0x6983
    assert conn.transmit(commands.verify(pin_to_bcd(pin))).sw == 0x6983


@pytest.mark.parametrize("cycle", ["power", "reset"])
def test_power_down_and_reset_clear_volatile_state(adult, cycle):
    conn = MemoryConnection(adult)
    conn.transmit(commands.select_ssc())
    conn.transmit(commands.select_fid(EF05))
    assert conn.transmit(commands.verify(pin_to_bcd(PIN))).sw == 0x9000
    assert conn.transmit(commands.get_challenge()).sw == 0x9000
    assert adult.pin_verified and adult.last_challenge is not None
    if cycle == "power":
        adult.power_down()
        adult.power_up()
    else:
        adult.reset()
    assert not adult.pin_verified and adult.last_challenge is None
    assert conn.transmit(commands.verify_status()).sw == 0x63C3
    assert conn.transmit(commands.read_record(1)).sw == 0x6986


def test_change_pin(adult):
    conn = MemoryConnection(adult)
    assert conn.transmit(commands.change_pin(pin_to_bcd("000000"), pin_to_bcd("864209"))).sw == 0x63C2
    assert conn.transmit(commands.change_pin(pin_to_bcd(PIN), pin_to_bcd("864209"))).sw == 0x9000
    adult.power_down()
    adult.power_up()
    assert conn.transmit(commands.verify(pin_to_bcd(PIN))).sw == 0x63C2
    assert conn.transmit(commands.verify(pin_to_bcd("864209"))).sw == 0x9000
    # odd-length PINs use an F nibble (docs/crypto.md)
    assert conn.transmit(commands.change_pin(pin_to_bcd("864209"), pin_to_bcd("13579"))).sw == 0x9000
    assert conn.transmit(commands.verify(pin_to_bcd("13579"))).sw == 0x9000


def test_change_pin_counts_tries_and_blocks(adult):
    conn = MemoryConnection(adult)
    change = commands.change_pin(pin_to_bcd("111111"), pin_to_bcd("222222"))
    assert [conn.transmit(change).sw for _ in range(3)] == [0x63C2, 0x63C1, 0x6983]
    assert conn.transmit(commands.change_pin(pin_to_bcd(PIN), pin_to_bcd("222222"))).sw == 0x6983


def test_get_challenge(adult):
    conn = MemoryConnection(adult)
    first = conn.transmit(commands.get_challenge(8)).check().data
    second = conn.transmit(commands.get_challenge(8)).check().data
    assert len(first) == 8 and first != second and adult.last_challenge == second
    assert len(conn.transmit(commands.get_challenge(16)).check().data) == 16


# --- application lifecycle -----------------------------------------------------------------------

def test_not_activated_card_answers_6283_and_stays_readable():
    card = load_card("not-activated")
    conn = MemoryConnection(card)
    assert conn.transmit(commands.select_ssc()).sw == 0x6283
    assert conn.transmit(commands.select_df_name(SSC_DF_NAME)).sw == 0x6283
    assert card.application_selected
    assert conn.transmit(commands.select_fid(EF06)).sw == 0x9000
    name = decode_simple(conn.transmit(commands.read_record(2)).check().data)[0x09].decode("gbk")
    assert name == load_profile("not-activated").holder["name"]
    assert conn.transmit(commands.verify(pin_to_bcd("123456"))).sw == 0x9000
    card.activate()
    response = conn.transmit(commands.select_ssc())
    assert response.sw == 0x9000 and response.data == FCI_2ND  # T=0: 61xx then GET RESPONSE
    card.power_down()
    card.power_up()
    assert conn.transmit(commands.select_ssc()).sw == 0x9000  # activation is persistent


# --- robustness ----------------------------------------------------------------------------------

def test_internal_error_is_6f00_not_an_exception(adult):
    def broken(command):
        raise RuntimeError("bug")

    adult.handlers[0xB2] = (frozenset({0x00}), broken)
    assert run(adult, "00 B2 01 04 00") == b"\x6f\x00"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_execute_never_raises_on_random_bytes(adult, apdu):
    """execute() catches every exception as 6F00 (a simulator bug): no random input may reach that."""
    reply = adult.execute(apdu)
    assert isinstance(reply, bytes) and len(reply) >= 2
    assert reply[-2:] != b"\x6f\x00"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from([0x00, 0x80]),
    st.sampled_from([0xA4, 0xB2, 0xB0, 0x20, 0x5E, 0x84, 0xC0]),
    st.integers(0, 255), st.integers(0, 255), st.binary(max_size=40),
)
def test_execute_never_raises_on_plausible_commands(adult, cla, ins, p1, p2, tail):
    selected(adult)
    reply = adult.execute(bytes((cla, ins, p1, p2)) + tail)
    assert len(reply) >= 2 and reply[-2:] != b"\x6f\x00"


# --- ATR ----------------------------------------------------------------------------------------

def test_atr_protocols_and_historical_bytes():
    from sscard.apdu.atr import historical_bytes

    t0, t1 = load_card("adult").atr, load_card("other-region").atr
    assert parse_atr(t0).protocol == "T=0" and parse_atr(t1).protocol == "T=1"
    assert historical_bytes(t0) == parse_atr(t0).historical == bytes.fromhex("80 31 80 69") + b"SSC2" + bytes.fromhex(
        "33 03 00 01 00")
    assert historical_bytes(t1) == parse_atr(t1).historical
    check = 0
    for b in t1[1:]:
        check ^= b
    assert check == 0  # TCK
    assert isinstance(load_card("adult"), SimulatedCard)


@pytest.mark.parametrize("name", bundled_names())
def test_atr_says_the_generation_and_region_of_the_card(name):
    profile = load_profile(name)
    atr = parse_atr(profile.atr)
    assert (atr.generation, atr.issuing_region) == (SSCCard(profile).generation, profile.issuing_region)
    assert parse_atr(load_card("psam").atr).generation is None and parse_atr(load_card("psam").atr).issuing_region is None
