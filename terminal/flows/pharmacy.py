"""The pharmacy counter: the dual-card insert, purchases settled online, refunds.

**Dual-card insert** (docs/flows.md, "Activation"): the old medical insurance card is read first (its
own reader, or the one reader before the new card goes in), then the new social security card:
genuine-card check, same person (ID number), the holder's PIN. Then ``SS02`` moves the old card's
account to the person's account and activates the new card: asked online (journaled; the platform
moves an old card's account once, ever), or, with the platform unreachable, queued to upload later.
The old card is then marked replaced where it allows it and is still in its reader. A swapped order, a
mismatch, an old card already replaced or already moved, a card removed before the move: clear
message, nothing done.

**Purchase** (docs/platform.md, "2101 / 2102"): the till's sale number and the items (integer fen);
1101 for the card's holder; 2101 shows the split (fund, medical personal account, cash) the platform
would make; the holder's PIN; 2102 settles it, journaled before and after. The platform decides the
split and answers the balance; it settles a sale number once per institution, whichever window or
terminal asks. A sale already paid at this terminal is reported from the journal, never paid twice.

**Refund** (2103): the settlement of a sale paid at this terminal is cancelled; the platform gives back
exactly what it took.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sscard.apdu.errors import SSCardError
from sscard.drivers.connection import Connection
from sscard.drivers.errors import CardUnresponsiveError, NoCardError, TransportError
from sscard.message.envelope import Fen, yuan
from sscard.message.infno import Infno
from sscard.terminal.card import holder
from sscard.terminal.errors import IdentityMismatchError, NotSocialSecurityCardError
from sscard.terminal.flows.common import (
    CardAtCounter,
    Clerk,
    PaymentRefusedError,
    RefusedError,
    Site,
    activation,
    holder_line,
    insurances_line,
    is_active,
    look_up,
    person_fields,
    present_card,
    same_person,
    timestamp,
    verify_holder_pin,
)
from sscard.terminal.flows.settlement import (
    Item,
    Refund,
    Split,
    bill_number,
    bill_total,
    parse_money,
    platform_errors,
    refund as refund_bill,
    same_items,
    settle,
    standing,
)
from sscard.terminal.oldcard import OldCard, OldMedicalCardSession, WrongCardOrderError
from sscard.terminal.online import PlatformRefusedError, ReversedError, yuan_field
from sscard.terminal.queue import QueuedRecord
from sscard.terminal.upload import CentralError

__all__ = ["DualCardActivation", "Item", "Purchase", "Refund", "dual_card_activate", "parse_money", "purchase",
           "read_old_card", "refund"]

log = logging.getLogger(__name__)

#: insurance types a pharmacy settles, the one with a personal account first
PHARMACY_INSUTYPES = ("310", "390")

# --- the dual-card insert ------------------------------------------------------------------------


@dataclass(frozen=True)
class DualCardActivation:
    """What the dual-card insert did: the SS02 record (answered online, or queued), the balance the
    platform answered (None when queued), and whether the old card was marked replaced."""

    old: OldCard
    holder: dict[str, object]
    record: QueuedRecord
    activated_now: bool
    old_card_marked: bool
    old_card_note: str
    balance: Fen | None = None

    @property
    def online(self) -> bool:
        return self.balance is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "msgid": self.record.msgid,
            "infno": self.record.infno,
            "holder": self.holder,
            "old_card": self.old.to_dict(),
            "moved_fen": int(self.old.balance),
            "moved": yuan(self.old.balance),
            "online": self.online,
            "balance_fen": None if self.balance is None else int(self.balance),
            "balance": None if self.balance is None else yuan(self.balance),
            "activation": activation(self.record if self.activated_now else None),
            "old_card_marked_replaced": self.old_card_marked,
            "old_card_note": self.old_card_note,
        }


def read_old_card(connection: Connection) -> OldCard:
    """Read the old medical insurance card (WrongCardOrderError when the new card is there instead)."""
    return OldMedicalCardSession(connection).read()


def _present_new_card(connection: Connection, site: Site) -> CardAtCounter:
    try:
        return present_card(connection, site)
    except NotSocialSecurityCardError:
        try:
            OldMedicalCardSession(connection).select()
        except SSCardError:
            raise NotSocialSecurityCardError(
                "The card in the new card's reader is not a social security card. Nothing was recorded.") from None
        raise WrongCardOrderError(
            "The card in the new card's reader is the old medical insurance card: the new social security "
            "card goes there. Nothing was recorded.") from None


def _earlier_transfer(site: Site, old: OldCard) -> QueuedRecord | None:
    """An SS02 of this terminal moving ``old``'s account that stands (queued, answered, or unknown)."""
    standing = site.outbox.standing(Infno.TRANSFER, "old_card_no", old.card_number)
    return standing[0] if standing else None


