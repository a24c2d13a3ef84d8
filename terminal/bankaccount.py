"""The card's bank account: the PBOC/UnionPay application beside the social security one (one card,
two accounts; docs/bank-application.md).

Read the EMV way (EMV 4.3 Book 1 s12, Book 3 s6-s10): SELECT the Payment System Environment
``1PAY.SYS.DDF01`` and read its directory (the applications the card lists), else try the UnionPay
debit and credit AIDs in turn; SELECT the application (its FCI may carry a PDOL); GET PROCESSING
OPTIONS with the terminal's PDOL data; READ RECORD each record the AFL names; the account number is
tag 5A (else the PAN in the track 2 equivalent data, 57), its expiry tag 5F24 (else from 57).
Reading the account number needs no PIN. Nothing is paid: no cryptogram is asked for.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from sscard.apdu import commands
from sscard.apdu.emv import (
    AFLEntry,
    afl_from_processing_options,
    digits,
    dol_data,
    pdol_values,
    record_objects,
    track2_account,
)
from sscard.apdu.errors import CardDataError, CardStatusError, TLVError, mask
from sscard.apdu.status import SW
from sscard.apdu.tlv import ber_find
from sscard.drivers.connection import Connection

#: the applications tried when the card has no PSE, and what each one is
KNOWN_AIDS = {commands.AID_PBOC_DEBIT: "debit", commands.AID_PBOC_CREDIT: "credit"}
#: directory records and AFL records read at most (a hostile card cannot keep us reading)
MAX_RECORDS = 32


class NoBankApplicationError(CardStatusError):
    """The card holds no bank application (a social security card without a financial account)."""

    def __init__(self) -> None:
        super().__init__(SW.FILE_NOT_FOUND, "This card has no bank application: it holds the social security "
                                            "application only (no bank account to read)")


@dataclass(frozen=True)
class BankAccount:
    """The bank application's account: its AID and label, the account number (PAN) and expiry."""

    aid: bytes
    label: str
    pan: str
    #: expiry as the card says it, ``YYYY-MM``
    expiry: str

    @property
    def kind(self) -> str:
        """``debit`` or ``credit`` for the UnionPay AIDs, else ``other``."""
        return KNOWN_AIDS.get(self.aid, "other")

    def to_dict(self, full_number: bool = False) -> dict[str, object]:
        """JSON-ready (docs/json.md): the account number masked 6+4 unless ``full_number``."""
        return {"application": self.kind, "aid": self.aid.hex().upper(), "label": self.label,
                "account_number": self.pan if full_number else mask(self.pan, 6, 4), "expiry": self.expiry}


def read_bank_account(connection: Connection, today: dt.date | None = None) -> BankAccount:
    """The card's bank account (module docstring). NoBankApplicationError when it has none;
    CardDataError when what it answers is not EMV data. Call it inside one card operation
    (``SocialSecurityCard.read_bank_account``): the bank application is selected afterwards."""
    for aid in _applications(connection):
        selected = connection.transmit(commands.select_df_name(aid))
        if selected.sw == SW.FILE_NOT_FOUND:
            continue
        selected.check()
        try:
            pdol = ber_find(selected.data, 0x9F38) or b""
            label = (ber_find(selected.data, 0x50) or b"").decode("ascii", "replace")
            data = dol_data(pdol, pdol_values(today or dt.date.today(), os.urandom(4)))
        except TLVError as err:
            raise CardDataError(f"The bank application's FCI is malformed ({err})") from None
        options = connection.transmit(commands.get_processing_options(data, secret=True)).check()
        pan, expiry = _account(connection, afl_from_processing_options(options.data))
        return BankAccount(aid, label, pan, f"20{expiry[:2]}-{expiry[2:4]}")
    raise NoBankApplicationError()


def _applications(connection: Connection) -> list[bytes]:
    """The AIDs the card's PSE directory lists, else the UnionPay AIDs (EMV Book 1 s12.3.2-3)."""
    selected = connection.transmit(commands.select_df_name(commands.PSE_NAME))
    if selected.sw != SW.OK:
        return list(KNOWN_AIDS)
    try:
        sfi = ber_find(selected.data, 0x88)
        if sfi is None or len(sfi) != 1:
            return list(KNOWN_AIDS)
        found: list[bytes] = []
        for number in range(1, MAX_RECORDS + 1):
            record = connection.transmit(commands.read_record(number, sfi=sfi[0]))
            if record.sw != SW.OK:  # 6A83: the directory ends
                break
            for entry in (obj for obj in record_objects(record.data) if obj.tag == 0x61):
                aid = ber_find(entry.value, 0x4F)
                if aid:
                    found.append(aid)
    except TLVError as err:
        raise CardDataError(f"The card's payment directory is malformed ({err})") from None
    return found or list(KNOWN_AIDS)


def _account(connection: Connection, afl: list[AFLEntry]) -> tuple[str, str]:
    """(PAN, expiry YYMM) from the records the AFL names."""
    pan = expiry = None
    read = 0
    for entry in afl:
        for number in range(entry.first, entry.last + 1):
            read += 1
            if read > MAX_RECORDS:
                raise CardDataError(f"The bank application names more than {MAX_RECORDS} records to read")
            record = connection.transmit(commands.read_record(number, sfi=entry.sfi, secret=True)).check()
            for obj in record_objects(record.data):
                if obj.tag == 0x5A:
                    pan = digits(obj.value)
                elif obj.tag == 0x5F24 and len(obj.value) == 3:
                    expiry = obj.value.hex()[:4]
                elif obj.tag == 0x57 and (pan is None or expiry is None):
                    track_pan, track_expiry = track2_account(obj.value)
                    pan, expiry = pan or track_pan, expiry or track_expiry
    if not pan or not 12 <= len(pan) <= 19:
        raise CardDataError("The bank application holds no account number")
    if not expiry or not expiry.isdigit() or not 1 <= int(expiry[2:]) <= 12:
        raise CardDataError("The bank application holds no valid expiry date")
    return pan, expiry
