"""The card's data items (apdu/catalogue.py) against docs/card-profile.md, "Files, records, tags"."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from sscard.apdu.catalogue import BY_KEY, CARD_ITEMS, EF05, EF06, ETHNICITY, HOLDER_ITEMS, ITEMS, SEX
from sscard.apdu.errors import CardDataError, SSCardError
from sscard.apdu.tlv import decode_simple, encode_simple
from sscard.terminal.cli.exits import exit_code

H = bytes.fromhex


# --- the table ----------------------------------------------------------------------------------

def test_ef05_record_n_holds_tag_n():
    assert [(i.fid, i.record, i.tag) for i in CARD_ITEMS] == [(EF05, n, n) for n in range(1, 8)]


def test_ef06_record_order():
    """docs/reference/card.md: EF06 record 1 = 08, 2 = 09, 3 = 4E, 4 = 0A, 5 = 0B, 6 = 0C, 7 = 0D."""
    assert [(i.fid, i.record, i.tag) for i in HOLDER_ITEMS] == [
        (EF06, 1, 0x08), (EF06, 2, 0x09), (EF06, 3, 0x4E), (EF06, 4, 0x0A),
        (EF06, 5, 0x0B), (EF06, 6, 0x0C), (EF06, 7, 0x0D)]


def test_lengths_and_encodings_match_card_profile():
    table = {  # docs/card-profile.md
        "card_identification_code": (16, "binary"), "card_type": (1, "an"), "spec_version": (4, "an"),
        "initialising_institution": (12, "cn"), "issue_date": (4, "date"), "expiry_date": (4, "date"),
        "card_number": (9, "an"), "social_security_number": (18, "an"), "name": (30, "gbk"),
        "name_extension": (20, "gbk"), "sex": (1, "an"), "ethnicity": (1, "cn"), "birthplace": (3, "cn"),
        "birth_date": (4, "date"),
    }
    assert {i.key: (i.length, i.encoding) for i in ITEMS} == table


def test_the_id_number_its_pieces_and_the_card_number_are_sensitive():
    """Birthplace and birth date are the ID number's address code and birth date (GB 11643): traced in
    clear beside the masked number (330302********1239) they give it back whole."""
    assert {i.key for i in ITEMS if i.sensitive} == {"card_number", "social_security_number", "birthplace",
                                                     "birth_date", "name", "name_extension",
                                                     "card_identification_code"}


def test_sfi_is_low_five_bits_of_fid():
    assert BY_KEY["card_type"].sfi == 5 and BY_KEY["name"].sfi == 6


def test_keys_are_unique_and_tags_unique():
    assert len(BY_KEY) == len(ITEMS) == 14
    assert len({i.tag for i in ITEMS}) == 14


def test_code_tables():
    assert SEX["1"] == "男" and SEX["2"] == "女"
    assert ETHNICITY[1] == "汉族" and ETHNICITY[56] == "基诺族" and ETHNICITY[98] == "外国血统"
    assert len(ETHNICITY) == 58


# --- decoding -----------------------------------------------------------------------------------

def test_decode_gbk_name():
    assert BY_KEY["name"].decode(H("D5C5CEB0")) == "张伟"


def test_decode_minority_name_with_middle_dot():
    # 阿依古丽·买买提: the interpunct is GBK A1A4
    raw = H("B0A2D2C0B9C5C0F6A1A4C2F2C2F2CCE1")
    assert BY_KEY["name"].decode(raw) == "阿依古丽·买买提"


@pytest.mark.parametrize("pad", ["00", "FFFF", "2020", "0000000000"])
def test_gbk_trailing_padding_is_stripped(pad):
    assert BY_KEY["name"].decode(H("D5C5CEB0" + pad)) == "张伟"


def test_decode_date_bcd():
    assert BY_KEY["birth_date"].decode(H("19800101")) == dt.date(1980, 1, 1)
    assert BY_KEY["expiry_date"].decode(H("20351231")) == dt.date(2035, 12, 31)


def test_decode_date_leap_day():
    assert BY_KEY["issue_date"].decode(H("20240229")) == dt.date(2024, 2, 29)


@pytest.mark.parametrize("raw", ["20231301", "20230230", "20230100", "00000000", "2023010F", "202301",
                                 "FFFFFFFF", "1980A101", ""])
def test_invalid_date_names_the_item(raw):
    with pytest.raises(CardDataError) as info:
        BY_KEY["issue_date"].decode(H(raw))
    assert "issue date" in str(info.value) and "(05)" in str(info.value)
    assert exit_code(info.value) == 5 and isinstance(info.value, SSCardError)


def test_invalid_birth_date_names_tag_0d():
    with pytest.raises(CardDataError, match=r"birth date \(0D\)"):
        BY_KEY["birth_date"].decode(H("20231301"))


@pytest.mark.parametrize("key, raw, expected", [
    ("initialising_institution", "330300", "330300"),
    ("initialising_institution", "33030012345F", "33030012345"),
    ("initialising_institution", "330300FFFFFF", "330300"),
    ("ethnicity", "01", "01"),
    ("ethnicity", "98", "98"),
    ("birthplace", "110101", "110101"),
    ("birthplace", "FFFFFF", ""),
])
def test_decode_cn_with_f_padding(key, raw, expected):
    assert BY_KEY[key].decode(H(raw)) == expected


@pytest.mark.parametrize("raw", ["1F23", "A1", "3303F0"])
def test_cn_with_non_digit_nibbles_is_malformed(raw):
    with pytest.raises(CardDataError, match="birthplace"):
        BY_KEY["birthplace"].decode(H(raw))


def test_decode_an_strips_padding():
    assert BY_KEY["card_number"].decode(b"A12345678") == "A12345678"
    assert BY_KEY["spec_version"].decode(b"3.00") == "3.00"
    assert BY_KEY["social_security_number"].decode(b"11010119800101123X") == "11010119800101123X"
    assert BY_KEY["card_type"].decode(b"\xff") == ""


@pytest.mark.parametrize("key, raw", [
    ("card_number", "A1234567" "01"),       # control character
    ("card_number", "C9E7"),               # not ASCII
    ("name", "D5"),                        # half a GBK character
    ("name", "80" "41"),                   # invalid lead byte
    ("name", "D5C509CEB0"),                # tab inside
])
def test_malformed_text_names_the_item(key, raw):
    item = BY_KEY[key]
    with pytest.raises(CardDataError) as info:
        item.decode(H(raw))
    assert item.name_en in str(info.value) and f"({item.tag:02X})" in str(info.value)


def test_decode_binary_is_upper_hex():
    assert BY_KEY["card_identification_code"].decode(H("330300D15600000599110145FFFFFFFF")) == (
        "330300D15600000599110145FFFFFFFF")


@pytest.mark.parametrize("key", [i.key for i in ITEMS])
def test_over_length_is_card_data_error(key):
    item = BY_KEY[key]
    with pytest.raises(CardDataError) as info:
        item.decode(b"1" * (item.length + 1))
    assert item.name_en in str(info.value) and str(item.length) in str(info.value)


def test_error_messages_of_sensitive_items_do_not_carry_the_value():
    """A malformed ID number must not be echoed whole in the clerk's message."""
    bad = b"11010119800101123\x01"
    with pytest.raises(CardDataError) as info:
        BY_KEY["social_security_number"].decode(bad)
    assert "11010119800101123" not in str(info.value)