def dual_card_activate(old: OldCard, new_connection: Connection, site: Site, clerk: Clerk,
                       old_connection: Connection | None = None,
                       recorded: Callable[[DualCardActivation], None] | None = None) -> DualCardActivation:
    """Move ``old``'s account (already read) to the person of the social security card in
    ``new_connection`` (module docstring).

    ``old_connection``: the old card's reader when it is still there (two readers); it is read again
    just before the move (a card pulled halfway moves nothing) and marked replaced after. None when
    one reader took the cards in turn: the old card is gone and is not marked.

    ``recorded``: called once the move is recorded, before the old card is marked, with the result
    as it stands if the mark never ends (not marked): the CLI's card watchdog reports it when the old
    card stalls there (terminal/cli/watchdog.py), since the account move is done by then.
    """
    if old.replaced:
        raise RefusedError("The old medical insurance card is already marked replaced: its account was moved "
                           "before. Nothing was recorded.")
    earlier = _earlier_transfer(site, old)
    if earlier is not None:
        raise RefusedError(f"This old medical insurance card's account was already moved ({earlier.msgid}). "
                           "Nothing was recorded.")
    at = _present_new_card(new_connection, site)
    identity = at.identity
    clerk.say(f"New card genuine: {holder_line(identity)}")
    if not same_person(old.social_security_number, identity.social_security_number):
        raise IdentityMismatchError("The old medical insurance card and the social security card belong to "
                                    "different people. Nothing was recorded.")
    person = None
    if site.platform is not None:
        try:
            person = look_up(site, at)
        except CentralError as err:
            clerk.say(f"The platform cannot be asked now ({err}): the account move will wait in the queue.")
        except PlatformRefusedError as err:
            raise RefusedError(f"{err} Nothing was recorded.") from None
    verify_holder_pin(at, clerk)
    clerk.say("PIN correct.")
    if old_connection is not None and OldMedicalCardSession(old_connection).read() != old:
        raise RefusedError("The old medical insurance card changed while the cards were being read. "
                           "Nothing was recorded.")
    activated_now = not is_active(identity, site.outbox)
    data = {**person_fields(identity), "old_card_no": old.card_number, "old_insuplc_admdvs": old.issuing_region,
            "acct_balc": old.balance, "actv_way": "dual-card", "actv_time": timestamp(site)}
    balance = None
    record = None
    if person is not None:
        try:
            record, output = site.online().transact(
                Infno.TRANSFER, {"data": {"psn_no": person.psn_no, **data}}, insured_region=person.insured_region,
                card_sn=at.card_sn, check=lambda out: yuan_field(out["data"], "balc"))
            balance = Fen(yuan_field(output["data"], "balc"))
        except PlatformRefusedError as err:
            raise RefusedError(f"{err} Nothing was recorded.") from None
        except ReversedError:
            raise
        except CentralError as err:
            if err.maybe_processed:  # answered nothing usable and not reversed: reported as it is
                raise
            clerk.say(f"The platform cannot be reached ({err}): the account move will wait in the queue.")
    if record is None:
        record = site.outbox.add(Infno.TRANSFER, {"data": data}, insured_region=identity.issuing_region, card_sn=at.card_sn)
        clerk.say(f"Account move recorded: {yuan(old.balance)} yuan, to be made when the platform has it "
                  f"({record.msgid}).")
    else:
        clerk.say(f"Account moved to the new card: {yuan(old.balance)} yuan; balance {yuan(balance or 0)} yuan "
                  f"({record.msgid}).")
    if recorded is not None and old_connection is not None:
        recorded(DualCardActivation(old, holder(identity), record, activated_now, False,
                                    not_answering_note("it did not answer"), balance))
    marked, note = _mark_old_card(old_connection)
    clerk.say(note)
    return DualCardActivation(old, holder(identity), record, activated_now, marked, note, balance)


def not_answering_note(reason: str) -> str:
    """What the screen says when the old card stopped answering (pulled, stalled) after the move was
    recorded; it may or may not have taken the mark."""
    return _not_marked("not answering", f": {reason.rstrip('.')}")


