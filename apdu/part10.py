"""PIN pad readers: the PC/SC part 10 bytes (PC/SC Workgroup, "Interoperability Specification for
ICCs and Personal Computer Systems, Part 10", v2.02; the CCID driver implements it).

A reader with a PIN pad lists its features when asked with ``CM_IOCTL_GET_FEATURE_REQUEST``
(SCardControl, control code ``SCARD_CTL_CODE(3400)``): TLV entries of a feature tag, length 4 and
the feature's own control code, big-endian. ``FEATURE_VERIFY_PIN_DIRECT`` (tag 06) takes a
``PIN_VERIFY_STRUCTURE`` (little-endian fields, part 10 s2.5.2): the reader asks the holder for the
PIN on its own keypad, puts it into the command template, sends the VERIFY and answers the card's
status word, or ``64 00`` (the holder took too long) or ``64 01`` (the holder pressed cancel):
``SW.PINPAD_TIMEOUT`` and ``SW.PINPAD_CANCELLED`` (apdu/status.py), which VERIFY's table on a PIN pad
reads (``apdu.commands.VERIFY_ON_PAD_SW``). The PIN never passes through the computer. Pure bytes, no I/O.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from sscard.apdu.errors import MalformedError

FEATURE_VERIFY_PIN_DIRECT = 0x06
#: how the SSC's PIN goes into VERIFY (docs/card-profile.md, "PIN"): 6 digits, BCD, 3 bytes
PIN_DIGITS = 6
#: bmFormatString: system units are bytes (bit 7), the PIN at byte 0 of the data, left-justified,
#: BCD (01)
FORMAT_BCD_BYTES = 0x81
#: bmPINBlockString: no PIN length field, a 3-byte block
PIN_BLOCK_3_BYTES = 0x03
#: bEntryValidationCondition: the holder presses the validation key
VALIDATE_WITH_KEY = 0x02
#: wLangId: Chinese (PRC), for the reader's own prompt
LANG_ZH_CN = 0x0804
#: seconds the reader waits for the holder (bTimerOut: 0 would be the reader's own default)
TIMEOUT_S = 30
_HEADER = struct.Struct("<BBBBBHBBHB3sI")


def parse_features(tlv: bytes) -> dict[int, int]:
    """The reader's features: tag -> control code (part 10 s2.3). MalformedError on a broken list."""
    out: dict[int, int] = {}
    i = 0
    while i < len(tlv):
        if i + 2 > len(tlv) or tlv[i + 1] != 4 or i + 6 > len(tlv):
            raise MalformedError("The reader's feature list is malformed")
        out[tlv[i]] = int.from_bytes(tlv[i + 2:i + 6], "big")
        i += 6
    return out


def verify_pin_structure(cla: int, ins: int, p1: int, p2: int) -> bytes:
    """The PIN_VERIFY_STRUCTURE for VERIFY ``cla ins p1 p2`` with the SSC's 6-digit BCD PIN: the
    command template carries Lc 03 and a block the reader fills."""
    template = bytes((cla, ins, p1, p2, 3)) + b"\xff\xff\xff"
    return _HEADER.pack(TIMEOUT_S, TIMEOUT_S, FORMAT_BCD_BYTES, PIN_BLOCK_3_BYTES, 0x00,
                        (PIN_DIGITS << 8) | PIN_DIGITS, VALIDATE_WITH_KEY, 0x01, LANG_ZH_CN, 0x00,
                        b"\x00\x00\x00", len(template)) + template


@dataclass(frozen=True)
class VerifyRequest:
    """A PIN_VERIFY_STRUCTURE as a reader reads it."""

    timeout_s: int
    format_string: int
    block_string: int
    min_digits: int
    max_digits: int
    template: bytes


def parse_verify_pin_structure(data: bytes) -> VerifyRequest:
    """What a PIN pad reader reads of the structure (the in-memory PIN pad, drivers/pinpad.py)."""
    if len(data) < _HEADER.size:
        raise MalformedError("PIN_VERIFY_STRUCTURE too short")
    (timeout, _timeout2, format_string, block_string, _length_format, extra, _validation, _messages, _lang,
     _index, _prologue, length) = _HEADER.unpack_from(data)
    template = data[_HEADER.size:]
    if length != len(template) or len(template) < 5:
        raise MalformedError("PIN_VERIFY_STRUCTURE: ulDataLength does not match the command template")
    return VerifyRequest(timeout, format_string, block_string, extra >> 8, extra & 0xFF, template)
