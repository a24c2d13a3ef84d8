"""The pharmacy counter: the dual-card insert and purchases paid from the medical personal account.

**Dual-card insert** (DESIGN.md item 4): the old medical insurance card is read first (its own reader,
or the one reader before the new card goes in), then the new social security card: genuine-card check,
same person (ID number), the holder's PIN. One ``SS02`` record is queued: it links the old card to the
new one, moves the old card's account balance, and activates the new card (docs/flows.md, "Activation").
Then the old card is marked replaced where it allows it and is still in its reader. A swapped order,
a mismatch, an old card already replaced or already transferred, a card removed before the record is
queued: clear message, nothing queued.

**Purchase** (DESIGN.md item 5): items and amounts in integer fen, the holder's PIN, a ``2102``
settlement paid from the personal account (the terminal's view of the balance:
:mod:`terminal.flows.account`). Each purchase carries the till's sale number (``chrg_bchno``): a
sale already paid is never queued again, even when the card was pulled right after the payment and
the clerk runs the purchase again (docs/flows.md, "One payment, one record").
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apdu.errors import (
    CardUnresponsiveError,
    IdentityMismatchError,
    NoCardError,
    NotSocialSecurityCardError,
    SSCardError,
    TransportError,
)
from drivers.connection import Connection
from terminal.envelope import Fen, yuan
from terminal.flows.account import SETTLEMENT, TRANSFER, account_view
from terminal.flows.common import (
    CardAtCounter,
    Clerk,
    PaymentRefusedError,
    RefusedError,
    Site,
    amount,
    first,
    holder_line,
    is_active,
    person_fields,
    present_card,
    record_data,
    same_person,
    timestamp,
    verify_holder_pin,
)
from terminal.oldcard import OldCard, OldMedicalCardSession, WrongCardOrderError
from terminal.queue import QueuedRecord

log = logging.getLogger(__name__)

SALE_NO = re.compile(r"[A-Za-z0-9-]{1,30}")
#: ASCII digits only: ``\d`` and ``str.isdigit`` also take other scripts' digits and '²'
MONEY = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,2}))?")
QUANTITY = re.compile(r"[0-9]{1,9}")
MAX_QUANTITY = 9999

# --- the dual-card insert ------------------------------------------------------------------------


@dataclass(frozen=True)
class DualCardActivation:
    """What the dual-card insert did: the SS02 record, and whether the old card was marked replaced."""

    old: OldCard
    holder: str
    record: QueuedRecord
    activated_now: bool
    old_card_marked: bool
    old_card_note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "msgid": self.record.msgid,
            "infno": self.record.infno,
            "holder": self.holder,
            "old_card": self.old.to_dict(),
            "moved_fen": int(self.old.balance),
            "moved": yuan(self.old.balance),
            "activated_now": self.activated_now,
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
    return first(site.outbox.records(), lambda r: r.infno == TRANSFER
                 and record_data(r).get("old_card_no") == old.card_number)


def dual_card_activate(old: OldCard, new_connection: Connection, site: Site, clerk: Clerk,
                       old_connection: Connection | None = None,
                       recorded: Callable[[DualCardActivation], None] | None = None) -> DualCardActivation:
    """Link ``old`` (already read) to the social security card in ``new_connection`` (module docstring).

    ``old_connection``: the old card's reader when it is still there (two readers); it is read again
    just before the record is queued (a card pulled halfway queues nothing) and marked replaced after.
    None when one reader took the cards in turn: the old card is gone and is not marked.

    ``recorded``: called once the SS02 record is queued, before the old card is marked, with the result
    as it stands if the mark never ends (not marked): the CLI's card watchdog reports it when the old
    card stalls there (terminal/cli/watchdog.py), since the account move is recorded by then.
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
    verify_holder_pin(at, clerk)
    clerk.say("PIN correct.")
    if old_connection is not None and OldMedicalCardSession(old_connection).read() != old:
        raise RefusedError("The old medical insurance card changed while the cards were being read. "
                           "Nothing was recorded.")
    activated_now = not is_active(identity, site.outbox)
    record = site.outbox.add(
        TRANSFER,
        {"data": {**person_fields(identity), "old_card_no": old.card_number, "old_insuplc_admdvs": old.issuing_region,
                  "acct_balc": old.balance, "actv_way": "dual-card", "actv_time": timestamp(site)}},
        insured_region=identity.issuing_region, card_sn=at.card_sn,
    )
    clerk.say(f"Account moved to the new card: {yuan(old.balance)} yuan ({record.msgid}).")
    if recorded is not None and old_connection is not None:
        recorded(DualCardActivation(old, holder_line(identity), record, activated_now, False,
                                    not_answering_note("it did not answer")))
    marked, note = _mark_old_card(old_connection)
    clerk.say(note)
    return DualCardActivation(old, holder_line(identity), record, activated_now, marked, note)


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


def parse_money(text: str) -> Fen:
    """``"12"``, ``"12.5"``, ``"12.50"`` yuan -> fen, by string arithmetic only (never float)."""
    match = MONEY.fullmatch(text.strip())
    if not match:
        raise PaymentRefusedError(f"{text!r} is not an amount in yuan (like 12.50)")
    whole, cents = match.group(1), (match.group(2) or "0").ljust(2, "0")
    return Fen(int(whole) * 100 + int(cents))


