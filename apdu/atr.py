"""The Answer To Reset: what a card says when it is powered up (ISO/IEC 7816-3 s8), read by the
terminal, checked in the simulator's profiles and built for them.

One walk through the interface bytes serves every reader of an ATR: :func:`parse_atr` (strict: TS,
length, TCK; the simulator's profiles) and :func:`historical_bytes` (lenient: whatever a real card
sends; the terminal's "card reset info"). The social security card's historical bytes are the
project convention of docs/simulator.md, "ATR": ``80`` (COMPACT-TLV), ``31 80`` (selection by full
DF name), ``69`` + 9 bytes of pre-issuing data, ASCII ``SSC2``/``SSC3`` (the card generation), the
issuing region in BCD (``33 03 00``) and the COS version (``01 00``).

Pure bytes, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATR", "MAX_ATR_LENGTH", "PROTOCOLS", "TS", "build_atr", "historical_bytes", "parse_atr"]

#: TS, the ATR's first byte: 3B direct convention, 3F inverse (ISO/IEC 7816-3 s8.1)
TS = (0x3B, 0x3F)
#: an ATR is at most 33 bytes, TS included (ISO/IEC 7816-3 s8.2.1)
MAX_ATR_LENGTH = 33
#: the transmission protocols the terminal and the simulator speak
PROTOCOLS = ("T=0", "T=1")
#: COMPACT-TLV historical bytes start with category indicator 80; tag 6 is the pre-issuing data
#: (ISO/IEC 7816-4 s8.1.1)
_COMPACT_TLV = 0x80
_PRE_ISSUING = 0x6
#: the pre-issuing data of a social security card starts with this, then the generation digit
_SSC = b"SSC"


@dataclass(frozen=True)
class ATR:
    """What an ATR says (ISO/IEC 7816-3 s8): protocols offered, the first one, historical bytes, and
    from the historical bytes of a social security card its generation and issuing region."""

    protocols: tuple[int, ...]
    historical: bytes

    @property
    def protocol(self) -> str:
        """The first protocol offered, ``T=0`` or ``T=1``: the one a reader uses by default."""
        return f"T={self.protocols[0]}"

    @property
    def pre_issuing_data(self) -> bytes:
        """The COMPACT-TLV pre-issuing data (tag 6) of the historical bytes, or empty."""
        data = self.historical
        if not data or data[0] != _COMPACT_TLV:
            return b""
        i = 1
        while i < len(data):
            tag, length = data[i] >> 4, data[i] & 0x0F
            if tag == _PRE_ISSUING:
                return data[i + 1:i + 1 + length]
            i += 1 + length
        return b""

    @property
    def generation(self) -> int | None:
        """2 or 3 from ``SSC2``/``SSC3`` in the pre-issuing data (convention); None for other cards."""
        data = self.pre_issuing_data
        digit = data[len(_SSC):len(_SSC) + 1]
        return int(digit) if data.startswith(_SSC) and digit.isdigit() else None

    @property
    def issuing_region(self) -> str | None:
        """The 6-digit issuing region after the generation (``33 03 00`` -> ``330300``); None for other cards."""
        data = self.pre_issuing_data
        region = data[len(_SSC) + 1:len(_SSC) + 4].hex()
        return region if data.startswith(_SSC) and len(region) == 6 and region.isdigit() else None


def _interface_bytes(atr: bytes) -> tuple[list[int], int]:
    """The protocols the TDi bytes offer and where the historical bytes start (ISO/IEC 7816-3
    s8.2.2-3). ValueError when T0 is missing or the TDi bytes announce more than there is."""
    if len(atr) < 2:
        raise ValueError("must start with TS 3B or 3F and have T0")
    y = atr[1] >> 4
    i = 2
    protocols: list[int] = []
    while True:
        i += bin(y & 0x7).count("1")  # TA, TB, TC
        if not y & 0x8:
            break
        if i >= len(atr):
            raise ValueError("truncated interface bytes")
        td = atr[i]
        i += 1
        protocols.append(td & 0x0F)
        y = td >> 4
    return protocols, i


def parse_atr(atr: bytes) -> ATR:
    """Parse an ATR's interface bytes (ISO/IEC 7816-3 s8.2); check its TS, length and TCK.

    Raises ``ValueError`` with the reason. TCK is required, and must XOR T0..TCK to zero, when a
    protocol other than T=0 is offered (s8.2.5).
    """
    if len(atr) < 2 or atr[0] not in TS:
        raise ValueError("must start with TS 3B or 3F and have T0")
    if len(atr) > MAX_ATR_LENGTH:
        raise ValueError(f"{len(atr)} bytes, over the {MAX_ATR_LENGTH} an ATR may have")
    k = atr[1] & 0x0F
    protocols, i = _interface_bytes(atr)
    if not protocols:
        protocols = [0]
    tck = any(p != 0 for p in protocols)
    expected = i + k + (1 if tck else 0)
    if len(atr) != expected:
        raise ValueError(f"{len(atr)} bytes, but its T0/TDi bytes announce {expected}")
    if tck:
        check = 0
        for b in atr[1:]:
            check ^= b
        if check:
            raise ValueError("TCK is wrong (T0..TCK must XOR to 00)")
    return ATR(tuple(protocols), bytes(atr[i:i + k]))


def historical_bytes(atr: bytes) -> bytes:
    """The ATR's historical bytes (ISO/IEC 7816-3 s8.2): the HIS interface's "card reset info".
    Lenient, as a real card's ATR may be anything: what T0 announces, as far as there are bytes;
    empty when the interface bytes are cut short."""
    try:
        _protocols, i = _interface_bytes(atr)
    except ValueError:
        return b""
    return bytes(atr[i:i + (atr[1] & 0x0F)])


def build_atr(protocol: str, historical: bytes) -> bytes:
    """A plausible ATR (project convention, docs/simulator.md).

    T=0: ``3B 6K 00 00 hist`` (TB1 = 00 no VPP, TC1 = 00 no extra guard time; T=0 implicit).
    T=1: ``3B EK 00 00 81 31 FE 45 hist TCK`` (TD1: T=1; TD2: TA3 IFSC 254, TB3 BWI 4 / CWI 5).
    """
    if not 0 <= len(historical) <= 15:
        raise ValueError("0 to 15 historical bytes")
    k = len(historical)
    if protocol == "T=0":
        return bytes((0x3B, 0x60 | k, 0x00, 0x00)) + historical
    if protocol == "T=1":
        body = bytes((0xE0 | k, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x45)) + historical
        tck = 0
        for b in body:
            tck ^= b
        return b"\x3B" + body + bytes((tck,))
    raise ValueError(f"protocol must be one of {PROTOCOLS}")
