"""The old medical insurance card (医保卡, before the social security card): its files and commands.

The public record is silent on the old city medical insurance cards (each city issued its own), so
the whole layout is a **project convention** (docs/old-medical-card.md), shared by the simulator
(drivers/simulator/oldmedical.py) and the terminal (terminal/oldcard.py):

- the medical application is selected by DF name ``OLD_DF_NAME`` (ASCII ``YBK.OLD.MED``);
- EF15 is a record file; record n holds one simple TLV, tag n (``OLD_ITEMS`` below, decoded as
  :mod:`apdu.catalogue` decodes the SSC's items);
- the personal account balance is read with the PBOC GET BALANCE ``80 5C 00 02 04`` (JR/T 0025
  electronic deposit form): 4 bytes, big-endian, in fen;
- the card is marked replaced by UPDATE RECORD of record 5 (status) to ``05 01 01``; cards whose
  issuer did not allow it answer ``69 82``.
"""
from __future__ import annotations

from sscard.apdu.catalogue import DataItem
from sscard.apdu.command import Command
from sscard.apdu.commands import select_df_name, select_fid, update_record
from sscard.apdu.tlv import encode_simple

#: DF name of the old card's medical application (project convention)
OLD_DF_NAME = b"YBK.OLD.MED"
#: the record file holding the card's and the holder's data
EF15 = 0xEF15
#: status byte values of record 5
STATUS_IN_USE = 0x00
STATUS_REPLACED = 0x01
STATUS_RECORD = 5
STATUS_TAG = 0x05

#: EF15, record n holds tag n (project convention, docs/old-medical-card.md)
OLD_ITEMS: tuple[DataItem, ...] = (
    DataItem("card_number", "医保卡号", "medical insurance card number", EF15, 1, 0x01, 20, "an", sensitive=True),
    DataItem("social_security_number", "社会保障号码", "social security number", EF15, 2, 0x02, 18, "an",
             sensitive=True),
    DataItem("name", "姓名", "name", EF15, 3, 0x03, 30, "gbk", sensitive=True),
    DataItem("issuing_region", "发卡地区", "issuing region", EF15, 4, 0x04, 3, "cn"),
    DataItem("status", "卡状态", "card status", EF15, 5, 0x05, 1, "binary"),
)


def select_old_medical() -> Command:
    """SELECT the old card's medical application by DF name (ISO 7816-4 s7.1.1; name: convention)."""
    return select_df_name(OLD_DF_NAME)


def select_ef15() -> Command:
    """SELECT EF15, the old card's data file."""
    return select_fid(EF15)


def get_balance() -> Command:
    """GET BALANCE ``80 5C 00 02 04`` (PBOC JR/T 0025 electronic deposit): 4 bytes, fen, big-endian."""
    return Command(0x80, 0x5C, 0x00, 0x02, le=4)


def mark_replaced() -> Command:
    """UPDATE RECORD 5 of the current EF (EF15) to "replaced by a social security card" (convention)."""
    return update_record(STATUS_RECORD, encode_simple(STATUS_TAG, bytes((STATUS_REPLACED,))))
