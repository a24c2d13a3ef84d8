"""The bank counter activation (DESIGN.md item 4, first way).

The holder brings the card and the original ID document; the clerk types the document's number, which
must match the card's social security number; the holder sets a PIN (weak PINs refused); the terminal
sets it with RELOAD PIN and activates the application with APPLICATION UNBLOCK, each with a MAC from
the key store or PSAM (:mod:`terminal.crypto`; docs/card-profile.md, "MAC-protected commands"); the
medical account returns to normal; an ``SS01`` activation record is queued (docs/flows.md).
The card is changed first and the record queued after: a refusal or a card pulled before the
unblock queues nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apdu.crypto import PINFormatError, check_new_pin
from apdu.errors import IdentityMismatchError
from drivers.connection import Connection
from terminal.card import SocialSecurityCard
from terminal.crypto import check_genuine, reload_pin, unblock_application
from terminal.flows.common import Clerk, RefusedError, Site, holder_line, person_fields, same_person, timestamp
from terminal.queue import QueuedRecord


@dataclass(frozen=True)
class BankActivation:
    """What the bank counter did: the SS01 record."""

    holder: str
    record: QueuedRecord

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "msgid": self.record.msgid, "infno": self.record.infno,
                "activated": True, "pin_set": True, "medical_account": "normal"}


def choose_pin(clerk: Clerk) -> str:
    """The holder types the new PIN twice; a weak or malformed PIN, or two that differ, is refused (11)."""
    pin = clerk.ask_pin("New PIN")
    check_new_pin(pin)
    if clerk.ask_pin("New PIN again") != pin:
        raise PINFormatError("The two PINs typed differ: nothing was changed")
    return pin


def bank_activate(connection: Connection, site: Site, id_number: str, clerk: Clerk,
                  new_pin: Callable[[Clerk], str] = choose_pin) -> BankActivation:
    """Activate the card at a bank counter (module docstring). Refusals queue nothing: already active
    (15), counterfeit (8), ID document not matching (9), weak PIN (11), keys not the card's (8)."""
    card = SocialSecurityCard(connection)
    if card.select():
        raise RefusedError("This card is already activated: nothing to do (to set a new PIN use 'sscard reset-pin').")
    ref = check_genuine(card, site.keys)
    identity = card.read_identity()
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if not same_person(id_number, identity.social_security_number):
        raise IdentityMismatchError("The ID document number does not match the card: the card does not belong to "
                                    "this person. Nothing was changed or recorded.")
    clerk.say("ID document matches the card.")
    pin = new_pin(clerk)
    reload_pin(card, site.keys, ref, pin)
    unblock_application(card, site.keys, ref)
    clerk.say("PIN set; card activated; medical account back to normal.")
    record = site.outbox.add(
        "SS01",
        {"data": {**person_fields(identity), "actv_way": "bank", "actv_time": timestamp(site),
                  "medical_account": "normal"}},
        insured_region=identity.issuing_region, card_sn=identity.card_identification_code,
    )
    clerk.say(f"Activation recorded ({record.msgid}).")
    return BankActivation(holder_line(identity), record)
