"""TLV codecs: the card's simple records (1-byte tag, 1-byte length) and BER-TLV for the bank application.

Simple TLV: each record of EF05/EF06 is ``tag (1) | length (1) | value`` (docs/card-profile.md, "Records").
BER-TLV: ISO/IEC 7816-4 s5.2 / EMV 4.3 Book 3 Annex B: multi-byte tags (low 5 bits 11111 in the first
byte, then bytes with b8 set continue), definite lengths (short form, 81 xx, 82 xx xx), constructed
tags (b6 of the first byte) holding nested TLVs.
"""
from __future__ import annotations

from dataclasses import dataclass

from sscard.apdu.errors import TLVError

#: padding bytes a card may leave after the last TLV in a record
PADDING = (0x00, 0xFF)


#: ISO 7816-4 s5.2.1: a simple-TLV length byte FF says the length is in the next two bytes
LONG_LENGTH = 0xFF


def encode_simple(tag: int, value: bytes) -> bytes:
    """Encode one simple TLV (ISO 7816-4 s5.2.1): tags 01-FE (00 and FF are invalid); the length in
    one byte up to 254, else FF and two bytes (at most 65,535)."""
    if not 0 < tag < 0xFF:
        raise TLVError(f"tag {tag!r} is not a valid one-byte tag (01-FE)")
    n = len(value)
    if n > 0xFFFF:
        raise TLVError(f"value of tag {tag:02X} is {n} bytes, over 65,535")
    length = bytes((n,)) if n < LONG_LENGTH else bytes((LONG_LENGTH,)) + n.to_bytes(2, "big")
    return bytes((tag,)) + length + bytes(value)


def decode_simple(data: bytes, allow_padding: bool = True) -> dict[int, bytes]:
    """Decode a sequence of simple TLVs into ``{tag: value}``.

    Raises :class:`TLVError` on a truncated header, a tag 00 or FF (invalid, ISO 7816-4 s5.2.1), a
    length running past the data, or a duplicate tag. Trailing 00/FF padding after the last TLV is
    skipped when ``allow_padding``. A length byte FF is followed by the length in two bytes.
    """
    out: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        if allow_padding and all(b in PADDING for b in data[i:]):
            break
        if i + 2 > n:
            raise TLVError(f"truncated TLV header at offset {i}")
        tag, length, start = data[i], data[i + 1], i + 2
        if tag in PADDING:
            raise TLVError(f"tag {tag:02X} at offset {i} is not a valid tag (01-FE)")
        if length == LONG_LENGTH:
            if i + 4 > n:
                raise TLVError(f"truncated TLV length at offset {i}")
            length, start = int.from_bytes(data[i + 2:i + 4], "big"), i + 4
        end = start + length
        if end > n:
            raise TLVError(f"TLV {tag:02X} claims {length} bytes but only {n - start} follow")
        if tag in out:
            raise TLVError(f"duplicate tag {tag:02X}")
        out[tag] = bytes(data[start:end])
        i = end
    return out


@dataclass(frozen=True)
class BerTlv:
    """One BER-TLV object: ``tag`` as an int (e.g. 0x5A, 0x9F0B), ``value`` bytes, ``children`` when constructed."""

    tag: int
    value: bytes

    @property
    def constructed(self) -> bool:
        first = self.tag.to_bytes(max(1, (self.tag.bit_length() + 7) // 8), "big")[0]
        return bool(first & 0x20)

    @property
    def children(self) -> list[BerTlv]:
        """Nested objects of a constructed tag (empty for a primitive one)."""
        return ber_decode(self.value) if self.constructed else []


def _ber_tag_bytes(tag: int) -> bytes:
    if tag < 0:
        raise TLVError(f"negative tag {tag}")
    raw = tag.to_bytes(max(1, (tag.bit_length() + 7) // 8), "big")
    if raw[0] in PADDING:  # 00 and FF before a tag are padding (ISO 7816-4 s5.2.2.1): never a tag's first byte
        raise TLVError(f"{raw.hex().upper()} is not a valid BER tag (first byte {raw[0]:02X})")
    multi = raw[0] & 0x1F == 0x1F
    if multi != (len(raw) > 1) or any(b & 0x80 == 0 for b in raw[1:-1]) or (len(raw) > 1 and raw[-1] & 0x80):
        raise TLVError(f"{raw.hex().upper()} is not a valid BER tag")
    return raw


def ber_encode(tag: int, value: bytes) -> bytes:
    """Encode one BER-TLV with a definite length (short form below 128, then 81/82/83)."""
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    elif n <= 0xFF:
        length = b"\x81" + bytes((n,))
    elif n <= 0xFFFF:
        length = b"\x82" + n.to_bytes(2, "big")
    elif n <= 0xFFFFFF:
        length = b"\x83" + n.to_bytes(3, "big")
    else:
        raise TLVError(f"value of {n} bytes is too long for BER-TLV")
    return _ber_tag_bytes(tag) + length + bytes(value)


def ber_decode(data: bytes) -> list[BerTlv]:
    """Decode a sequence of BER-TLV objects (00/FF padding between objects is skipped, EMV Book 3 B1)."""
    out: list[BerTlv] = []
    i, n = 0, len(data)
    while i < n:
        if data[i] in PADDING:
            i += 1
            continue
        start = i
        i += 1
        if data[start] & 0x1F == 0x1F:
            while True:
                if i >= n:
                    raise TLVError(f"truncated multi-byte tag at offset {start}")
                i += 1
                if i - start > 4:
                    raise TLVError(f"tag at offset {start} longer than 4 bytes")
                if data[i - 1] & 0x80 == 0:
                    break
        tag = int.from_bytes(data[start:i], "big")
        if i >= n:
            raise TLVError(f"missing length for tag {tag:X}")
        first = data[i]
        i += 1
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise TLVError(f"indefinite length for tag {tag:X} is not allowed")
        else:
            k = first & 0x7F
            if k > 3 or i + k > n:
                raise TLVError(f"bad length field for tag {tag:X}")
            length = int.from_bytes(data[i:i + k], "big")
            i += k
        if i + length > n:
            raise TLVError(f"tag {tag:X} claims {length} bytes but only {n - i} follow")
        out.append(BerTlv(tag, bytes(data[i:i + length])))
        i += length
    return out


#: nesting depth beyond which BER data is refused (real card templates nest 3-4 levels)
MAX_DEPTH = 32


def ber_find(data: bytes, tag: int) -> bytes | None:
    """Depth-first search for the first object with ``tag``; its value, or ``None``.

    Iterative, and nesting deeper than :data:`MAX_DEPTH` raises :class:`TLVError`, so hostile data
    cannot exhaust the stack.
    """
    stack = [(iter(ber_decode(data)), 0)]
    while stack:
        objects, depth = stack[-1]
        obj = next(objects, None)
        if obj is None:
            stack.pop()
            continue
        if obj.tag == tag:
            return obj.value
        if obj.constructed:
            if depth + 1 > MAX_DEPTH:
                raise TLVError(f"BER-TLV nested deeper than {MAX_DEPTH} levels")
            stack.append((iter(ber_decode(obj.value)), depth + 1))
    return None
