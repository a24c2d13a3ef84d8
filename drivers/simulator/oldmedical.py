"""The virtual old medical insurance card: a small card OS on :class:`drivers.simulator.cardos.CardOS`.

Layout and commands are a project convention (docs/old-medical-card.md; bytes in
:mod:`apdu.oldmedical`): SELECT by DF name ``YBK.OLD.MED``, SELECT EF15, READ RECORD 1-5, GET BALANCE
(PBOC ``80 5C 00 02 04``, fen) and UPDATE RECORD 5 to mark the card replaced (``69 82`` when the
profile says the issuer did not allow it).

Profiles are JSON files of ``"kind": "old-medical"`` in fixtures/cards/ (``old-medical-*.json``):

``description``, ``atr`` (hex), ``protocol`` (``T=0``/``T=1``), ``card_number`` (up to 20 letters and
digits), ``social_security_number`` (18), ``name``, ``issuing_region`` (6 digits), ``balance_fen``
(integer fen, never a float), ``status`` (``in-use`` or ``replaced``), ``replaceable`` (bool).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apdu.command import Command
from apdu.oldmedical import EF15, OLD_DF_NAME, OLD_ITEMS, STATUS_IN_USE, STATUS_RECORD, STATUS_REPLACED
from apdu.status import SW
from apdu.tlv import decode_simple, encode_simple
from drivers.errors import ProfileError
from drivers.simulator.cardos import (
    CLA_ISO,
    CLA_PROPRIETARY,
    CardOS,
    CardStatus,
    Reply,
)
from drivers.simulator.filesystem import RecordEF

KIND = "old-medical"
STATUSES = {"in-use": STATUS_IN_USE, "replaced": STATUS_REPLACED}
FIELDS = ("kind", "description", "atr", "protocol", "card_number", "social_security_number", "name",
          "issuing_region", "balance_fen", "status", "replaceable")
_CARD_NO = re.compile(r"[A-Z0-9]{1,20}")
_SSN = re.compile(r"\d{17}[\dX]")
_REGION = re.compile(r"\d{6}")
_FOLDER = Path(__file__).resolve().parents[2] / "fixtures" / "cards"


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
        """Validate a parsed profile; :class:`ProfileError` naming the field otherwise."""
        def fail(field: str, why: str) -> ProfileError:
            return ProfileError(f"{where}: {field} {why}")

        if not isinstance(obj, dict) or obj.get("kind") != KIND:
            raise fail("kind", f'must be "{KIND}"')
        unknown = sorted(set(obj) - set(FIELDS))
        if unknown:
            raise fail(unknown[0], "is not a field of an old-medical profile")
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise fail(missing[0], "is missing")
        checks = (
            ("atr", isinstance(obj["atr"], str) and re.fullmatch(r"(?:[0-9A-Fa-f]{2}){2,33}", obj["atr"]), "must be hex"),
            ("protocol", obj["protocol"] in ("T=0", "T=1"), 'must be "T=0" or "T=1"'),
            ("card_number", isinstance(obj["card_number"], str) and _CARD_NO.fullmatch(obj["card_number"]),
             "must be 1 to 20 capital letters or digits"),
            ("social_security_number", isinstance(obj["social_security_number"], str)
             and _SSN.fullmatch(obj["social_security_number"]), "must be 18 characters (17 digits and a digit or X)"),
            ("name", isinstance(obj["name"], str) and 0 < len(obj["name"].encode("gbk", "replace")) <= 30,
             "must be 1 to 30 bytes of GBK"),
            ("issuing_region", isinstance(obj["issuing_region"], str) and _REGION.fullmatch(obj["issuing_region"]),
             "must be 6 digits"),
            ("balance_fen", type(obj["balance_fen"]) is int and 0 <= obj["balance_fen"] < 2**32,
             "must be an integer number of fen (0 to 4294967295), never a float"),
            ("status", obj["status"] in STATUSES, f"must be one of {', '.join(STATUSES)}"),
            ("replaceable", isinstance(obj["replaceable"], bool), "must be true or false"),
            ("description", isinstance(obj["description"], str), "must be text"),
        )
        for field, ok, why in checks:
            if not ok:
                raise fail(field, why)
        return cls(**{**{k: obj[k] for k in FIELDS if k != "kind"}, "atr": bytes.fromhex(obj["atr"])})


def old_profile_path(name_or_path: str | Path) -> Path | None:
    """The file of a bundled old-card profile name (``old-medical-zhangwei``) or a path, if it is one."""
    path = Path(name_or_path)
    candidates = [path] if path.suffix == ".json" else [_FOLDER / f"{name_or_path}.json"]
    for candidate in candidates:
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") == KIND:
            return candidate
    return None


def load_old_card(name_or_path: str | Path) -> OldMedicalCard:
    """A fresh virtual old card from a bundled profile name or a profile path."""
    path = old_profile_path(name_or_path)
    if path is None:
        raise ProfileError(f"No old medical insurance card profile {str(name_or_path)!r}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return OldMedicalCard(OldMedicalProfile.from_dict(data, str(path)))


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
        self.ef15 = RecordEF(EF15, [encode_simple(item.tag, item.encode(values[item.key])) for item in OLD_ITEMS])
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
        self._app_selected = False
        self._ef: RecordEF | None = None

    def _select(self, command: Command) -> Reply:
        """SELECT by DF name (P1 04) of the medical application, or EF15 by FID (P1 00/02)."""
        if command.p1 == 0x04:
            if command.data != OLD_DF_NAME:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self._app_selected, self._ef = True, None
            return b"", SW.OK
        if command.p1 in (0x00, 0x02):
            if len(command.data) != 2:
                raise CardStatus(SW.WRONG_LENGTH)
            if not self._app_selected or int.from_bytes(command.data, "big") != EF15:
                raise CardStatus(SW.FILE_NOT_FOUND)
            self._ef = self.ef15
            return b"", SW.OK
        raise CardStatus(SW.WRONG_P1P2)

    def _current(self, p2: int) -> RecordEF:
        if p2 & 0x07 != 0x04:
            raise CardStatus(SW.WRONG_P1P2)
        sfi = p2 >> 3
        if sfi == 0 and self._ef is not None:
            return self._ef
        if sfi == EF15 & 0x1F and self._app_selected:
            self._ef = self.ef15
            return self._ef
        raise CardStatus(SW.NO_CURRENT_EF if sfi == 0 else SW.FILE_NOT_FOUND)

    def _read_record(self, command: Command) -> Reply:
        """READ RECORD ``00 B2 n 04 00`` (ISO 7816-4 s7.3.3), or by SFI 15."""
        if command.data or command.le is None:
            raise CardStatus(SW.WRONG_LENGTH)
        record = self._current(command.p2).record(command.p1)
        if record is None:
            raise CardStatus(SW.RECORD_NOT_FOUND)
        return record, SW.OK

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
        if not self._app_selected:
            raise CardStatus(SW.CONDITIONS)
        return self.balance_fen.to_bytes(4, "big"), SW.OK
