"""The shared transmit path (drivers/connection.py) through the memory driver (drivers/memory.py).

A small scripted chip stands in for the simulator: it answers a fixed script of raw responses and
records every APDU it receives, so each test states exactly what went over the wire (ISO/IEC 7816-3
s12.2: 61xx GET RESPONSE, 6Cxx re-issue).
"""
from __future__ import annotations

import logging

import pytest

from sscard.apdu import commands as c
from sscard.apdu.command import Command
from sscard.apdu.errors import APDUFormatError
from sscard.drivers.connection import MAX_GET_RESPONSE
from sscard.drivers.errors import CardRemovedError, NoCardError, TransportError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator.base import SimulatedCard
from sscard.terminal.cli.exits import exit_code

H = bytes.fromhex
ATR = H("3B6800000073C84013009000")
PIN = H("123456")
ID_NUMBER = b"11010119800101123X"


class ScriptedCard:
    """A chip that answers ``script`` in order (hex strings), then ``forever`` if given, else 6F00."""

    def __init__(self, *script: str, forever: str | None = None) -> None:
        self.script = [H(s) for s in script]
        self.forever = H(forever) if forever is not None else None
        self.received: list[bytes] = []
        self.events: list[str] = []
        self.powered = False

    @property
    def atr(self) -> bytes:
        return ATR

    def power_up(self) -> None:
        self.powered = True
        self.events.append("up")

    def power_down(self) -> None:
        self.powered = False
        self.events.append("down")

    def reset(self) -> None:
        self.events.append("reset")

    def execute(self, apdu: bytes) -> bytes:
        self.received.append(bytes(apdu))
        if not self.powered:
            return H("6F00")
        if self.script:
            return self.script.pop(0)
        return self.forever if self.forever is not None else H("6F00")

    @property
    def sent_hex(self) -> list[str]:
        return [a.hex().upper() for a in self.received]


def connect(*script: str, **kw) -> tuple[ScriptedCard, MemoryConnection]:
    forever = kw.pop("forever", None)
    card = ScriptedCard(*script, forever=forever)
    return card, MemoryConnection(card, name="test", **kw)


def test_scripted_card_is_a_simulated_card():
    assert isinstance(ScriptedCard(), SimulatedCard)


# --- plain exchanges ----------------------------------------------------------------------------

def test_plain_exchange():
    card, conn = connect("0110330300D15600000599110145FFFFFFFF9000")
    resp = conn.transmit(c.read_record(1))
    assert card.sent_hex == ["00B2010400"]
    assert resp.data == H("0110330300D15600000599110145FFFFFFFF") and resp.sw == 0x9000
    assert conn.apdu_count == 1


def test_transmit_does_not_check_the_status_word():
    card, conn = connect("6A82")
    resp = conn.transmit(c.select_fid(0xEF07))
    assert resp.sw == 0x6A82 and resp.data == b""


# --- 61xx: GET RESPONSE -------------------------------------------------------------------------

def test_61xx_with_non_empty_first_chunk_keeps_every_data_byte():
    card, conn = connect("0A0B" "6103", "0C0D0E" "9000")
    resp = conn.transmit(c.read_record(1))
    assert card.sent_hex == ["00B2010400", "00C0000003"]
    assert resp.data == H("0A0B0C0D0E")
    assert resp.sw == 0x9000


def test_select_ssc_61xx_on_t0():
    """docs/reference/card.md: the SELECT by DF name may answer 61xx; the FCI arrives by GET RESPONSE."""
    card, conn = connect("6112", "6F10" + "84" "0F" + "7378312E73682EC9E7BBE1B1A3D5CF" + "9000")
    resp = conn.transmit(c.select_ssc())
    assert card.sent_hex == ["00A404000F7378312E73682EC9E7BBE1B1A3D5CF", "00C0000012"]
    assert resp.ok and resp.data.startswith(H("6F10840F"))


def test_6100_means_256_bytes():
    chunk = bytes(range(256))
    card, conn = connect("6100", chunk.hex() + "9000")
    resp = conn.transmit(c.read_binary())
    assert card.sent_hex[1] == "00C0000000"
    assert Command.from_bytes(card.received[1]).le == 256
    assert resp.data == chunk and resp.ok


def test_multi_round_chain():
    card, conn = connect("01" "6110", "02" * 16 + "6105", "03" * 5 + "6100", "04" * 256 + "9000")
    resp = conn.transmit(c.read_binary())
    assert card.sent_hex == ["00B0000000", "00C0000010", "00C0000005", "00C0000000"]
    assert resp.data == H("01") + H("02") * 16 + H("03") * 5 + H("04") * 256
    assert resp.ok
    assert conn.apdu_count == 4


def test_chain_ending_in_a_warning_returns_that_status_with_all_data():
    card, conn = connect("AA" "6102", "BBCC" "6282")
    resp = conn.transmit(c.read_record(2))
    assert resp.data == H("AABBCC") and resp.sw == 0x6282


