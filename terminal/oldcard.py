"""A session with the old medical insurance card (the card the social security card replaces).

Files and commands are a project convention (docs/old-medical-card.md; bytes in :mod:`apdu.oldmedical`).
A social security card put where the old card was expected is recognised and reported as such, so
the pharmacy's dual-card insert can tell the clerk the cards are the wrong way round.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sscard.apdu import commands, oldmedical
from sscard.apdu.errors import CardDataError, SSCardError, mask
from sscard.apdu.status import SW
from sscard.apdu.tlv import decode_simple
from sscard.drivers.connection import Connection
from sscard.message.envelope import Fen, yuan
from sscard.terminal.errors import NotSocialSecurityCardError

log = logging.getLogger(__name__)


class NotOldMedicalCardError(SSCardError):
    """This is not an old medical insurance card."""


class WrongCardOrderError(SSCardError):
    """The new social security card is where the old medical insurance card belongs."""


@dataclass(frozen=True)
class OldCard:
    """What the old card says: its number, the holder, the issuing region, the account and its status."""

    card_number: str
    social_security_number: str
    name: str
    issuing_region: str
    balance: Fen
    replaced: bool

    def to_dict(self, redact: bool = True) -> dict[str, object]:
        """JSON-ready fields; identifiers masked unless ``redact`` is False."""
        return {
            "card_number": mask(self.card_number, 2, 4) if redact else self.card_number,
            "social_security_number": mask(self.social_security_number, 6, 0) if redact else self.social_security_number,
            "name": self.name,
            "issuing_region": self.issuing_region,
            "balance_fen": int(self.balance),
            "balance": yuan(self.balance),
            "replaced": self.replaced,
        }


class OldMedicalCardSession:
    """The old card's medical application, reached through ``connection``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def select(self) -> None:
        """SELECT the medical application; tell a social security card (wrong slot) from anything else."""
        response = self.connection.transmit(oldmedical.select_old_medical())
        if response.sw == SW.OK:
            self.connection.transmit(oldmedical.select_ef15()).check()
            return
        if self.connection.transmit(commands.select_ssc()).sw in (SW.OK, SW.NOT_ACTIVATED):
            raise WrongCardOrderError(
                "The card in the old card's reader is the new social security card: the old medical "
                "insurance card goes in first (or in its own reader). Nothing was recorded."
            )
        raise NotOldMedicalCardError(
            f"The card in the old card's reader is not an old medical insurance card (SW {response.sw:04X}). "
            "Nothing was recorded."
        )

    def read(self) -> OldCard:
        """SELECT, READ RECORD 1-5 of EF15 and GET BALANCE."""
        self.select()
        values: dict[str, str] = {}
        for item in oldmedical.OLD_ITEMS:
            response = self.connection.transmit(commands.read_record(item.record, secret=item.sensitive)).check()
            record = decode_simple(response.data)
            if item.tag not in record:
                raise CardDataError(f"record {item.record} of the old card does not hold the {item.name_en}")
            values[item.key] = str(item.decode(record[item.tag]))
        balance = self.connection.transmit(oldmedical.get_balance()).check().data
        if len(balance) != 4:
            raise CardDataError(f"the old card's balance is {len(balance)} bytes, not 4")
        return OldCard(
            card_number=values["card_number"],
            social_security_number=values["social_security_number"],
            name=values["name"],
            issuing_region=values["issuing_region"],
            balance=Fen(int.from_bytes(balance, "big")),
            replaced=values["status"] != f"{oldmedical.STATUS_IN_USE:02X}",
        )

    def mark_replaced(self) -> bool:
        """Mark the card "replaced by a social security card"; False when its issuer does not allow it (6982)."""
        self.select()
        response = self.connection.transmit(oldmedical.mark_replaced())
        if response.sw == SW.SECURITY_STATUS:
            log.info("the old card does not allow marking it replaced")
            return False
        response.check()
        return True


__all__ = ["NotOldMedicalCardError", "NotSocialSecurityCardError", "OldCard", "OldMedicalCardSession",
           "WrongCardOrderError"]
