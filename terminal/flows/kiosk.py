"""The self-service kiosk inquiry (docs/flows.md, "Kiosk").

Insert card -> genuine-card check -> PIN -> the holder's information (masked: ID number, card number,
birth date), the medical personal account balance as the platform answers it (1101), and the records
this terminal's journal and queue hold for the card (registrations, payments, refunds, activations).
Nothing is recorded. With the platform unreachable the balance says so; the rest is shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sscard.drivers.connection import Connection
from sscard.message.envelope import iso_time, parse_yuan, yuan
from sscard.message.infno import Infno, clerk_word
from sscard.terminal.card import holder
from sscard.terminal.flows.common import Clerk, Site, is_active, look_up, present_card, verify_holder_pin
from sscard.terminal.online import PlatformRefusedError
from sscard.terminal.queue import QueuedRecord, record_data
from sscard.terminal.upload import CentralError


def record_line(record: QueuedRecord) -> dict[str, Any]:
    """One record for the holder: when, what, where, amount, state (no personal data)."""
    data = record_data(record)
    line: dict[str, Any] = {
        "time": iso_time(record.created_at),
        "what": clerk_word(record.infno),
        "infno": record.infno,
        "msgid": record.msgid,
        "cross_region": record.cross_region,
        "state": record.state,
    }
    if "dept_name" in data:
        line["department"] = data["dept_name"]
    for key in ("medfee_sumamt", "acct_balc"):
        if key in data:
            line["amount_fen"] = fen = int(parse_yuan(data[key]))
            line["amount"] = yuan(fen)
    return line


@dataclass(frozen=True)
class KioskView:
    """What the kiosk shows: the holder, the card's fields as the screen shows them (``shown``: masked,
    the name too, docs/flows.md "Kiosk"), activation, the platform's balance (None with
    ``balance_note`` saying why when it could not be asked), the records."""

    holder: dict[str, Any]
    shown: dict[str, Any]
    activated: bool
    balance_fen: int | None
    balance_note: str
    records: list[dict[str, Any]]
    #: how many records the terminal holds for the card (``records`` is the newest of them)
    records_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "expiry_date": self.shown["expiry_date"], "activated": self.activated,
                "balance_fen": self.balance_fen,
                "balance": None if self.balance_fen is None else yuan(self.balance_fen),
                "balance_note": self.balance_note, "records": self.records, "records_total": self.records_total}


#: records a kiosk screen shows at once, newest first
RECORDS_SHOWN = 20


def inquiry(connection: Connection, site: Site, clerk: Clerk, limit: int = RECORDS_SHOWN) -> KioskView:
    """Show the holder's information and its ``limit`` newest records (module docstring)."""
    at = present_card(connection, site)
    verify_holder_pin(at, clerk)
    identity = at.identity
    fields = identity.to_dict(redact=True)
    shown = {key: fields[key] for key in ("full_name", "social_security_number", "card_number", "sex_name",
                                           "birth_date", "issuing_region", "expiry_date")}
    balance, note = None, "no platform configured"
    if site.platform is not None:
        try:
            person = look_up(site, at)
            balance, note = person.balance, "as the platform answers it"
        except (CentralError, PlatformRefusedError) as err:
            note = f"the platform cannot say now ({err})"
    held = [r for r in site.outbox.for_card(at.card_sn) if r.infno != Infno.REVERSAL]  # newest first
    records = [record_line(r) for r in held[:limit]]
    # a public screen: the holder masked as the screen shows it (the name, the card number too)
    masked = {**holder(identity), "name": shown["full_name"], "id_number": shown["social_security_number"],
              "card_number": shown["card_number"]}
    return KioskView(masked, shown, is_active(identity, site.outbox), balance, note, records, len(held))