def test_endless_61xx_is_bounded():
    card, conn = connect(forever="00" "6101")
    with pytest.raises(TransportError) as info:
        conn.transmit(c.read_record(1))
    assert exit_code(info.value) == 4
    assert len(card.received) == 1 + MAX_GET_RESPONSE
    assert conn.apdu_count == 1 + MAX_GET_RESPONSE


def test_oversized_chain_is_bounded_by_bytes():
    """A hostile card sending 4 KB per GET RESPONSE stops at the 64 KB bound, before the round bound."""
    card, conn = connect(forever="00" * 4096 + "6100")
    with pytest.raises(TransportError):
        conn.transmit(c.read_binary())
    assert len(card.received) < 1 + MAX_GET_RESPONSE
    # the first chunk plus 16 GET RESPONSE chunks make 17 x 4 KB, the first total over 64 KB
    assert len(card.received) == 17


# --- 6Cxx: wrong Le -----------------------------------------------------------------------------

def test_6cxx_on_case_2_reissues_once_with_le():
    card, conn = connect("6C10", "11" * 16 + "9000")
    resp = conn.transmit(c.read_record(1))
    assert card.sent_hex == ["00B2010400", "00B2010410"]
    assert resp.data == H("11") * 16 and resp.ok


def test_6c00_reissues_with_le_256():
    card, conn = connect("6C00", "00" * 256 + "9000")
    resp = conn.transmit(c.read_record(1, le=16))
    assert card.sent_hex == ["00B2010410", "00B2010400"]
    assert len(resp.data) == 256


def test_6cxx_on_case_4_keeps_lc_and_data():
    card, conn = connect("6C08", "8877665544332211" "9000")
    resp = conn.transmit(c.internal_authenticate(0x01, H("0102030405060708")))
    # the first Le (8) equals the card's: the re-issue is byte-identical, Lc 08 and data kept
    assert card.sent_hex == ["0088000108" "0102030405060708" "08"] * 2
    assert resp.data == H("8877665544332211")


def test_6cxx_on_case_4_with_changed_le():
    card, conn = connect("6C10", "00" * 16 + "9000")
    conn.transmit(c.psam_des_crypt(0x00, H("1122334455667788")))
    assert card.sent_hex == ["80FA000008" "1122334455667788" "00", "80FA000008" "1122334455667788" "10"]


@pytest.mark.parametrize("command", [
    c.verify(PIN),                                   # case 3: a second send would spend a PIN try
    c.change_pin(PIN, H("654321")),                  # case 3
    c.update_record(1, H("0101AA")),                 # case 3: written twice
    Command(0x00, 0x44, 0x00, 0x00),                 # case 1
], ids=["verify", "change-pin", "update-record", "case-1"])
def test_6cxx_on_a_command_without_le_is_not_reissued(command):
    """6Cxx answers a wrong Le (ISO 7816-3 s12.2.2); a command with no Le is sent once, answer kept."""
    card, conn = connect("6C10", "9000")
    resp = conn.transmit(command)
    assert len(card.received) == 1
    assert resp.sw == 0x6C10 and resp.data == b""
    assert conn.apdu_count == 1


def test_6cxx_twice_is_a_transport_error():
    card, conn = connect("6C10", "6C08", "9000")
    with pytest.raises(TransportError, match="6Cxx") as info:
        conn.transmit(c.read_record(1))
    assert exit_code(info.value) == 4
    assert len(card.received) == 2


def test_6cxx_then_61xx():
    card, conn = connect("6C04", "AABB" "6102", "CCDD" "9000")
    resp = conn.transmit(c.get_challenge(8))
    assert card.sent_hex == ["0084000008", "0084000004", "00C0000002"]
    assert resp.data == H("AABBCCDD")
    assert conn.apdu_count == 3


# --- malformed responses ------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["90", ""])
def test_response_shorter_than_a_status_word_is_a_transport_error(raw):
    card, conn = connect(raw)
    with pytest.raises(TransportError) as info:
        conn.transmit(c.read_record(1))
    assert exit_code(info.value) == 4
    assert isinstance(info.value.__cause__, APDUFormatError)


def test_malformed_response_inside_a_chain():
    card, conn = connect("6104", "61")
    with pytest.raises(TransportError):
        conn.transmit(c.read_record(1))


# --- removal ------------------------------------------------------------------------------------

def test_memory_connection_powers_the_card():
    card, conn = connect()
    assert card.events == ["up"] and conn.atr == ATR
    with conn:
        pass
    assert card.events == ["up", "down"]


def test_remove_raises_card_removed():
    card, conn = connect("9000", "9000")
    conn.transmit(c.select_ssc())
    conn.remove()
    assert card.events == ["up", "down"]
    with pytest.raises(CardRemovedError) as info:
        conn.transmit(c.read_record(1))
    assert exit_code(info.value) == 4
    assert isinstance(info.value, NoCardError)
    assert len(card.received) == 1  # nothing reached the card after removal
    with pytest.raises(NoCardError):
        _ = conn.atr


