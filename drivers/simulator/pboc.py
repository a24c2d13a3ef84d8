"""The virtual card's bank application: a PBOC (UnionPay) debit application beside the SSC one.

One card, two accounts: the social security application and a bank account (docs/bank-application.md).
What is here is the part a terminal reads the account number with, in the EMV/PBOC way (EMV 4.3
Book 1 s12, Book 3 s5-s10):

- the Payment System Environment DF ``1PAY.SYS.DDF01``: its FCI names the directory EF (tag 88,
  SFI 1), whose record 1 lists the application (61: 4F AID, 50 label, 87 priority);
- the debit application DF (AID ``A0 00 00 03 33 01 01 01``): its FCI carries a PDOL (9F38) asking
  the terminal country code (9F1A, 2 bytes) and an unpredictable number (9F37, 4 bytes);
- GET PROCESSING OPTIONS ``80 A8 00 00 Lc 83 06 <PDOL data> 00`` (data of the PDOL's length, else
  ``67 00``; before the application is selected ``69 85``), answered in format 2:
  ``77 { 82 AIP, 94 AFL }``, the AFL naming SFI 1 record 1 and SFI 2 record 1;
- SFI 1 record 1: ``70 { 57 track 2 equivalent data }`` (PAN, separator D, expiry YYMM, service code
  220, F padding); SFI 2 record 1: ``70 { 5A PAN, 5F24 expiry YYMMDD, 5F25 effective date, 5F34 PAN
  sequence number 01, 5F28 issuer country 0156 }``.

Nothing of the payment itself (no application cryptogram, no offline data authentication): the
terminal reads the account, it does not pay with it. Only profiles with a ``bank`` part have it.
"""
from __future__ import annotations

import datetime as dt

from sscard.apdu.commands import AID_PBOC_DEBIT, PSE_NAME
from sscard.apdu.tlv import ber_encode
from sscard.drivers.simulator.filesystem import DF, RecordEF

#: the label the directory and the FCI give (ans, EMV Book 1 s12.2.4)
LABEL = b"UnionPay Debit"
#: the PDOL (tag, length pairs): terminal country code, unpredictable number
PDOL = bytes.fromhex("9F1A02" "9F3704")
#: the data GET PROCESSING OPTIONS must carry: the sum of the PDOL's lengths
PDOL_DATA_LENGTH = 2 + 4
#: AIP: SDA and cardholder verification supported, terminal risk management (EMV Book 3 C1)
AIP = bytes.fromhex("7C00")
#: AFL entries (SFI<<3, first record, last record, records for offline authentication)
AFL = bytes.fromhex("08010100" "10010100")
#: China (ISO 3166-1 / ISO 4217 numeric 156)
COUNTRY = bytes.fromhex("0156")
#: the service code in track 2: international card, normal authorisation, no restrictions
SERVICE_CODE = "220"


def bcd(digits: str) -> bytes:
    """Digits as packed BCD, an odd count padded with F (EMV ``cn`` format)."""
    if len(digits) % 2:
        digits += "F"
    return bytes.fromhex(digits)


def bank_files(pan: str, expiry: dt.date, effective: dt.date) -> tuple[DF, DF]:
    """The PSE DF and the debit application DF for the account ``pan`` (module docstring)."""
    directory = ber_encode(0x70, ber_encode(0x61, ber_encode(0x4F, AID_PBOC_DEBIT) + ber_encode(0x50, LABEL)
                                            + ber_encode(0x87, b"\x01")))
    pse = DF(fid=None, name=PSE_NAME,
             fci=ber_encode(0x6F, ber_encode(0x84, PSE_NAME) + ber_encode(0xA5, ber_encode(0x88, b"\x01")
                                                                         + ber_encode(0x5F2D, b"zhen"))),
             files={0x0001: RecordEF(0x0001, [directory])})
    track2 = bcd(f"{pan}D{expiry:%y%m}{SERVICE_CODE}{'0' * 5}")  # at most 37 digits (EMV Book 3 A1)
    account = (ber_encode(0x5A, bcd(pan)) + ber_encode(0x5F24, bcd(f"{expiry:%y%m%d}"))
               + ber_encode(0x5F25, bcd(f"{effective:%y%m%d}")) + ber_encode(0x5F34, b"\x01")
               + ber_encode(0x5F28, COUNTRY))
    app = DF(fid=None, name=AID_PBOC_DEBIT,
             fci=ber_encode(0x6F, ber_encode(0x84, AID_PBOC_DEBIT) + ber_encode(
                 0xA5, ber_encode(0x50, LABEL) + ber_encode(0x87, b"\x01") + ber_encode(0x9F38, PDOL))),
             files={0x0001: RecordEF(0x0001, [ber_encode(0x70, ber_encode(0x57, track2))]),
                    0x0002: RecordEF(0x0002, [ber_encode(0x70, account)])})
    return pse, app


def processing_options() -> bytes:
    """The answer to GET PROCESSING OPTIONS, format 2 (EMV Book 3 s6.5.8.4)."""
    return ber_encode(0x77, ber_encode(0x82, AIP) + ber_encode(0x94, AFL))
