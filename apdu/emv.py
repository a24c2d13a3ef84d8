"""EMV data the bank application's read needs (EMV 4.3 Book 3; PBOC 3.0 follows it): data object
lists, the AFL, the processing options' two formats, and the account data of the records.

Pure bytes, no card I/O (terminal/bankaccount.py reads the card).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sscard.apdu.errors import CardDataError, TLVError
from sscard.apdu.tlv import BerTlv, ber_decode, ber_find

#: what this terminal answers for the data objects a PDOL may ask (EMV Book 3 s5.4; Book 4 s6.5):
#: terminal country code and transaction currency (China, 156), transaction type (00 goods and
#: services); the date and the unpredictable number are made per call
COUNTRY_CHINA = bytes.fromhex("0156")
TAG_COUNTRY, TAG_CURRENCY, TAG_DATE, TAG_TYPE, TAG_UNPREDICTABLE = 0x9F1A, 0x5F2A, 0x9A, 0x9C, 0x9F37


def parse_dol(dol: bytes) -> list[tuple[int, int]]:
    """A data object list: (tag, length) pairs, tags of one or more bytes, lengths of one byte (EMV
    Book 3 s5.4). TLVError when it is cut short."""
    out, i = [], 0
    while i < len(dol):
        start = i
        i += 1
        if dol[start] & 0x1F == 0x1F:  # more tag bytes follow, each but the last with bit 8 set
            while i < len(dol) and dol[i] & 0x80:
                i += 1
            i += 1
        if i >= len(dol):
            raise TLVError(f"data object list cut short at offset {start}")
        out.append((int.from_bytes(dol[start:i], "big"), dol[i]))
        i += 1
    return out


def dol_data(dol: bytes, values: dict[int, bytes]) -> bytes:
    """The terminal's data for a DOL: each object's value from ``values`` right-aligned to its length
    (leading zeros added, or its rightmost bytes kept), zeros for an object the terminal does not know
    (EMV Book 3 s5.4)."""
    out = bytearray()
    for tag, length in parse_dol(dol):
        value = values.get(tag, b"")
        out += value[-length:] if len(value) >= length else bytes(length - len(value)) + value
    return bytes(out)


def pdol_values(today: dt.date, unpredictable: bytes) -> dict[int, bytes]:
    """What this terminal says of itself in a PDOL (module constants)."""
    return {TAG_COUNTRY: COUNTRY_CHINA, TAG_CURRENCY: COUNTRY_CHINA, TAG_TYPE: b"\x00",
            TAG_DATE: bytes.fromhex(f"{today:%y%m%d}"), TAG_UNPREDICTABLE: unpredictable}


@dataclass(frozen=True)
class AFLEntry:
    """One entry of the Application File Locator: records ``first``..``last`` of EF ``sfi``."""

    sfi: int
    first: int
    last: int


def afl_from_processing_options(data: bytes) -> list[AFLEntry]:
    """The AFL in GET PROCESSING OPTIONS' answer, format 1 (``80``: AIP then AFL) or format 2 (``77``
    with ``94``) (EMV Book 3 s6.5.8.4). CardDataError when the answer is neither or the AFL is wrong."""
    try:
        objects = ber_decode(data)
        if len(objects) != 1 or objects[0].tag not in (0x77, 0x80):
            raise CardDataError("The bank application's processing options are not in an EMV format")
        afl = objects[0].value[2:] if objects[0].tag == 0x80 else ber_find(data, 0x94)
    except TLVError as err:
        raise CardDataError(f"The bank application's processing options are malformed ({err})") from None
    if not afl or len(afl) % 4:
        raise CardDataError("The bank application names no records to read (its AFL is empty or malformed)")
    entries = [AFLEntry(afl[i] >> 3, afl[i + 1], afl[i + 2]) for i in range(0, len(afl), 4)]
    if any(not 1 <= e.sfi <= 30 or not 1 <= e.first <= e.last for e in entries):
        raise CardDataError("The bank application's AFL names records that cannot exist")
    return entries


def record_objects(record: bytes) -> list[BerTlv]:
    """The data objects of one record of the application: a ``70`` template (EMV Book 3 s7.2)."""
    try:
        objects = ber_decode(record)
        if len(objects) != 1 or objects[0].tag != 0x70:
            raise CardDataError("A record of the bank application is not an EMV record template (70)")
        return objects[0].children
    except TLVError as err:
        raise CardDataError(f"A record of the bank application is malformed ({err})") from None


def digits(value: bytes) -> str:
    """A ``cn`` value (compressed numeric): BCD digits, trailing F padding dropped."""
    text = value.hex().upper().rstrip("F")
    if not text.isdigit():
        raise CardDataError("The bank application's account number is not digits")
    return text


def track2_account(value: bytes) -> tuple[str, str]:
    """(PAN, expiry YYMM) from Track 2 Equivalent Data (tag 57: PAN, separator D, YYMM, ...)."""
    text = value.hex().upper()
    pan, separator, rest = text.partition("D")
    if not separator or not pan.isdigit() or len(rest) < 4 or not rest[:4].isdigit():
        raise CardDataError("The bank application's track 2 data is malformed")
    return pan, rest[:4]