# --- encoding and round trips -------------------------------------------------------------------

SAMPLES = {
    "card_identification_code": "330300D15600000599110145FFFFFFFF",
    "card_type": "3",
    "spec_version": "2.00",
    "initialising_institution": "330300123456789012345678",
    "issue_date": dt.date(2016, 5, 20),
    "expiry_date": dt.date(2026, 5, 20),
    "card_number": "A12345678",
    "social_security_number": "11010119800101123X",
    "name": "阿依古丽·买买提",
    "name_extension": "艾力",
    "sex": "2",
    "ethnicity": "05",
    "birthplace": "650102",
    "birth_date": dt.date(1980, 1, 1),
}


@pytest.mark.parametrize("key", list(SAMPLES))
def test_round_trip_per_item(key):
    item = BY_KEY[key]
    raw = item.encode(SAMPLES[key])
    assert len(raw) <= item.length
    assert item.decode(raw) == SAMPLES[key]
    # and through the record's simple TLV, as the card sends it, padded
    record = encode_simple(item.tag, raw) + b"\xff" * 4
    assert item.decode(decode_simple(record)[item.tag]) == SAMPLES[key]


@pytest.mark.parametrize("key, value, raw", [
    ("name", "张伟", "D5C5CEB0"),
    ("birth_date", dt.date(1980, 1, 1), "19800101"),
    ("birthplace", "110101", "110101"),
    ("initialising_institution", "33030", "33030F"),
    ("ethnicity", "01", "01"),
    ("card_type", "3", "33"),
    ("card_identification_code", "0102", "0102"),
])
def test_encode_hand_written(key, value, raw):
    assert BY_KEY[key].encode(value) == H(raw)


@pytest.mark.parametrize("key, value", [
    ("name", "张" * 16),                         # 32 bytes of GBK, over 30
    ("name_extension", "买" * 11),
    ("card_number", "A123456789"),
    ("social_security_number", "1" * 19),
    ("birthplace", "1101011"),
    ("card_identification_code", "00" * 17),
    ("ethnicity", "123"),
])
def test_encode_over_length_is_card_data_error(key, value):
    with pytest.raises(CardDataError, match=BY_KEY[key].name_en):
        BY_KEY[key].encode(value)


@pytest.mark.parametrize("key, value", [
    ("name", "王䶮"),            # CJK extension A: outside GBK
    ("card_number", "卡12345678"),
    ("birthplace", "11O101"),   # letter O
    ("birthplace", ""),
    ("birth_date", "19800101"),  # a str, not a date
    ("birthplace", 110101),
    ("name", None),
    ("card_identification_code", "XYZ"),
])
def test_encode_rejects_values_it_cannot_store(key, value):
    with pytest.raises(CardDataError):
        BY_KEY[key].encode(value)


def test_encode_an_rejects_what_decode_rejects():
    with pytest.raises(CardDataError):
        BY_KEY["sex"].encode("\x01")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="gbk", categories=("Lo",)), min_size=1, max_size=15))
def test_gbk_name_round_trip(name):
    item = BY_KEY["name"]
    try:
        raw = item.encode(name)
    except CardDataError:
        assert len(name.encode("gbk")) > 30
        return
    assert item.decode(raw) == name


@settings(max_examples=300, deadline=None)
@given(st.dates(min_value=dt.date(1000, 1, 1), max_value=dt.date(9999, 12, 31)))
def test_date_round_trip(day):
    item = BY_KEY["birth_date"]
    assert item.decode(item.encode(day)) == day


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=24))
def test_cn_round_trip(digits):
    item = BY_KEY["initialising_institution"]
    assert item.decode(item.encode(digits)) == digits


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(ITEMS), st.binary(max_size=32))
def test_decode_arbitrary_bytes_raises_only_card_data_error(item, raw):
    try:
        value = item.decode(raw)
    except CardDataError:
        return
    assert isinstance(value, (str, dt.date))
