"""The bank counter activation (docs/design.md item 4, first way).

The holder brings the card and the original ID document; the clerk types the document's number, which
must match the card's social security number; the holder sets a PIN (weak PINs refused); the terminal
sets it with RELOAD PIN and activates the application with APPLICATION UNBLOCK, each with a MAC from
the key store or PSAM (:mod:`terminal.keystore`; docs/card-profile.md, "MAC-protected commands"); the
medical account returns to normal; an ``SS01`` activation record is queued (docs/flows.md).

Two phases, so the card is never changed without its record (docs/flows.md, "Bank counter"):

1. the ``SS01`` record is queued **held** (no uploader claims it); a queue that cannot take it (disk
   full: exit 13) stops the flow before the card is touched;
2. the card is changed (RELOAD PIN, APPLICATION UNBLOCK); if that fails in this process (card pulled,
   card refused, keys wrong), the held record is withdrawn and nothing is left, unless the card,
   asked again (SELECT), says it is active: its answer was lost or spoiled but the change took;
3. the record is released (held -> pending, due now).

A run killed between 2 and 3 (or whose release failed) leaves the record held. The next
``bank activate`` with that card settles it: the card active (the change was done) -> the record is
released and the activation reported (exit 0); not active -> the record is withdrawn and the
activation proceeds as usual.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sscard.apdu.errors import SSCardError
from sscard.apdu.pin import PINFormatError, check_new_pin
from sscard.drivers.connection import Connection
from sscard.message.infno import Infno
from sscard.terminal.card import Identity, SocialSecurityCard, holder
from sscard.terminal.cardsecurity import check_genuine, reload_pin, unblock_application, unlocker
from sscard.terminal.errors import IdentityMismatchError
from sscard.terminal.flows.common import (
    Clerk,
    RefusedError,
    Site,
    activation,
    check_id_number,
    holder_line,
    person_fields,
    same_person,
    timestamp,
)
from sscard.terminal.keystore import CardKeyRef
from sscard.terminal.queue import QueuedRecord, QueueError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BankActivation:
    """What the bank counter did: the SS01 record; ``resumed`` when an interrupted run is finished."""

    holder: dict[str, object]
    record: QueuedRecord
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "msgid": self.record.msgid, "infno": self.record.infno,
                "activation": activation(self.record), "pin_set": True, "medical_account": "normal",
                "resumed_interrupted_activation": self.resumed}


def choose_pin(clerk: Clerk) -> str:
    """The holder types the new PIN twice; a weak or malformed PIN, or two that differ, is refused (11)."""
    pin = clerk.ask_pin("New PIN")
    check_new_pin(pin)
    if clerk.ask_pin("New PIN again") != pin:
        raise PINFormatError("The two PINs typed differ: nothing was changed")
    return pin


def _held_activations(site: Site, card_sn: str) -> list[QueuedRecord]:
    return [r for r in site.outbox.held(card_sn) if r.infno == Infno.ACTIVATION]


def _release(site: Site, record: QueuedRecord) -> QueuedRecord:
    """Held -> pending; a queue that cannot do it says what the clerk does next."""
    try:
        return site.outbox.release(record.msgid)
    except QueueError as err:
        raise QueueError(f"{err} The card IS activated and its activation record {record.msgid} is held in the "
                         "queue: once the queue works, put the card in again and run 'sscard bank activate' to "
                         "record it.") from None


def _resume(card: SocialSecurityCard, site: Site, id_number: str, clerk: Clerk) -> BankActivation | None:
    """An active card: an activation this terminal held for it (a run interrupted after the card
    change) is released and reported; else None (the card was activated elsewhere or before)."""
    if not site.outbox.held():  # the usual case: nothing held at all, so nothing more to read
        return None
    identity = card.read_identity(unlocker(site.keys))
    held = _held_activations(site, identity.card_identification_code)
    if not held:
        return None
    check_genuine(card, site.keys)
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if not same_person(id_number, identity.social_security_number):
        raise IdentityMismatchError("The ID document number does not match the card: the card does not belong to "
                                    "this person. Nothing was recorded.")
    record = _release(site, held[0])
    for extra in held[1:]:
        site.outbox.withdraw(extra.msgid)
    clerk.say("This card's activation here was interrupted after the card was changed: the card is active.")
    clerk.say(f"Activation recorded ({record.msgid}).")
    return BankActivation(holder(identity), record, resumed=True)


def _withdraw_stale(site: Site, identity: Identity, clerk: Clerk) -> None:
    """A card not active: activations held for it by an interrupted run never took effect."""
    stale = _held_activations(site, identity.card_identification_code)
    for record in stale:
        site.outbox.withdraw(record.msgid)
    if stale:
        clerk.say("An earlier activation of this card here was interrupted before the card was changed: "
                  "it is withdrawn.")


def _active_now(connection: Connection, card_sn: str) -> bool:
    """Asked again after a failed change: does the card say it is active, and is it still the card
    ``card_sn`` answering sanely (its identification code read back)? False when it cannot say: a
    card whose answers went wrong may say 9000 to anything, and its word alone records nothing."""
    try:
        again = SocialSecurityCard(connection)
        return again.select() and again.card_key_data()[0] == card_sn
    except SSCardError:
        return False


def _change_card(card: SocialSecurityCard, site: Site, ref: CardKeyRef, pin: str, held: QueuedRecord,
                 clerk: Clerk) -> None:
    """RELOAD PIN and APPLICATION UNBLOCK. On a failure in this process the held record is withdrawn,
    unless the card, asked again, says it is active: then the change took (its answer was lost or
    spoiled) and the record stays, to be released."""
    try:
        reload_pin(card, site.keys, ref, pin)
        unblock_application(card, site.keys, ref)
    except BaseException as err:
        if isinstance(err, SSCardError) and _active_now(card.connection, held.card_sn or ""):
            log.info("the card's answer to the change failed (%s) but it is active now", type(err).__name__)
            clerk.say("The card's answer to the change went wrong, but the card says it is activated now.")
            return
        try:
            site.outbox.withdraw(held.msgid)
        except QueueError:  # left held: the next run with this card settles it
            pass
        raise


def bank_activate(connection: Connection, site: Site, id_number: str, clerk: Clerk,
                  new_pin: Callable[[Clerk], str] = choose_pin,
                  before_change: Callable[[QueuedRecord], None] | None = None) -> BankActivation:
    """Activate the card at a bank counter (module docstring). Refusals queue nothing: already active
    (15), counterfeit (8), not an ID number or an ID document not matching (9), weak PIN (11), keys not
    the card's (8).

    ``before_change``: called with the held record just before the card is changed (the CLI's card
    watchdog then says how to finish if the card stalls; terminal/cli/watchdog.py).
    """
    id_number = check_id_number(id_number)  # a typo is "not an ID number", before the card is read
    card = SocialSecurityCard(connection)
    if card.select():
        resumed = _resume(card, site, id_number, clerk)
        if resumed is not None:
            return resumed
        raise RefusedError("This card is already activated: nothing to do (to set a new PIN use 'sscard reset-pin').")
    ref = check_genuine(card, site.keys)
    identity = card.read_identity(unlocker(site.keys))
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if not same_person(id_number, identity.social_security_number):
        raise IdentityMismatchError("The ID document number does not match the card: the card does not belong to "
                                    "this person. Nothing was changed or recorded.")
    clerk.say("ID document matches the card.")
    pin = new_pin(clerk)
    _withdraw_stale(site, identity, clerk)
    held = site.outbox.add(
        Infno.ACTIVATION,
        {"data": {**person_fields(identity), "actv_way": "bank", "actv_time": timestamp(site),
                  "medical_account": "normal"}},
        insured_region=identity.issuing_region, card_sn=identity.card_identification_code, held=True,
    )
    if before_change is not None:
        before_change(held)
    _change_card(card, site, ref, pin, held, clerk)
    clerk.say("PIN set; card activated; medical account back to normal.")
    record = _release(site, held)
    clerk.say(f"Activation recorded ({record.msgid}).")
    return BankActivation(holder(identity), record)
