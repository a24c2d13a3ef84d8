"""Command APDUs (apdu/command.py) and every builder (apdu/commands.py) against hand-written hex.

Expected bytes are written out by hand from docs/reference/commands.md and ISO/IEC 7816-4 s5.1
(cases 1-4, short and extended), never computed with the code under test.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sscard.apdu import commands as c
from sscard.apdu.command import Command
from sscard.apdu.errors import APDUFormatError, MalformedError, SSCardError
from sscard.terminal.cli.exits import exit_code

H = bytes.fromhex


# --- builders -----------------------------------------------------------------------------------

BUILDERS = [
    # docs/reference/commands.md, "Selection and reading"
    ("select_ssc", lambda: c.select_ssc(), "00A404000F7378312E73682EC9E7BBE1B1A3D5CF"),
    ("select_fid EF05", lambda: c.select_fid(0xEF05), "00A4000002EF05"),
    ("select_fid EF06", lambda: c.select_fid(0xEF06), "00A4000002EF06"),
    ("select_mf", lambda: c.select_mf(), "00A40000023F00"),
    ("read_record 1", lambda: c.read_record(1), "00B2010400"),
    ("read_record 7", lambda: c.read_record(7), "00B2070400"),
    ("read_record 1 sfi 5", lambda: c.read_record(1, sfi=5), "00B2012C00"),
    ("read_record 3 sfi 6", lambda: c.read_record(3, sfi=6), "00B2033400"),
    ("read_record le 16", lambda: c.read_record(1, le=16), "00B2010410"),
    # ISO 7816-4 s7.1.1: SELECT by DF name with Le 00 (FCI); P2 02 = next occurrence
    ("select PSE", lambda: c.select_df_name(b"1PAY.SYS.DDF01"),
     "00A404000E315041592E5359532E444446303100"),
    ("select debit AID", lambda: c.select_df_name(c.AID_PBOC_DEBIT), "00A4040008A00000033301010100"),
    ("select credit AID next", lambda: c.select_df_name(c.AID_PBOC_CREDIT, first_or_only=False),
     "00A4040208A00000033301010200"),
    # ISO 7816-4 s7.2.3: READ BINARY, offset in P1 (b8=0) P2
    ("read_binary 0", lambda: c.read_binary(), "00B0000000"),
    ("read_binary 0x10 le 8", lambda: c.read_binary(0x10, le=8), "00B0001008"),
    ("read_binary 0x0123", lambda: c.read_binary(0x0123), "00B0012300"),
    ("read_binary 0x7FFF le 1", lambda: c.read_binary(0x7FFF, le=1), "00B07FFF01"),
    ("update_record", lambda: c.update_record(2, H("020131")), "00DC020403020131"),
    # PIN (docs/reference/commands.md, "PIN")
    ("verify", lambda: c.verify(H("123456")), "0020000003123456"),
    ("verify_status", lambda: c.verify_status(), "00200000"),
    ("change_pin", lambda: c.change_pin(H("123456"), H("654321")), "805E010007123456FF654321"),
    ("reload_pin", lambda: c.reload_pin(H("135790"), H("A1B2C3D4")), "805E000007135790A1B2C3D4"),
    # authentication
    ("get_challenge 8", lambda: c.get_challenge(8), "0084000008"),
    ("get_challenge 16", lambda: c.get_challenge(16), "0084000010"),
    ("get_challenge default", lambda: c.get_challenge(), "0084000008"),
    ("get_response", lambda: c.get_response(), "00C0000000"),
    ("get_response 0x12", lambda: c.get_response(0x12), "00C0000012"),
    ("internal_authenticate", lambda: c.internal_authenticate(0x01, H("0102030405060708")),
     "0088000108" "0102030405060708" "08"),
    ("internal_authenticate sm4", lambda: c.internal_authenticate(0x02, bytes(range(16))),
     "0088000210000102030405060708090A0B0C0D0E0F10"),
    ("external_authenticate 3des", lambda: c.external_authenticate(0x04, H("1122334455667788")),
     "00820004081122334455667788"),
    ("external_authenticate sm4", lambda: c.external_authenticate(0x0A, bytes(range(16))),
     "0082000A10000102030405060708090A0B0C0D0E0F"),
    # EMV 4.3 Book 3 s6.5.8: empty PDOL -> 83 00
    ("gpo empty", lambda: c.get_processing_options(), "80A8000002830000"),
    ("gpo pdol", lambda: c.get_processing_options(H("0000000001")), "80A80000078305000000000100"),
    # PBOC PSAM
    ("psam_des_init", lambda: c.psam_des_init(0x27, 0x01, H("0102030405060708")),
     "801A2701080102030405060708"),
    ("psam_des_crypt", lambda: c.psam_des_crypt(0x00, H("1122334455667788")),
     "80FA0000081122334455667788" "00"),
    ("psam_des_crypt mac", lambda: c.psam_des_crypt(0x05, H("AABBCCDD")), "80FA050004AABBCCDD00"),
]


@pytest.mark.parametrize("build, expected", [b[1:] for b in BUILDERS], ids=[b[0] for b in BUILDERS])
def test_builder_encodes_to_hand_written_hex(build, expected):
    cmd = build()
    assert cmd.to_bytes() == H(expected)
    assert Command.from_bytes(H(expected)) == cmd


def test_ssc_df_name_is_sx1_sh_and_gbk_shehuibaozhang():
    assert c.SSC_DF_NAME == H("7378312E73682EC9E7BBE1B1A3D5CF")
    assert len(c.SSC_DF_NAME) == 15


def test_select_ssc_is_case_3_without_le():
    cmd = c.select_ssc()
    assert cmd.case == 3 and cmd.le is None


@pytest.mark.parametrize("record", [0, 1, 0x7F, 0xFE, 0xFF])
def test_read_record_record_number_goes_in_p1(record):
    assert c.read_record(record).to_bytes()[2] == record


def test_read_record_sfi_out_of_range_is_a_format_error():
    with pytest.raises(APDUFormatError):
        c.read_record(1, sfi=32)  # P2 would be 0x104


@pytest.mark.parametrize("offset", [0x8000, 0x10000, -1])
def test_read_binary_rejects_offsets_outside_15_bits(offset):
    with pytest.raises(APDUFormatError):
        c.read_binary(offset)


@pytest.mark.parametrize("fid", [0x10000, -1])
def test_select_fid_rejects_fids_outside_two_bytes(fid):
    with pytest.raises(APDUFormatError):
        c.select_fid(fid)


# --- secrets in traces --------------------------------------------------------------------------

def test_verify_trace_hides_the_pin():
    cmd = c.verify(H("123456"))
    text = cmd.trace()
    assert "12 34 56" not in text and "123456" not in text
    assert "00 20 00 00" in text and "3 secret bytes" in text
    assert str(cmd) == text
    assert cmd.secret


@pytest.mark.parametrize("cmd, digits", [
    (c.change_pin(H("123456"), H("654321")), ["12 34 56", "65 43 21"]),
    (c.reload_pin(H("135790"), H("A1B2C3D4")), ["13 57 90", "A1 B2 C3 D4"]),
])
def test_pin_management_traces_hide_pins_and_mac(cmd, digits):
    text = cmd.trace()
    for d in digits:
        assert d not in text
    assert "7 secret bytes" in text


def test_secret_trace_shows_le():
    cmd = Command(0x00, 0x88, 0, 1, H("0102030405060708"), le=8, secret=True)
    assert cmd.trace() == "00 88 00 01 [8 secret bytes] Le=8"


def test_normal_trace_is_spaced_upper_hex():
    assert c.read_record(1, sfi=5).trace() == "00 B2 01 2C 00"


def test_secret_read_record_without_data_still_traces_header():
    assert c.read_record(1, secret=True).trace() == "00 B2 01 04 00"


def test_secret_flag_does_not_change_equality_or_bytes():
    a = Command(0, 0x20, 0, 0, H("123456"))
    b = Command(0, 0x20, 0, 0, H("123456"), secret=True)
    assert a == b and a.to_bytes() == b.to_bytes()


# --- cases 1-4, short and extended --------------------------------------------------------------

DATA256 = bytes(range(256))
DATA300 = bytes(i % 251 for i in range(300))

CASES = [
    # (command, hand-written bytes, case, extended)
    ("1", Command(0x00, 0xA4, 0x04, 0x00), "00A40400", 1, False),
    ("2S", Command(0x00, 0x84, 0, 0, le=8), "0084000008", 2, False),
    ("2S le 256", Command(0x00, 0xB0, 0, 0, le=256), "00B0000000", 2, False),
    ("2S le 255", Command(0x00, 0xB0, 0, 0, le=255), "00B00000FF", 2, False),
    ("3S", Command(0x00, 0xA4, 0, 0, H("3F00")), "00A40000023F00", 3, False),
    ("3S lc 255", Command(0x00, 0xDC, 1, 4, bytes(255)), "00DC0104FF" + "00" * 255, 3, False),
    ("4S", Command(0x00, 0x88, 0, 0, H("01020304"), le=256), "008800000401020304" "00", 4, False),
    ("4S le 8", Command(0x00, 0x88, 0, 1, H("AA"), le=8), "0088000101AA08", 4, False),
    ("2E", Command(0x00, 0xB0, 0, 0, le=300), "00B0000000012C", 2, True),
    ("2E le 65536", Command(0x00, 0xB0, 0, 0, le=65536), "00B00000000000", 2, True),
    ("2E forced", Command(0x00, 0x84, 0, 0, le=8, extended=True), "00840000000008", 2, True),
    ("2E forced le 256", Command(0x00, 0x84, 0, 0, le=256, extended=True), "00840000000100", 2, True),
    ("3E", Command(0x00, 0xDC, 1, 4, DATA256), "00DC0104000100" + DATA256.hex(), 3, True),
    ("3E forced", Command(0x00, 0xA4, 0, 0, H("3F00"), extended=True), "00A4000000" "0002" "3F00", 3, True),
    ("4E forced le 65536", Command(0x00, 0x88, 0, 0, H("3F00"), le=65536, extended=True),
     "00880000" "000002" "3F00" "0000", 4, True),
    ("4E by data", Command(0x80, 0xFA, 0, 0, DATA300, le=256), "80FA0000" "00012C" + DATA300.hex() + "0100",
     4, True),
    ("4E by le", Command(0x80, 0xFA, 0, 0, H("11"), le=257), "80FA0000" "000001" "11" "0101", 4, True),
]


@pytest.mark.parametrize("cmd, hexa, case, ext", [x[1:] for x in CASES], ids=[x[0] for x in CASES])
def test_case_encodes_and_decodes(cmd, hexa, case, ext):
    assert cmd.case == case
    assert cmd.is_extended is ext
    raw = H(hexa)
    assert cmd.to_bytes() == raw
    back = Command.from_bytes(raw)
    assert back.to_bytes() == raw
    assert (back.cla, back.ins, back.p1, back.p2, back.data, back.le) == (
        cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le)
    assert back.case == case and back.is_extended is ext


def test_from_bytes_accepts_bytearray():
    assert Command.from_bytes(bytearray(H("0084000008"))) == Command(0, 0x84, 0, 0, le=8)


def test_data_given_as_bytearray_is_stored_as_bytes():
    cmd = Command(0, 0xA4, 0, 0, bytearray(b"\x3f\x00"))
    assert type(cmd.data) is bytes


def test_with_le_keeps_header_data_and_secret():
    cmd = Command(0x80, 0x5E, 1, 0, H("123456FF654321"), le=8, extended=True, secret=True)
    again = cmd.with_le(0x20)
    assert (again.cla, again.ins, again.p1, again.p2, again.data) == (0x80, 0x5E, 1, 0, H("123456FF654321"))
    assert again.le == 0x20 and again.extended and again.secret


def test_command_is_frozen():
    cmd = Command(0, 0xA4)
    with pytest.raises(AttributeError):
        cmd.cla = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw, why", [
    ("", "empty"),
    ("00", "1 byte"),
    ("00A404", "3 bytes"),
    ("00A4000002" "3F", "short Lc 2, 1 byte follows"),
    ("00A4000002" "3F0000" "00", "short Lc 2, 4 bytes follow"),
    ("00A4000005" "3F00", "short Lc larger than the rest"),
    ("00A40000" "0000" , "truncated extended (2 bytes)"),
    ("00A40000" "000000" "3F", "extended Lc 0 with data"),
    ("00A40000" "000000" "0000", "extended Lc 0 with Le"),
    ("00A40000" "000005" "3F00", "extended Lc 5, 2 bytes follow"),
    ("00A40000" "000002" "3F00" "00", "extended Lc 2, case 4E with a 1-byte Le"),
    ("00A40000" "000002" "3F00" "000000", "extended Lc 2, 3 trailing bytes"),
    ("FFA40000", "CLA FF is PPS"),
])
def test_from_bytes_rejects(raw, why):
    with pytest.raises(APDUFormatError):
        Command.from_bytes(H(raw))


@pytest.mark.parametrize("kwargs", [
    dict(cla=0x100, ins=0),
    dict(cla=-1, ins=0),
    dict(cla=0xFF, ins=0),
    dict(cla=0, ins=0x100),
    dict(cla=0, ins=0, p1=256),
    dict(cla=0, ins=0, p2=-1),
    dict(cla="00", ins=0),
    dict(cla=0, ins=0, p1=1.0),
    dict(cla=0, ins=0, data="3F00"),
    dict(cla=0, ins=0, data=[0x3F, 0x00]),
    dict(cla=0, ins=0, data=bytes(65536)),
    dict(cla=0, ins=0, le=0),
    dict(cla=0, ins=0, le=-1),
    dict(cla=0, ins=0, le=65537),
    dict(cla=0, ins=0, le="8"),
])
def test_out_of_range_fields_raise_apdu_format_error(kwargs):
    with pytest.raises(APDUFormatError) as info:
        Command(**kwargs)
    err = info.value
    assert isinstance(err, MalformedError) and isinstance(err, SSCardError)
    assert exit_code(err) == 5
    assert str(err)  # a readable message


def test_limits_are_accepted():
    assert len(Command(0, 0, data=bytes(65535)).to_bytes()) == 4 + 3 + 65535
    assert Command(0xFE, 0xFF, 0xFF, 0xFF, le=65536).to_bytes() == H("FEFFFFFF000000")
    assert Command(0, 0, le=1).to_bytes() == H("0000000001")


def test_validation_survives_python_O():
    """Validation must not be `assert`: it must still raise under ``python -O``."""
    code = textwrap.dedent("""
        from sscard.apdu.command import Command
        from sscard.apdu.errors import APDUFormatError
        assert False, "unreachable under -O"
        results = []
        for make in (lambda: Command(0x100, 0), lambda: Command(0, 0, le=0),
                     lambda: Command(0, 0, data=bytes(65536)),
                     lambda: Command.from_bytes(bytes.fromhex("00A40000023F")),
                     lambda: Command.from_bytes(bytes.fromhex("00A400000000003F"))):
            try:
                make()
                results.append("accepted")
            except APDUFormatError:
                results.append("APDUFormatError")
        print(__debug__, ",".join(results))
    """)
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False " + ",".join(["APDUFormatError"] * 5)


# --- properties ---------------------------------------------------------------------------------

@st.composite
def commands(draw) -> Command:
    big = draw(st.booleans())
    data = draw(st.binary(max_size=600 if big else 40))
    le = draw(st.one_of(st.none(), st.integers(1, 300), st.integers(1, 65536), st.sampled_from([256, 257, 65536])))
    return Command(
        draw(st.integers(0, 0xFE)), draw(st.integers(0, 0xFF)), draw(st.integers(0, 0xFF)),
        draw(st.integers(0, 0xFF)), data, le, draw(st.booleans()),
    )


def normalised(cmd: Command) -> Command:
    """What decoding can recover: ``extended`` is the length form actually used (none in case 1)."""
    return Command(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, cmd.le, cmd.is_extended and cmd.case != 1)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands())
def test_round_trip(cmd):
    raw = cmd.to_bytes()
    back = Command.from_bytes(raw)
    assert back == normalised(cmd)
    assert back.to_bytes() == raw
    assert back.case == cmd.case


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.binary(max_size=12),
    st.binary(min_size=4, max_size=300),
    # bytes close to a valid APDU: a valid encoding with a byte dropped, added or flipped
    st.tuples(commands(), st.integers(0, 7), st.integers(0, 0xFF)).map(
        lambda t: _mutate(t[0].to_bytes(), t[1], t[2])),
))
def test_from_bytes_on_arbitrary_bytes_is_an_apdu_or_a_format_error(raw):
    try:
        cmd = Command.from_bytes(raw)
    except APDUFormatError:
        return
    assert isinstance(cmd, Command)
    # anything accepted is canonical: it re-encodes to exactly the same bytes
    assert cmd.to_bytes() == raw


def _mutate(raw: bytes, op: int, value: int) -> bytes:
    pos = value % (len(raw) + 1)
    if op == 0:
        return raw[:-1]
    if op == 1:
        return raw + bytes((value,))
    if op == 2 and pos < len(raw):
        return raw[:pos] + bytes((value,)) + raw[pos + 1:]
    if op == 3:
        return raw[:pos]
    return raw
