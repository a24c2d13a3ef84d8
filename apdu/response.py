"""Response APDUs (ISO/IEC 7816-4 s5.1: optional data, then SW1 SW2)."""
from __future__ import annotations

from dataclasses import dataclass

from sscard.apdu.errors import APDUFormatError
from sscard.apdu.status import SW, Table, error_for


@dataclass(frozen=True)
class Response:
    """A response: ``data`` and the two status bytes."""

    data: bytes
    sw1: int
    sw2: int

    def __post_init__(self) -> None:
        for name in ("sw1", "sw2"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise APDUFormatError(f"{name.upper()} must be a byte, got {value!r}")
        object.__setattr__(self, "data", bytes(self.data))

    @property
    def sw(self) -> int:
        """SW1 SW2 as one 16-bit number."""
        return self.sw1 << 8 | self.sw2

    @property
    def ok(self) -> bool:
        return self.sw == SW.OK

    @classmethod
    def from_bytes(cls, raw: bytes) -> Response:
        """Decode ``data || SW1 || SW2``; fewer than 2 bytes raises :class:`APDUFormatError`."""
        raw = bytes(raw)
        if len(raw) < 2:
            raise APDUFormatError(f"response of {len(raw)} bytes has no status word")
        return cls(raw[:-2], raw[-2], raw[-1])

    @classmethod
    def status(cls, sw: int, data: bytes = b"") -> Response:
        """A response with the given status word (used by the simulator)."""
        return cls(data, sw >> 8 & 0xFF, sw & 0xFF)

    def to_bytes(self) -> bytes:
        return self.data + bytes((self.sw1, self.sw2))

    def check(self, table: Table | None = None) -> Response:
        """Return self on 9000; raise the typed error the status word means otherwise: to the command
        whose ``table`` it is (apdu/commands.py), else to any command (apdu/status.py)."""
        err = error_for(self.sw, table)
        if err is not None:
            raise err
        return self

    def __str__(self) -> str:
        return self.to_bytes().hex(" ").upper()
