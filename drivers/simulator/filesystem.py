"""The virtual cards' file system: DFs, record EFs and what is selected (ISO/IEC 7816-4 s5.3), shared
by the virtual SSC (the MF, the SSC application DF and its EFs) and the old medical card (EF15).

Records are built from data items (:mod:`apdu.catalogue`, :mod:`apdu.oldmedical`) by
:func:`records_for`: each record is one simple TLV (tag, length, value). Record n of EF05 holds tag n;
EF06's records hold the tags in ``HOLDER_ITEMS`` order. An item the profile leaves out is the empty TLV
``tag 00`` (project convention, docs/simulator.md). :class:`FileSelection` is a chip's current DF and
EF, and finds the EF a READ or UPDATE RECORD names.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from sscard.apdu.catalogue import CARD_ITEMS, EF05, EF06, HOLDER_ITEMS, DataItem
from sscard.apdu.commands import SSC_DF_NAME
from sscard.apdu.status import SW
from sscard.apdu.tlv import ber_encode, encode_simple
from sscard.drivers.simulator.cardos import CardStatus

MF_FID = 0x3F00


@dataclass
class RecordEF:
    """A linear record EF: ``records[0]`` is record 1. Records are mutable for later UPDATE RECORD."""

    fid: int
    records: list[bytes]

    @property
    def sfi(self) -> int:
        """Short file identifier (ISO 7816-4 s5.3.1.1): the FID's low 5 bits, EF05 -> 5."""
        return self.fid & 0x1F

    def record(self, number: int) -> bytes | None:
        """Record ``number`` (1-based), or ``None`` when there is no such record."""
        if 1 <= number <= len(self.records):
            return self.records[number - 1]
        return None

    def read(self, number: int) -> bytes:
        """Record ``number`` (1-based); ``6A 83`` when there is no such record (s7.3.3)."""
        record = self.record(number)
        if record is None:
            raise CardStatus(SW.RECORD_NOT_FOUND)
        return record


@dataclass
class DF:
    """A dedicated file: its FID, DF name (None for the MF), FCI and the EFs directly under it."""

    fid: int | None
    name: bytes | None
    fci: bytes = b""
    files: dict[int, RecordEF] = field(default_factory=dict)

    def by_sfi(self, sfi: int) -> RecordEF | None:
        """The EF under this DF with that short file identifier."""
        for ef in self.files.values():
            if ef.sfi == sfi:
                return ef
        return None


class FileSelection:
    """What a chip has selected: its current DF and EF (ISO/IEC 7816-4 s7.1.1). Volatile: power down
    and reset select the MF again (:meth:`clear`)."""

    def __init__(self, mf: DF) -> None:
        self.mf = mf
        self.clear()

    def clear(self) -> None:
        """The MF, no current EF."""
        self.df: DF = self.mf
        self.ef: RecordEF | None = None

    def select_df(self, df: DF) -> None:
        """``df`` becomes the current DF, with no current EF."""
        self.df, self.ef = df, None

    def ef_for(self, sfi: int) -> RecordEF:
        """The EF a record command names (s7.3.1): the current EF for ``sfi`` 0 (``69 86`` when there is
        none), else the current DF's EF with that SFI, which becomes current (``6A 82`` when none)."""
        if sfi == 0:
            if self.ef is None:
                raise CardStatus(SW.NO_CURRENT_EF)
            return self.ef
        ef = self.df.by_sfi(sfi)
        if ef is None:
            raise CardStatus(SW.FILE_NOT_FOUND)
        self.ef = ef
        return ef


def records_for(items: tuple[DataItem, ...], values: Mapping[str, str | dt.date]) -> list[bytes]:
    """One TLV record per item, in catalogue order; an absent value gives ``tag 00``."""
    out = []
    for item in items:
        value = values.get(item.key)
        raw = b"" if value is None else item.encode(value)
        out.append(encode_simple(item.tag, raw))
    return out


def ssc_fci(generation: int) -> bytes:
    """FCI of the SSC application (project convention): ``6F { 84 DF-name, A5 { 9F08 01 generation } }``."""
    proprietary = ber_encode(0x9F08, bytes((generation,)))
    return ber_encode(0x6F, ber_encode(0x84, SSC_DF_NAME) + ber_encode(0xA5, proprietary))


def build_filesystem(card: Mapping[str, str | dt.date], holder: Mapping[str, str | dt.date],
                     generation: int) -> tuple[DF, DF]:
    """The MF and the SSC application DF holding EF05 (``card``) and EF06 (``holder``)."""
    app = DF(
        fid=None,
        name=SSC_DF_NAME,
        fci=ssc_fci(generation),
        files={
            EF05: RecordEF(EF05, records_for(CARD_ITEMS, card)),
            EF06: RecordEF(EF06, records_for(HOLDER_ITEMS, holder)),
        },
    )
    return DF(fid=MF_FID, name=None), app
