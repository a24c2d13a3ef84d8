"""Command APDUs (ISO/IEC 7816-4 s5.1: command-response pairs, cases 1-4, short and extended)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sscard.apdu.errors import APDUFormatError

SHORT_MAX_LC = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_LC = 65535
EXTENDED_MAX_LE = 65536


@dataclass(frozen=True)
class Command:
    """One command APDU.

    ``le`` is the number of bytes expected (``None``: no Le field; 256 is coded ``00`` in short form,
    65536 is ``0000`` in extended form). ``extended`` forces extended length fields; they are also
    chosen when the data or Le do not fit the short form. ``secret`` marks data that must never be
    traced (a PIN): traces show its length only.
    """

    cla: int
    ins: int
    p1: int = 0
    p2: int = 0
    data: bytes = b""
    le: int | None = None
    extended: bool = False
    secret: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise APDUFormatError(f"{name.upper()} must be a byte, got {value!r}")
        if self.cla == 0xFF:
            raise APDUFormatError("CLA FF is reserved for PPS (ISO 7816-3)")
        if not isinstance(self.data, (bytes, bytearray)):
            raise APDUFormatError("command data must be bytes")
        object.__setattr__(self, "data", bytes(self.data))
        if len(self.data) > EXTENDED_MAX_LC:
            raise APDUFormatError(f"command data of {len(self.data)} bytes exceeds 65535")
        if self.le is not None and (not isinstance(self.le, int) or not 1 <= self.le <= EXTENDED_MAX_LE):
            raise APDUFormatError(f"Le must be 1..65536 or None, got {self.le!r}")

    @property
    def case(self) -> int:
        """ISO 7816-4 case: 1 no data no Le, 2 Le only, 3 data only, 4 data and Le."""
        if self.data:
            return 4 if self.le is not None else 3
        return 2 if self.le is not None else 1

    @property
    def is_extended(self) -> bool:
        """True when the length fields are coded in extended form."""
        return (
            self.extended
            or len(self.data) > SHORT_MAX_LC
            or (self.le is not None and self.le > SHORT_MAX_LE)
        )

    def with_le(self, le: int) -> Command:
        """The same command with another Le (the 6Cxx re-issue keeps CLA, INS, P1, P2 and data)."""
        return Command(self.cla, self.ins, self.p1, self.p2, self.data, le, self.extended, self.secret)

    def to_bytes(self) -> bytes:
        """Encode per ISO 7816-4 s5.1 (short: Lc 1 byte, Le 1 byte; extended: 00 + 2 bytes each)."""
        out = bytearray((self.cla, self.ins, self.p1, self.p2))
        ext = self.is_extended
        if self.data:
            n = len(self.data)
            out += bytes((0, n >> 8, n & 0xFF)) if ext else bytes((n,))
            out += self.data
        if self.le is not None:
            le = self.le
            if ext:
                le = 0 if le == EXTENDED_MAX_LE else le
                out += (bytes((0,)) if not self.data else b"") + le.to_bytes(2, "big")
            else:
                out += bytes((0 if le == SHORT_MAX_LE else le,))
        return bytes(out)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Command:
        """Decode a command APDU; raise :class:`APDUFormatError` on any inconsistency."""
        raw = bytes(raw)
        if len(raw) < 4:
            raise APDUFormatError(f"command APDU of {len(raw)} bytes is shorter than its 4-byte header")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        n = len(body)
        if n == 0:  # case 1
            return cls(cla, ins, p1, p2)
        if n == 1:  # case 2S
            return cls(cla, ins, p1, p2, le=body[0] or SHORT_MAX_LE)
        if body[0] != 0:  # short Lc
            lc = body[0]
            if n == 1 + lc:  # case 3S
                return cls(cla, ins, p1, p2, body[1:])
            if n == 2 + lc:  # case 4S
                return cls(cla, ins, p1, p2, body[1:1 + lc], body[-1] or SHORT_MAX_LE)
            raise APDUFormatError(f"Lc {lc} does not match the {n - 1} bytes that follow it")
        # body[0] == 0 and n >= 2: extended
        if n == 3:  # case 2E
            le = int.from_bytes(body[1:3], "big") or EXTENDED_MAX_LE
            return cls(cla, ins, p1, p2, le=le, extended=True)
        if n < 3:
            raise APDUFormatError("truncated extended length field")
        lc = int.from_bytes(body[1:3], "big")
        if lc == 0:
            raise APDUFormatError("extended Lc of 0 is not allowed")
        if n == 3 + lc:  # case 3E
            return cls(cla, ins, p1, p2, body[3:], extended=True)
        if n == 5 + lc:  # case 4E
            le = int.from_bytes(body[-2:], "big") or EXTENDED_MAX_LE
            return cls(cla, ins, p1, p2, body[3:3 + lc], le, extended=True)
        raise APDUFormatError(f"extended Lc {lc} does not match the {n - 3} bytes that follow it")

    def __str__(self) -> str:
        return self.trace()

    def __repr__(self) -> str:
        # a Command in a traceback or a debugger must not show a PIN either
        return f"Command({self.trace()})"

    def trace(self) -> str:
        """Hex for logs; the data of a secret command is replaced by its length."""
        if not self.secret or not self.data:
            return self.to_bytes().hex(" ").upper()
        head = bytes((self.cla, self.ins, self.p1, self.p2)).hex(" ").upper()
        le = f" Le={self.le}" if self.le is not None else ""
        return f"{head} [{len(self.data)} secret bytes]{le}"