def test_remove_after_n_apdus():
    card, conn = connect("9000", "9000", "9000", remove_after=2)
    conn.transmit(c.select_ssc())
    conn.transmit(c.select_fid(0xEF05))
    with pytest.raises(CardRemovedError):
        conn.transmit(c.read_record(1))
    assert len(card.received) == 2 and not card.powered


def test_remove_after_zero_fails_the_first_apdu():
    card, conn = connect("9000", remove_after=0)
    with pytest.raises(CardRemovedError):
        conn.transmit(c.select_ssc())
    assert card.received == []


def test_removal_in_the_middle_of_a_get_response_chain():
    card, conn = connect("01" "6101", "02" "9000", remove_after=1)
    with pytest.raises(CardRemovedError):
        conn.transmit(c.read_record(1))
    assert card.sent_hex == ["00B2010400"]


def test_remove_is_idempotent():
    card, conn = connect()
    conn.remove()
    conn.remove()
    conn.disconnect()
    assert card.events == ["up", "down"]


def test_disconnect_closes_the_connection():
    """As PCSCConnection: once disconnected, no command reaches the (powered-down) chip."""
    card, conn = connect(forever="9000")
    conn.disconnect()
    with pytest.raises(TransportError, match="^The connection to the card is closed$") as info:
        conn.transmit(c.select_ssc())
    assert exit_code(info.value) == 4
    assert card.received == []
    conn.disconnect()
    conn.remove()
    assert card.events == ["up", "down"]


# --- tracing ------------------------------------------------------------------------------------

@pytest.fixture
def apdu_log(caplog):
    caplog.set_level(logging.DEBUG, logger="sscard.apdu")
    return caplog


def _log_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "sscard.apdu")


def test_normal_command_and_response_are_traced(apdu_log):
    card, conn = connect("0201339000")
    conn.transmit(c.read_record(2))
    text = _log_text(apdu_log)
    assert "test > 00 B2 02 04 00" in text
    assert "test < 02 01 33 90 00" in text


def test_pin_never_appears_in_the_trace(apdu_log):
    card, conn = connect("63C2")
    resp = conn.transmit(c.verify(PIN))
    assert resp.sw == 0x63C2
    text = _log_text(apdu_log)
    assert "00 20 00 00" in text and "63C2" in text
    for form in ("12 34 56", "123456", "12:34:56"):
        assert form not in text
    assert PIN.hex(" ").upper() not in text


def test_secret_response_data_never_appears_in_the_trace(apdu_log):
    record = (b"\x08\x12" + ID_NUMBER).hex().upper()
    card, conn = connect(record + "9000")
    resp = conn.transmit(c.read_record(1, secret=True))
    assert resp.data == b"\x08\x12" + ID_NUMBER
    text = _log_text(apdu_log)
    assert "00 B2 01 04 00" in text and "[20 bytes] 9000" in text
    assert ID_NUMBER.hex(" ").upper() not in text and "11010119800101123X" not in text
    assert "31 31 30 31" not in text


def test_secret_command_reissued_after_6cxx_stays_secret(apdu_log):
    card, conn = connect("6C08", "1122334455667788" "9000")
    conn.transmit(Command(0x80, 0x5E, 0x01, 0x00, H("123456FF654321"), le=16, secret=True))
    text = _log_text(apdu_log)
    assert text.count("[7 secret bytes]") == 2
    assert "12 34 56" not in text and "65 43 21" not in text and "11 22 33" not in text


def test_secret_response_fetched_by_get_response_never_appears_in_the_trace(apdu_log):
    record = (b"\x08\x12" + ID_NUMBER).hex().upper()
    card, conn = connect("6114", record + "9000")
    resp = conn.transmit(c.read_record(1, secret=True))
    assert resp.data == b"\x08\x12" + ID_NUMBER  # the chain itself works
    text = _log_text(apdu_log)
    assert ID_NUMBER.hex(" ").upper() not in text


def test_trace_goes_to_sscard_apdu_at_debug_only(caplog):
    caplog.set_level(logging.INFO, logger="sscard.apdu")
    card, conn = connect("9000")
    conn.transmit(c.select_ssc())
    assert [r for r in caplog.records if r.name == "sscard.apdu"] == []


# --- counting -----------------------------------------------------------------------------------

def test_apdu_count_counts_every_exchanged_apdu():
    card, conn = connect("6C02", "AA" "6101", "BB" "9000", "9000", "6102", "CCDD9000")
    conn.transmit(c.get_challenge(8))         # 3 APDUs: original, re-issue, GET RESPONSE
    assert conn.apdu_count == 3
    conn.transmit(c.select_ssc())              # 1
    conn.transmit(c.read_record(1))            # 2: original, GET RESPONSE
    assert conn.apdu_count == 6 == len(card.received)


def test_apdu_count_includes_a_failed_exchange():
    card, conn = connect("90")
    with pytest.raises(TransportError):
        conn.transmit(c.select_ssc())
    assert conn.apdu_count == 1