def _not_marked(why: str, detail: str = "") -> str:
    """The note for an old card the mark did not reach, after the move was recorded."""
    return (f"Old card not marked replaced ({why}){detail}. The account move is recorded; "
            "this terminal will refuse the old card for another transfer.")


def _mark_old_card(connection: Connection | None) -> tuple[bool, str]:
    if connection is None:
        return False, "Old card not marked (it is out of the reader); this terminal will refuse it for another transfer."
    try:
        if OldMedicalCardSession(connection).mark_replaced():
            return True, "Old card marked replaced: give it back to the holder or keep it, as the site decides."
        return False, "Old card not marked: its issuer does not allow it; this terminal will refuse it for another transfer."
    except (NoCardError, CardUnresponsiveError, TransportError) as err:  # pulled, mute: the mark is best effort
        return False, not_answering_note(str(err))
    except SSCardError as err:  # the record is queued: the mark is best effort
        return False, _not_marked(str(err).rstrip("."))
    except Exception as err:  # a bug must not hide a recorded transaction from the clerk
        log.warning("marking the old card failed", exc_info=True)
        return False, _not_marked(f"internal error: {type(err).__name__}")


# --- purchases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    """A sale settled online; ``already_paid`` when this terminal's journal had paid it before."""

    sale_no: str
    holder: dict[str, object]
    split: Split
    record: QueuedRecord
    already_paid: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "sale_no": self.sale_no,
            "holder": self.holder,
            "msgid": self.record.msgid,
            **self.split.to_dict(),
            "cross_region": self.record.cross_region,
            "already_paid": self.already_paid,
        }


def purchase(connection: Connection, site: Site, sale_no: str, items: list[Item], clerk: Clerk) -> Purchase:
    """Settle ``items`` online (module docstring). Refusals pay nothing: counterfeit (8), wrong or
    blocked PIN (6/7), card removed before the payment (4), card not activated (15), no insurance in
    force, the platform's refusal or a sale number used for another sale (16), the platform unreachable
    (14, nothing paid), its answer lost and reversed (14, nothing paid) or not reversed yet (17)."""
    sale = bill_number(sale_no)
    total = bill_total(items)
    site.online()
    paid = standing(site, Infno.PHARMACY_SETTLEMENT, sale)
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if paid is not None:
        if paid.card_sn != at.card_sn:
            raise PaymentRefusedError(f"Sale {sale} was already paid with another card: a sale is paid once. "
                                      "Nothing was paid.")
        if not same_items(paid, items, "drugdetail"):
            raise PaymentRefusedError(f"Sale {sale} was already paid with other items ({paid.msgid}). "
                                      "Nothing was paid.")
        clerk.say(f"Sale {sale} is already paid ({paid.msgid}): nothing new paid.")
        return Purchase(sale, holder(identity), Split.of(paid, total), paid, True)
    if not is_active(identity, site.outbox):
        raise RefusedError("This card is not activated: activate it at a bank counter, by a first registration "
                           "or by a dual-card insert. Nothing was paid.")
    unpaid = "The sale was not paid: take another way to pay, or try again when the platform answers."
    with platform_errors("sale", unpaid):
        person = look_up(site, at)
    insurance = person.insurance(*PHARMACY_INSUTYPES)
    if insurance is None:
        raise PaymentRefusedError(f"The holder has no medical insurance in force that pays at a pharmacy "
                                  f"({insurances_line(person)}). Nothing was paid.")
    body = {"data": {"psn_no": person.psn_no, **person_fields(identity), "med_type": "41", "medfee_sumamt": total,
                     "psn_setlway": "01", "chrg_bchno": sale, "insutype": insurance.insutype,
                     "acct_used_flag": "1", "begntime": timestamp(site)},
            "drugdetail": [{"feedetl_sn": f"{n:04d}", **item.to_body()} for n, item in enumerate(items, 1)]}
    record, split = settle(site, person, Infno.PHARMACY_SETTLEMENT, body, total, clerk, card_sn=at.card_sn,
                           verify_pin=lambda: verify_holder_pin(at, clerk), not_done=unpaid)
    return Purchase(sale, holder(identity), split, record, False)


def refund(site: Site, sale_no: str, clerk: Clerk) -> Refund:
    """Refund a sale paid at this terminal (2103; :func:`terminal.flows.settlement.refund`)."""
    return refund_bill(site, Infno.PHARMACY_SETTLEMENT, bill_number(sale_no), clerk)
