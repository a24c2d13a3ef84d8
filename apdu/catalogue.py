"""The card's data items: where each lives, its tag, length and encoding (docs/card-profile.md).

EF05 holds the card's data, EF06 the holder's; record n of EF05 holds tag n, EF06's records hold the
tags in the order of ``EF06`` below (docs/reference/card.md, "Files and records"). Encodings:

- ``an``: ASCII letters and digits; ``gbk``: Chinese text in GBK; trailing 00, FF and spaces are padding.
- ``cn``: BCD digits, right-padded with F (``33 03 00`` -> "330300").
- ``date``: BCD YYYYMMDD (4 bytes) -> :class:`datetime.date`.
- ``binary``: raw bytes, shown as upper-case hex (the card identification code).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sscard.apdu.errors import CardDataError

#: FIDs of the record files inside the SSC application
EF05 = 0xEF05
EF06 = 0xEF06


@dataclass(frozen=True)
class DataItem:
    """One data item of the card: file, record, tag, maximum length and encoding."""

    key: str
    name_zh: str
    name_en: str
    fid: int
    record: int
    tag: int
    length: int
    encoding: str  # an | gbk | cn | date | binary
    #: kept out of APDU traces (personal data: identifiers, the name; docs/security.md)
    sensitive: bool = False

    @property
    def sfi(self) -> int:
        """Short file identifier: the FID's low 5 bits (EF05 -> 5), for READ RECORD by SFI."""
        return self.fid & 0x1F

    def decode(self, raw: bytes) -> str | dt.date:
        """Decode the value bytes; raise :class:`CardDataError` naming the item when malformed."""
        if len(raw) > self.length:
            raise CardDataError(f"The card's data is damaged: the {self.name_en} ({self.tag:02X}) is {len(raw)} bytes, over {self.length}")
        try:
            return DECODERS[self.encoding](raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise CardDataError(f"The card's data is damaged: the {self.name_en} ({self.tag:02X}) is malformed ({err})") from None

    def encode(self, value: str | dt.date) -> bytes:
        """Encode a value for a card record (used by the simulator and card personalisation)."""
        try:
            raw = ENCODERS[self.encoding](value)
        except (ValueError, UnicodeEncodeError, AttributeError, TypeError) as err:
            raise CardDataError(f"{self.name_en}: cannot encode {type(value).__name__}: {err}") from None
        if len(raw) > self.length:
            raise CardDataError(f"{self.name_en} is {len(raw)} bytes encoded, over {self.length}")
        return raw


def _strip(raw: bytes) -> bytes:
    return raw.rstrip(b"\x00\xff ")


def _decode_an(raw: bytes) -> str:
    text = _strip(raw).decode("ascii")
    if not text.isprintable():
        raise ValueError("not printable ASCII")
    return text


def _decode_gbk(raw: bytes) -> str:
    text = _strip(raw).decode("gbk")
    if not text.isprintable():
        raise ValueError("not printable text")
    return text


def _decode_cn(raw: bytes) -> str:
    digits = raw.hex().upper().rstrip("F")
    if not digits.isdigit() and digits:
        raise ValueError(f"BCD digits expected, got {raw.hex().upper()}")
    return digits


def _decode_date(raw: bytes) -> dt.date:
    digits = _decode_cn(raw)
    if len(digits) != 8:
        raise ValueError(f"date YYYYMMDD expected, got {raw.hex().upper()}")
    return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))


def _encode_an(value: str) -> bytes:
    if not value.isprintable():
        raise ValueError("not printable ASCII")
    return value.encode("ascii")


def _encode_cn(value: str) -> bytes:
    if not value.isdigit():
        raise ValueError("digits expected")
    return bytes.fromhex(value + "F" * (len(value) % 2))


DECODERS: dict[str, Callable[[bytes], str | dt.date]] = {
    "an": _decode_an,
    "gbk": _decode_gbk,
    "cn": _decode_cn,
    "date": _decode_date,
    "binary": lambda raw: raw.hex().upper(),
}

ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "an": _encode_an,
    "gbk": lambda v: v.encode("gbk"),
    "cn": _encode_cn,
    "date": lambda v: bytes.fromhex(v.strftime("%Y%m%d")),
    "binary": lambda v: bytes.fromhex(v),
}

