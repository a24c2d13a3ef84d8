"""The self-service kiosk inquiry (DESIGN.md item 7).

Insert card -> genuine-card check -> PIN -> the holder's information (masked: ID number, card number,
birth date) and the records this terminal's queue holds for the card (registrations, purchases,
activations), with the account balance as this terminal sees it (:mod:`terminal.flows.account`).
Nothing is queued.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.connection import Connection
from terminal.envelope import INFNO, yuan
from terminal.flows.account import account_view
from terminal.flows.common import Clerk, Site, is_active, present_card, record_data, verify_holder_pin
from terminal.queue import QueuedRecord

#: what each kind of record is called on the kiosk's screen
RECORD_LABELS = {
    "2201": "registration", "2401": "admission", "2102": "purchase", "SS01": "activation",
    "SS02": "account moved from the old card (activation)",
}


def record_line(record: QueuedRecord) -> dict[str, Any]:
    """One record for the holder: when, what, where, amount, state (no personal data)."""
    data = record_data(record)
    line = {
        "time": record.created_at.strftime("%Y-%m-%d %H:%M"),
        "what": RECORD_LABELS.get(record.infno, INFNO.get(record.infno, record.infno)),
        "infno": record.infno,
        "msgid": record.msgid,
        "cross_region": record.cross_region,
        "state": record.state,
    }
    if "dept_name" in data:
        line["department"] = data["dept_name"]
    for key in ("acct_pay", "acct_balc"):
        if key in data:
            line["amount"] = data[key]
    return line


@dataclass(frozen=True)
class KioskView:
    """What the kiosk shows: masked holder fields, activation, the balance if known, the records."""

    holder: dict[str, Any]
    active: bool
    balance: str | None
    records: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "active": self.active, "balance": self.balance, "records": self.records}


def inquiry(connection: Connection, site: Site, clerk: Clerk) -> KioskView:
    """Show the holder's information and records (module docstring)."""
    at = present_card(connection, site)
    verify_holder_pin(at, clerk)
    identity = at.identity
    fields = identity.to_dict(redact=True)
    holder = {key: fields[key] for key in ("full_name", "social_security_number", "card_number", "sex_name",
                                            "birth_date", "issuing_region", "expiry_date")}
    view = account_view(site.outbox, at.card_sn)
    records = [record_line(r) for r in site.outbox.for_card(at.card_sn)]
    return KioskView(holder, is_active(identity, site.outbox), yuan(view.balance) if view.known else None, records)
