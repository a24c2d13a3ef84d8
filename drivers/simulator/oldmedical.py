"""The virtual old medical insurance card: a small card OS on :class:`drivers.simulator.cardos.CardOS`.

Layout and commands are a project convention (docs/old-medical-card.md; bytes in
:mod:`apdu.oldmedical`): SELECT by DF name ``YBK.OLD.MED``, SELECT EF15, READ RECORD 1-5, GET BALANCE
(PBOC ``80 5C 00 02 04``, fen) and UPDATE RECORD 5 to mark the card replaced (``69 82`` when the
profile says the issuer did not allow it).

Profiles are JSON files of ``"kind": "old-medical"`` in fixtures/cards/ (``old-medical-*.json``):

``description``, ``atr`` (hex, a well-formed ATR offering ``protocol`` first), ``protocol`` (``T=0``/``T=1``), ``card_number`` (up to 20 letters and
digits), ``social_security_number`` (18), ``name``, ``issuing_region`` (6 digits), ``balance_fen``
(integer fen, never a float), ``status`` (``in-use`` or ``replaced``), ``replaceable`` (bool).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sscard.apdu.atr import PROTOCOLS
from sscard.apdu.command import Command
from sscard.apdu.oldmedical import EF15, OLD_DF_NAME, OLD_ITEMS, STATUS_IN_USE, STATUS_RECORD, STATUS_REPLACED
from sscard.apdu.status import SW
from sscard.apdu.tlv import decode_simple, encode_simple
from sscard.drivers.errors import ProfileError
from sscard.drivers.simulator.cardos import CLA_ISO, CLA_PROPRIETARY, CardOS, CardStatus, Reply
from sscard.drivers.simulator.filesystem import DF, MF_FID, FileSelection, RecordEF, records_for
from sscard.drivers.simulator.profile import locate, profile_kind
from sscard.drivers.simulator.validator import ProfileValidator, read_profile_file

KIND = "old-medical"
STATUSES = {"in-use": STATUS_IN_USE, "replaced": STATUS_REPLACED}
FIELDS = ("kind", "description", "atr", "protocol", "card_number", "social_security_number", "name",
          "issuing_region", "balance_fen", "status", "replaceable")
_CARD_NO = re.compile(r"[A-Z0-9]{1,20}")
_SSN = re.compile(r"\d{17}[\dX]")
_REGION = re.compile(r"\d{6}")


@dataclass(frozen=True)
class OldMedicalProfile:
    """A validated old-card profile (see the module docstring for the fields)."""

    description: str
    atr: bytes
    protocol: str
    card_number: str
    social_security_number: str
    name: str
    issuing_region: str
    balance_fen: int
    status: str
    replaceable: bool

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> OldMedicalProfile:
        """Validate a parsed profile (:class:`~drivers.simulator.validator.ProfileValidator`, the checks
        of every profile); :class:`ProfileError` naming the field otherwise."""
        check = ProfileValidator(where)
        obj = check.fields(obj, "", set(FIELDS), set())
        check.kind(obj, KIND)
        protocol = check.choice(obj["protocol"], "protocol", PROTOCOLS)
        atr = check.atr(obj["atr"], protocol)
        check.matching(obj["card_number"], "card_number", _CARD_NO, "must be 1 to 20 capital letters or digits")
        check.matching(obj["social_security_number"], "social_security_number", _SSN,
                       "must be 18 characters (17 digits and a digit or X)")
        check.require(isinstance(obj["name"], str) and 0 < len(obj["name"].encode("gbk", "replace")) <= 30, "name",
                      "must be 1 to 30 bytes of GBK")
        check.matching(obj["issuing_region"], "issuing_region", _REGION, "must be 6 digits")
        check.require(type(obj["balance_fen"]) is int and 0 <= obj["balance_fen"] < 2**32, "balance_fen",
                      "must be an integer number of fen (0 to 4294967295), never a float")
        check.choice(obj["status"], "status", tuple(STATUSES))
        check.flag(obj["replaceable"], "replaceable")
        check.require(isinstance(obj["description"], str), "description", "must be text")
        return cls(**{**{k: obj[k] for k in FIELDS if k != "kind"}, "atr": atr})


def old_profile_path(name_or_path: str | Path) -> Path | None:
    """The file of a bundled old-card profile name (``old-medical-zhangwei``) or a path, if it is one."""
    try:
        path = locate(name_or_path)
    except ProfileError:
        return None
    return path if profile_kind(path) == KIND else None


def load_old_card(name_or_path: str | Path) -> OldMedicalCard:
    """A fresh virtual old card from a bundled profile name or a profile path; ProfileError for a
    profile of another kind (``drivers.simulator.load_card`` loads every kind)."""
    path = old_profile_path(name_or_path)
    if path is None:
        raise ProfileError(f"No old medical insurance card profile {str(name_or_path)!r}")
    return OldMedicalCard(OldMedicalProfile.from_dict(read_profile_file(path), path.name))


class OldMedicalCard(CardOS):
    """The old card personalised from an :class:`OldMedicalProfile` (implements ``SimulatedCard``)."""

    label = "virtual old medical card"

    def __init__(self, profile: OldMedicalProfile) -> None:
        self.profile = profile
        values = {
            "card_number": profile.card_number,
            "social_security_number": profile.social_security_number,
            "name": profile.name,
            "issuing_region": profile.issuing_region,
            "status": f"{STATUSES[profile.status]:02X}",
        }
        self.ef15 = RecordEF(EF15, records_for(OLD_ITEMS, values))
        #: the medical application, selected by DF name only, holding EF15
        self.app = DF(fid=None, name=OLD_DF_NAME, files={EF15: self.ef15})
        self.files = FileSelection(DF(fid=MF_FID, name=None))
        self.balance_fen = profile.balance_fen
        self.replaceable = profile.replaceable
        super().__init__(profile.atr, profile.protocol)
        self.handlers.update({
            0xA4: (CLA_ISO, self._select),
            0xB2: (CLA_ISO, self._read_record),
            0xDC: (CLA_ISO, self._update_record),
            0x5C: (CLA_PROPRIETARY, self._get_balance),
        })

    # --- what survives power-down (drivers/simulator/state.py) ---------------------------------------

    def persistent_state(self) -> dict[str, Any]:
        """The records of EF15 (record 5 says whether the card was replaced)."""
        return {"records": [record.hex() for record in self.ef15.records]}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`persistent_state` (ValueError/TypeError/KeyError when it is not one)."""
        records = state["records"]
        if not isinstance(records, list) or len(records) != len(self.ef15.records):
            raise ValueError("records")
        self.ef15.records[:] = [bytes.fromhex(record) for record in records]

    @property
    def replaced(self) -> bool:
        """Whether record 5 says "replaced by a social security card"."""
        return decode_simple(self.ef15.records[STATUS_RECORD - 1])[0x05] == bytes((STATUS_REPLACED,))

    def _clear_volatile(self) -> None:
        super()._clear_volatile()
        self.files.clear()

    def _select(self, command: Command) -> Reply:
        """SELECT by DF name (P1 04) of the medical application, or EF15 by FID (P1 00/02)."""
        if command.p1 == 0x04:
            if command.data != OLD_DF_NAME:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self.files.select_df(self.app)
            return b"", SW.OK
        if command.p1 in (0x00, 0x02):
            if len(command.data) != 2:
                raise CardStatus(SW.WRONG_LENGTH)
            if self.files.df is not self.app or int.from_bytes(command.data, "big") != EF15:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self.files.ef = self.ef15
            return b"", SW.OK
        raise CardStatus(SW.WRONG_P1P2)

    def _current(self, p2: int) -> RecordEF:
        if p2 & 0x07 != 0x04:
            raise CardStatus(SW.WRONG_P1P2)
        return self.files.ef_for(p2 >> 3)

    def _read_record(self, command: Command) -> Reply:
        """READ RECORD ``00 B2 n 04 00`` (ISO 7816-4 s7.3.3), or by SFI 15."""
        if command.data or command.le is None:
            raise CardStatus(SW.WRONG_LENGTH)
        return self._current(command.p2).read(command.p1), SW.OK

    def _update_record(self, command: Command) -> Reply:
        """UPDATE RECORD 5 (status) only, to ``05 01 01``; ``69 82`` unless the profile is replaceable."""
        ef = self._current(command.p2)
        if command.p1 != STATUS_RECORD:
            raise CardStatus(SW.SECURITY_STATUS)
        if not self.replaceable:
            raise CardStatus(SW.SECURITY_STATUS)
        if command.data != encode_simple(0x05, bytes((STATUS_REPLACED,))):
            raise CardStatus(SW.WRONG_DATA)
        ef.records[STATUS_RECORD - 1] = bytes(command.data)
        return b"", SW.OK

    def _get_balance(self, command: Command) -> Reply:
        """GET BALANCE ``80 5C 00 02 04`` (PBOC): the account balance in fen, 4 bytes big-endian."""
        if command.p1 != 0x00 or command.p2 != 0x02:
            raise CardStatus(SW.WRONG_P1P2)
        if command.data or command.le != 4:
            raise CardStatus(SW.WRONG_LENGTH)
        if self.files.df is not self.app:
            raise CardStatus(SW.CONDITIONS)
        return self.balance_fen.to_bytes(4, "big"), SW.OK