#: EF05, card data: record n holds tag n
CARD_ITEMS: tuple[DataItem, ...] = (
    DataItem("card_identification_code", "卡的识别码", "card identification code", EF05, 1, 0x01, 16, "binary",
             sensitive=True),
    DataItem("card_type", "卡的类别", "card type", EF05, 2, 0x02, 1, "an"),
    DataItem("spec_version", "规范版本", "specification version", EF05, 3, 0x03, 4, "an"),
    DataItem("initialising_institution", "初始化机构编号", "initialising institution", EF05, 4, 0x04, 12, "cn"),
    DataItem("issue_date", "发卡日期", "issue date", EF05, 5, 0x05, 4, "date"),
    DataItem("expiry_date", "卡有效期", "expiry date", EF05, 6, 0x06, 4, "date"),
    DataItem("card_number", "卡号", "card number", EF05, 7, 0x07, 9, "an", sensitive=True),
)

#: EF06, holder data, in record order (record 3 is the name extension, tag 4E)
HOLDER_ITEMS: tuple[DataItem, ...] = (
    DataItem("social_security_number", "社会保障号码", "social security number", EF06, 1, 0x08, 18, "an",
             sensitive=True),
    DataItem("name", "姓名", "name", EF06, 2, 0x09, 30, "gbk", sensitive=True),
    DataItem("name_extension", "姓名扩展", "name extension", EF06, 3, 0x4E, 20, "gbk", sensitive=True),
    DataItem("sex", "性别", "sex", EF06, 4, 0x0A, 1, "an"),
    DataItem("ethnicity", "民族", "ethnicity", EF06, 5, 0x0B, 1, "cn"),
    # sensitive: the ID number's own pieces (GB 11643: address code, birth date), which beside the
    # masked number the screens show (330302********1239) give the whole of it back
    DataItem("birthplace", "出生地", "birthplace", EF06, 6, 0x0C, 3, "cn", sensitive=True),
    DataItem("birth_date", "出生日期", "birth date", EF06, 7, 0x0D, 4, "date", sensitive=True),
)

ITEMS: tuple[DataItem, ...] = CARD_ITEMS + HOLDER_ITEMS
BY_KEY: dict[str, DataItem] = {item.key: item for item in ITEMS}

#: GB/T 2261.1 sex codes
SEX = {"0": "未知", "1": "男", "2": "女", "9": "未说明"}

#: GB 3304 ethnicity codes (two digits, stored as one BCD byte)
ETHNICITY = dict(enumerate((
    "汉族", "蒙古族", "回族", "藏族", "维吾尔族", "苗族", "彝族", "壮族", "布依族", "朝鲜族",
    "满族", "侗族", "瑶族", "白族", "土家族", "哈尼族", "哈萨克族", "傣族", "黎族", "傈僳族",
    "佤族", "畲族", "高山族", "拉祜族", "水族", "东乡族", "纳西族", "景颇族", "柯尔克孜族", "土族",
    "达斡尔族", "仫佬族", "羌族", "布朗族", "撒拉族", "毛南族", "仡佬族", "锡伯族", "阿昌族", "普米族",
    "塔吉克族", "怒族", "乌孜别克族", "俄罗斯族", "鄂温克族", "德昂族", "保安族", "裕固族", "京族", "塔塔尔族",
    "独龙族", "鄂伦春族", "赫哲族", "门巴族", "珞巴族", "基诺族",
), start=1))
ETHNICITY.update({97: "其他", 98: "外国血统"})

#: Bank (PBOC debit) application data objects, BER-TLV tags (EMV 4.3 Book 3 Annex A)
BANK_TAGS = {0x5A: "pan", 0x57: "track2", 0x5F20: "cardholder_name", 0x5F24: "expiry", 0x5F34: "pan_sequence"}


# --- what EF05 says about the card ---------------------------------------------------------------

#: the issuing region code: the first 6 digits of the card identification code (EF05 tag 01)
REGION_DIGITS = 6
#: the first card generation (spec version 3.00, SM4) whose cards show EF06 only to a terminal that
#: has authenticated itself (docs/card-profile.md, "Keys and security")
THIRD_GENERATION = 3


def issuing_region(card_identification_code: str) -> str:
    """The administrative region code of the card's issuer: the first 6 digits of its identification
    code (``330300D156...`` -> ``330300``)."""
    return card_identification_code[:REGION_DIGITS]


def card_generation(spec_version: str) -> int | None:
    """The card generation a spec version (EF05 tag 03) names: its major number, ``2.00`` -> 2,
    ``3.00`` -> 3; None when it has none."""
    major = spec_version.split(".")[0]
    return int(major) if major.isdigit() else None