@dataclass(frozen=True)
class Item:
    """One line of a sale: name, quantity and unit price in fen."""

    name: str
    quantity: int
    price: Fen

    @property
    def total(self) -> Fen:
        return Fen(self.quantity * self.price)

    @classmethod
    def parse(cls, text: str) -> Item:
        """``"NAME:QUANTITY:PRICE"`` with the price in yuan, e.g. ``"阿莫西林胶囊:2:12.50"``."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0].strip() or not QUANTITY.fullmatch(parts[1].strip()):
            raise PaymentRefusedError(f"{text!r} is not an item (NAME:QUANTITY:PRICE, e.g. 阿莫西林胶囊:2:12.50)")
        quantity = int(parts[1].strip())
        if not 1 <= quantity <= MAX_QUANTITY:
            raise PaymentRefusedError(f"the quantity of {parts[0].strip()} must be 1 to {MAX_QUANTITY}")
        return cls(parts[0].strip(), quantity, parse_money(parts[2]))

    def to_body(self) -> dict[str, Any]:
        return {"med_list_name": self.name, "cnt": self.quantity, "pric": self.price,
                "det_item_fee_sumamt": self.total}


@dataclass(frozen=True)
class Purchase:
    """A settlement paid from the personal account; ``already_paid`` when the sale was paid before."""

    sale_no: str
    holder: str
    total: Fen
    balance_after: Fen
    record: QueuedRecord
    already_paid: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "sale_no": self.sale_no,
            "holder": self.holder,
            "msgid": self.record.msgid,
            "total_fen": int(self.total),
            "total": yuan(self.total),
            "balance_after_fen": int(self.balance_after),
            "balance_after": yuan(self.balance_after),
            "cross_region": self.record.cross_region,
            "already_paid": self.already_paid,
        }


def _same_sale(record: QueuedRecord, items: list[Item]) -> bool:
    data = record_data(record)
    lines = [(i.get("med_list_name"), i.get("cnt"), amount(i, "pric")) for i in data.get("items", [])]
    return lines == [(i.name, i.quantity, i.price) for i in items]


def _paid_by_another_card(site: Site, sale_no: str, card_sn: str) -> QueuedRecord | None:
    """A settlement of this terminal for ``sale_no`` paid with a card other than ``card_sn``: the till's
    sale number names one sale, whoever paid it (the other holder is never named)."""
    return first(site.outbox.with_data(SETTLEMENT, "chrg_bchno", sale_no), lambda r: r.card_sn != card_sn)


def purchase(connection: Connection, site: Site, sale_no: str, items: list[Item], clerk: Clerk) -> Purchase:
    """Pay ``items`` from the holder's personal account (module docstring). Refusals queue nothing:
    counterfeit (8), wrong/blocked PIN (6/7), card removed before the payment (4), card not
    activated (15), balance unknown or too low, sale number used for another sale or already paid
    with another card (16)."""
    if not SALE_NO.fullmatch(sale_no or ""):
        raise PaymentRefusedError("The sale number must be 1 to 30 letters, digits or '-' (from the till)")
    if not items:
        raise PaymentRefusedError("A purchase needs at least one item")
    total = Fen(sum(item.total for item in items))
    if total <= 0:
        raise PaymentRefusedError("The total is 0.00 yuan: there is nothing to pay from the account. "
                                  "Nothing was recorded.")
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if not is_active(identity, site.outbox):
        raise RefusedError("This card is not activated: activate it at a bank counter, by a first registration "
                           "or by a dual-card insert. Nothing was recorded.")
    view = account_view(site.outbox, at.card_sn)
    paid = first(view.payments, lambda r: record_data(r).get("chrg_bchno") == sale_no)
    if paid is None and _paid_by_another_card(site, sale_no, at.card_sn) is not None:
        raise PaymentRefusedError(f"Sale {sale_no} was already paid with another card: a sale is paid once. "
                                  "Nothing was recorded.")
    if paid is not None:
        if not _same_sale(paid, items):
            raise PaymentRefusedError(f"Sale {sale_no} was already paid with other items ({paid.msgid}). "
                                      "Nothing was recorded.")
        clerk.say(f"Sale {sale_no} is already paid ({paid.msgid}): nothing new recorded.")
        return Purchase(sale_no, holder_line(identity), total, amount(record_data(paid), "balc"), paid, True)
    if not view.known:
        raise PaymentRefusedError("This terminal knows no medical personal account balance for this card (no "
                                  "account moved to it here): pay another way. Nothing was recorded.")
    if total > view.balance:
        raise PaymentRefusedError(f"The total {yuan(total)} yuan is over the account balance {yuan(view.balance)} "
                                  "yuan. Nothing was recorded.")
    clerk.say(f"Total {yuan(total)} yuan from the medical personal account (balance {yuan(view.balance)} yuan).")
    verify_holder_pin(at, clerk)
    balance_after = Fen(view.balance - total)
    record = site.outbox.add(
        SETTLEMENT,
        {"data": {**person_fields(identity), "insutype": "310", "med_type": "41", "chrg_bchno": sale_no,
                  "setl_time": timestamp(site), "medfee_sumamt": total, "acct_pay": total, "psn_cash_pay": Fen(0),
                  "balc": balance_after, "items": [item.to_body() for item in items]}},
        insured_region=identity.issuing_region, card_sn=at.card_sn,
    )
    clerk.say(f"Paid {yuan(total)} yuan; balance {yuan(balance_after)} yuan ({record.msgid}).")
    return Purchase(sale_no, holder_line(identity), total, balance_after, record, False)
