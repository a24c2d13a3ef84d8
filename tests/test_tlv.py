"""TLV codecs (apdu/tlv.py): the card's simple records and BER-TLV for the bank application."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sscard.apdu.errors import MalformedError, SSCardError, TLVError
from sscard.apdu.tlv import BerTlv, ber_decode, ber_encode, ber_find, decode_simple, encode_simple
from sscard.terminal.cli.exits import exit_code

H = bytes.fromhex


# --- simple TLV ---------------------------------------------------------------------------------

def test_decode_card_identification_record():
    """docs/reference/card.md: ``00 B2 01 04 00`` -> ``01 10 330300D15600000599110145FFFFFFFF``."""
    assert decode_simple(H("0110330300D15600000599110145FFFFFFFF")) == {
        0x01: H("330300D15600000599110145FFFFFFFF")}


def test_encode_simple_hand_written():
    assert encode_simple(0x09, "张伟".encode("gbk")) == H("0904D5C5CEB0")
    assert encode_simple(0x02, b"") == H("0200")
    assert encode_simple(0x4E, bytes(255))[:2] == H("4EFF")


def test_decode_several_and_empty():
    assert decode_simple(H("0201330300")) == {0x02: b"3", 0x03: b""}
    assert decode_simple(b"") == {}


@pytest.mark.parametrize("pad", ["00", "FF", "0000FFFF00", "FF" * 20])
def test_trailing_padding_is_skipped(pad):
    assert decode_simple(H("0A0131" + pad)) == {0x0A: b"1"}


def test_record_entirely_padding_is_empty():
    assert decode_simple(H("FFFFFFFF")) == {}


def test_padding_bytes_inside_a_value_are_kept():
    assert decode_simple(H("0104AA00FF00")) == {0x01: H("AA00FF00")}


def test_padding_not_allowed_is_a_truncated_header():
    with pytest.raises(TLVError):
        decode_simple(H("0A0131FF"), allow_padding=False)
    assert decode_simple(H("0A0131"), allow_padding=False) == {0x0A: b"1"}


@pytest.mark.parametrize("raw, why", [
    ("01", "header of 1 byte"),
    ("0A013102", "second header truncated"),
    ("0105AABB", "length runs past the data"),
    ("01FF00FF" + "00" * 254, "255 claimed in the three-byte length, 254 present"),
    ("01FF00", "three-byte length truncated"),
    ("0A01310A0132", "duplicate tag"),
    ("0A0131" "0001" "0A0132", "duplicate tag after another"),
])
def test_malformed_simple_tlv(raw, why):
    with pytest.raises(TLVError) as info:
        decode_simple(H(raw))
    assert isinstance(info.value, MalformedError) and isinstance(info.value, SSCardError)
    assert exit_code(info.value) == 5


def test_malformed_messages_say_where():
    with pytest.raises(TLVError, match="duplicate tag 0A"):
        decode_simple(H("0A01310A0132"))
    with pytest.raises(TLVError, match="05 bytes|claims 5 bytes"):
        decode_simple(H("0105AABB"))


@pytest.mark.parametrize("tag, value", [(0x100, b""), (-1, b""), (0x01, bytes(65536))])
def test_encode_simple_rejects(tag, value):
    with pytest.raises(TLVError):
        encode_simple(tag, value)


@pytest.mark.parametrize("tag", [0x00, 0xFF])
def test_encode_simple_rejects_padding_tags(tag):
    with pytest.raises(TLVError):
        encode_simple(tag, b"")


simple_records = st.dictionaries(st.integers(1, 0xFE), st.binary(max_size=255), max_size=12)


@settings(max_examples=300, deadline=None)
@given(simple_records, st.sampled_from([b"", b"\x00", b"\xff\xff", b"\x00\xff" * 5]))
def test_simple_round_trip(record, padding):
    raw = b"".join(encode_simple(t, v) for t, v in record.items())
    assert decode_simple(raw + padding) == record
    assert decode_simple(raw, allow_padding=False) == record


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(0x01, 0xFE), st.binary(max_size=40), max_size=8))
def test_simple_round_trip_any_valid_tag_without_padding(record):
    raw = b"".join(encode_simple(t, v) for t, v in record.items())
    assert decode_simple(raw, allow_padding=False) == record


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_decode_simple_on_arbitrary_bytes_raises_only_tlv_error(raw, padding):
    try:
        out = decode_simple(raw, allow_padding=padding)
    except TLVError:
        return
    assert all(isinstance(k, int) and isinstance(v, bytes) for k, v in out.items())


# --- BER-TLV ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag, value, expected", [
    (0x5A, H("6217000010000000123F"), "5A0A6217000010000000123F"),
    (0x9F0B, b"ZHANG/WEI", "9F0B095A48414E472F574549"),
    (0x5F20, b"ZHANG WEI", "5F20095A48414E4720574549"),
    (0x5F34, H("01"), "5F340101"),
    (0x57, b"", "5700"),
    (0x70, bytes(127), "707F" + "00" * 127),
    (0x70, bytes(128), "708180" + "00" * 128),
    (0x70, bytes(255), "7081FF" + "00" * 255),
    (0x70, bytes(256), "70820100" + "00" * 256),
    (0x70, bytes(0x1234), "70821234" + "00" * 0x1234),
    (0xDF8101, b"\x01", "DF81010101"),
])
def test_ber_encode_and_decode_hand_written(tag, value, expected):
    raw = H(expected)
    assert ber_encode(tag, value) == raw
    assert ber_decode(raw) == [BerTlv(tag, value)]


def test_ber_encode_three_byte_length():
    assert ber_encode(0x70, bytes(0x10000))[:5] == H("7083010000")


@pytest.mark.parametrize("tag", [0x1F, 0x9F, 0x9F8F, 0x5F80 | 0x1F00, -1, 0x9F81])
def test_ber_encode_rejects_invalid_tags(tag):
    with pytest.raises(TLVError):
        ber_encode(tag, b"")


def test_constructed_70_with_5a_inside():
    inner = ber_encode(0x5A, H("6217000010000000123F")) + ber_encode(0x5F24, H("301231"))
    record = ber_encode(0x70, inner)
    assert record[:2] == H("7012")
    (obj,) = ber_decode(record)
    assert obj.tag == 0x70 and obj.constructed
    assert obj.children == [BerTlv(0x5A, H("6217000010000000123F")), BerTlv(0x5F24, H("301231"))]
    assert ber_find(record, 0x5A) == H("6217000010000000123F")
    assert ber_find(record, 0x5F24) == H("301231")
    assert ber_find(record, 0x57) is None


def test_ber_find_in_nested_templates_depth_first():
    """A GPO response template 77 holding 70 holding 5A; the first 5A found depth-first wins."""
    deep = ber_encode(0x77, ber_encode(0x70, ber_encode(0x5A, H("11"))) + ber_encode(0x5A, H("22")))
    assert ber_find(deep, 0x5A) == H("11")
    assert ber_find(deep, 0x70) == ber_encode(0x5A, H("11"))


def test_ber_find_does_not_look_inside_primitive_values():
    # 5A is primitive: its value happens to look like a 57 TLV, which must not be found
    raw = ber_encode(0x5A, H("570111"))
    assert ber_find(raw, 0x57) is None
    assert BerTlv(0x5A, H("570111")).children == []


@pytest.mark.parametrize("tag, constructed", [(0x70, True), (0x77, True), (0x61, True), (0xBF0C, True),
                                              (0x5A, False), (0x9F0B, False), (0x5F20, False), (0x00, False)])
def test_constructed_bit(tag, constructed):
    assert BerTlv(tag, b"").constructed is constructed


def test_padding_between_objects_is_skipped():
    raw = H("00") + ber_encode(0x5A, H("01")) + H("FFFF00") + ber_encode(0x57, H("02")) + H("00")
    assert ber_decode(raw) == [BerTlv(0x5A, H("01")), BerTlv(0x57, H("02"))]


@pytest.mark.parametrize("raw, why", [
    ("5A80" "0102" "0000", "indefinite length"),
    ("9F", "truncated two-byte tag"),
    ("9F81", "truncated three-byte tag"),
    ("5A", "missing length"),
    ("5A05" "0102", "value shorter than length"),
    ("5A81", "81 without its byte"),
    ("5A8201", "82 with one byte"),
    ("5A820100" "00", "82 0100 with one byte"),
    ("5A84" "00000001" "00", "length of length 4"),
    ("5A87" "00", "length of length 7"),
    ("9F8181818101" "0100", "tag over 4 bytes (continuation after 4)"),
    ("70035A0501", "truncated inside constructed: outer ok, inner found lazily"),
])
def test_malformed_ber(raw, why):
    with pytest.raises(TLVError):
        objs = ber_decode(H(raw))
        for obj in objs:  # children are decoded on demand
            _ = obj.children


def test_indefinite_length_message():
    with pytest.raises(TLVError, match="indefinite"):
        ber_decode(H("708000"))


def test_ber_find_propagates_malformed_children():
    with pytest.raises(TLVError):
        ber_find(H("70035A0501"), 0x5A)


def test_five_byte_tag_is_rejected():
    with pytest.raises(TLVError):
        ber_decode(H("1F81818101" "01AA"))


def test_ber_find_on_deep_nesting_raises_only_tlv_error():
    data = ber_encode(0x5A, b"\x01")
    for _ in range(3000):
        data = ber_encode(0x70, data)
    try:
        found = ber_find(data, 0x9F99)
    except TLVError:
        return
    assert found is None


ber_tags = st.sampled_from([0x5A, 0x57, 0x50, 0x84, 0x9F0B, 0x5F20, 0x5F24, 0x5F34, 0xDF8101, 0x8C, 0x01])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ber_tags, st.binary(max_size=300)), max_size=8))
def test_ber_round_trip(objects):
    raw = b"".join(ber_encode(t, v) for t, v in objects)
    assert ber_decode(raw) == [BerTlv(t, v) for t, v in objects]
    inside = ber_encode(0x70, raw)
    for t, _v in objects:
        assert ber_find(inside, t) == next(val for tag, val in objects if tag == t)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.binary(min_size=40, max_size=300)))
def test_ber_decode_on_arbitrary_bytes_raises_only_tlv_error(raw):
    try:
        objs = ber_decode(raw)
    except TLVError:
        return
    for obj in objs:
        assert isinstance(obj.tag, int) and isinstance(obj.value, bytes)
        # re-encoding a decoded object gives back a sequence ber_decode reads the same
        try:
            again = ber_encode(obj.tag, obj.value)
        except TLVError:
            continue  # tags ber_decode accepts but ber_encode refuses (e.g. 1F 80 ...)
        assert ber_decode(again) == [obj]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), ber_tags)
def test_ber_find_on_arbitrary_bytes_raises_only_tlv_error(raw, tag):
    try:
        found = ber_find(raw, tag)
    except TLVError:
        return
    assert found is None or isinstance(found, bytes)


# --- edge cases found by differential tests (issue: defects found by outside eyes) ------------------

@pytest.mark.parametrize("tag", [0x00, 0xFF, 0xFF01, 0x00FF])
def test_ber_encode_refuses_a_tag_whose_first_byte_is_padding(tag):
    with pytest.raises(TLVError, match="not a valid BER tag"):
        ber_encode(tag, b"\x01")


@pytest.mark.parametrize("record", [bytes.fromhex("0101AA" "0001BB"), bytes.fromhex("FF01BB" "0101AA")])
def test_decode_simple_refuses_tag_00_or_ff_inside_a_record(record):
    with pytest.raises(TLVError, match="not a valid tag"):
        decode_simple(record)


@pytest.mark.parametrize("size", [254, 255, 256, 65535])
def test_a_simple_tlv_of_255_bytes_or_more_has_the_three_byte_length(size):
    encoded = encode_simple(0x5A, bytes(size))
    header = encoded[:4] if size >= 255 else encoded[:2]
    assert header == (bytes((0x5A, 0xFF)) + size.to_bytes(2, "big") if size >= 255 else bytes((0x5A, size)))
    assert decode_simple(encoded, allow_padding=False) == {0x5A: bytes(size)}
    with pytest.raises(TLVError):
        encode_simple(0x5A, bytes(65536))
