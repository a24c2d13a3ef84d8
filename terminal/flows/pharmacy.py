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

import json
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
from message.envelope import Fen, yuan
from terminal.flows.common import (
    CardAtCounter,
    Clerk,
    PaymentRefusedError,
    RefusedError,
    Site,
    holder_line,
    is_active,
    look_up,
    person_fields,
    present_card,
    record_data,
    same_person,
    timestamp,
    verify_holder_pin,
)
from terminal.oldcard import OldCard, OldMedicalCardSession, WrongCardOrderError
from terminal.online import PlatformRefusedError, ReversedError, yuan_field
from terminal.queue import ANSWERED, CALLING, QueuedRecord
from terminal.upload import CentralError

log = logging.getLogger(__name__)

SETTLEMENT, CANCELLATION, TRANSFER = "2102", "2103", "SS02"
SALE_NO = re.compile(r"[A-Za-z0-9-]{1,30}")
#: ASCII digits only: ``\d`` and ``str.isdigit`` also take other scripts' digits and '²'
MONEY = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,2}))?")
QUANTITY = re.compile(r"[0-9]{1,9}")
MAX_QUANTITY = 9999
#: insurance types a pharmacy settles, the one with a personal account first
PHARMACY_INSUTYPES = ("310", "390")

# --- the dual-card insert ------------------------------------------------------------------------


@dataclass(frozen=True)
class DualCardActivation:
    """What the dual-card insert did: the SS02 record (answered online, or queued), the balance the
    platform answered (None when queued), and whether the old card was marked replaced."""

    old: OldCard
    holder: str
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
    """An SS02 of this terminal moving ``old``'s account that stands (queued, answered, or unknown)."""
    standing = site.outbox.standing(TRANSFER, "old_card_no", old.card_number)
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
                TRANSFER, {"data": {"psn_no": person.psn_no, **data}}, insured_region=person.insured_region,
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
        record = site.outbox.add(TRANSFER, {"data": data}, insured_region=identity.issuing_region, card_sn=at.card_sn)
        clerk.say(f"Account move recorded: {yuan(old.balance)} yuan, to be made when the platform has it "
                  f"({record.msgid}).")
    else:
        clerk.say(f"Account moved to the new card: {yuan(old.balance)} yuan; balance {yuan(balance or 0)} yuan "
                  f"({record.msgid}).")
    if recorded is not None and old_connection is not None:
        recorded(DualCardActivation(old, holder_line(identity), record, activated_now, False,
                                    not_answering_note("it did not answer"), balance))
    marked, note = _mark_old_card(old_connection)
    clerk.say(note)
    return DualCardActivation(old, holder_line(identity), record, activated_now, marked, note, balance)


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
class Split:
    """A settlement's figures as the platform answered them (2101, 2102, 2103), in fen."""

    setl_id: str
    total: Fen
    fund: Fen
    account: Fen
    cash: Fen
    balance: Fen
    setl_time: str

    @classmethod
    def from_output(cls, output: dict[str, Any], total: int, *, settled: bool) -> Split:
        """The ``setlinfo`` of an answer, checked: the shares add up to the bill, none negative, the bill
        is ``total``, a settlement has its ``setl_id`` (ValueError / KeyError / TypeError otherwise)."""
        info = output["setlinfo"]
        split = cls(str(info.get("setl_id") or ""), Fen(yuan_field(info, "medfee_sumamt")),
                    Fen(yuan_field(info, "fund_pay_sumamt")), Fen(yuan_field(info, "acct_pay")),
                    Fen(yuan_field(info, "psn_cash_pay")), Fen(yuan_field(info, "balc")), str(info.get("setl_time") or ""))
        if split.total != total:
            raise ValueError(f"the platform settled {yuan(split.total)} yuan, not the {yuan(total)} asked")
        if split.fund + split.account + split.cash != split.total or min(split.fund, split.account, split.cash) < 0:
            raise ValueError("the shares do not add up to the bill")
        if split.balance < 0:
            raise ValueError("a negative balance")
        if settled and not split.setl_id:
            raise ValueError("no setl_id")
        return split

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"setl_id": self.setl_id}
        for name in ("total", "fund", "account", "cash", "balance"):
            value = getattr(self, name)
            fields[f"{name}_fen"] = int(value)
            fields[name] = yuan(value)
        return fields


@dataclass(frozen=True)
class Purchase:
    """A sale settled online; ``already_paid`` when this terminal's journal had paid it before."""

    sale_no: str
    holder: str
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


def sale_number(text: str) -> str:
    """The till's sale number as the platform is told it: trimmed, letters in capitals (a sale is the
    same sale however the till's print is typed); :class:`PaymentRefusedError` when malformed."""
    sale = (text or "").strip()
    if not SALE_NO.fullmatch(sale):
        raise PaymentRefusedError("The sale number must be 1 to 30 letters, digits or '-' (from the till)")
    return sale.upper()


def _drug_details(items: list[Item]) -> list[dict[str, Any]]:
    return [{"feedetl_sn": f"{n:04d}", **item.to_body()} for n, item in enumerate(items, 1)]


def _same_items(record: QueuedRecord, items: list[Item]) -> bool:
    lines = json.loads(record.envelope)["input"].get("drugdetail") or []
    return [(d.get("med_list_name"), d.get("cnt"), d.get("pric")) for d in lines] == [
        (i.name, i.quantity, yuan(i.price)) for i in items]


def _paid(site: Site, sale: str) -> QueuedRecord | None:
    """This terminal's settlement of ``sale`` that stands (answered, not refunded here), if any;
    :class:`PaymentRefusedError` while another process of this terminal is paying it."""
    entries = site.outbox.with_data(SETTLEMENT, "chrg_bchno", sale)
    live = [e for e in entries if e.state == CALLING]
    if live:
        raise PaymentRefusedError(f"Sale {sale} is being paid at this terminal right now ({live[0].msgid}): wait "
                                  "for that payment to end. Nothing was paid.")
    answered = [e for e in entries if e.state == ANSWERED and _refund_of(site, e) is None]
    return answered[-1] if answered else None


def _setl_id(record: QueuedRecord) -> str:
    output = (record.reply or {}).get("output") or {}
    return str((output.get("setlinfo") or {}).get("setl_id") or "")


def _refund_of(site: Site, settlement: QueuedRecord) -> QueuedRecord | None:
    setl_id = _setl_id(settlement)
    refunds = [r for r in site.outbox.with_data(CANCELLATION, "setl_id", setl_id) if r.state in (ANSWERED, CALLING)]
    return refunds[0] if refunds and setl_id else None


def _unreachable(err: CentralError, what: str) -> CentralError:
    """The platform could not be asked: its error (exit 14), with what was not done in a clerk's words."""
    done = CentralError(f"{str(err).rstrip('.')}. {what}")
    done.maybe_processed = err.maybe_processed
    return done


def purchase(connection: Connection, site: Site, sale_no: str, items: list[Item], clerk: Clerk) -> Purchase:
    """Settle ``items`` online (module docstring). Refusals pay nothing: counterfeit (8), wrong or
    blocked PIN (6/7), card removed before the payment (4), card not activated or person not insured (15),
    the platform's refusal or a sale number used for another sale (16), the platform unreachable (14,
    nothing paid), its answer lost and reversed (14, nothing paid) or not reversable yet (17)."""
    sale = sale_number(sale_no)
    if not items:
        raise PaymentRefusedError("A purchase needs at least one item")
    total = Fen(sum(item.total for item in items))
    if total <= 0:
        raise PaymentRefusedError("The total is 0.00 yuan: there is nothing to pay from the account. "
                                  "Nothing was recorded.")
    platform = site.online()
    paid = _paid(site, sale)
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if paid is not None:
        if paid.card_sn != at.card_sn:
            raise PaymentRefusedError(f"Sale {sale} was already paid with another card: a sale is paid once. "
                                      "Nothing was paid.")
        if not _same_items(paid, items):
            raise PaymentRefusedError(f"Sale {sale} was already paid with other items ({paid.msgid}). "
                                      "Nothing was paid.")
        clerk.say(f"Sale {sale} is already paid ({paid.msgid}): nothing new paid.")
        split = Split.from_output((paid.reply or {}).get("output") or {}, total, settled=True)
        return Purchase(sale, holder_line(identity), split, paid, True)
    if not is_active(identity, site.outbox):
        raise RefusedError("This card is not activated: activate it at a bank counter, by a first registration "
                           "or by a dual-card insert. Nothing was paid.")
    unpaid = "The sale was not paid: take another way to pay, or try again when the platform answers."
    try:
        person = look_up(site, at)
        insurance = person.insurance(*PHARMACY_INSUTYPES)
        if insurance is None:
            held = ", ".join(f"{i.insutype} {'in force' if i.in_force else 'suspended'}" for i in person.insurances)
            raise PaymentRefusedError(f"The holder has no medical insurance in force that pays at a pharmacy "
                                      f"({held or 'not insured'}). Nothing was paid.")
        body = {"data": {"psn_no": person.psn_no, **person_fields(identity), "med_type": "41", "medfee_sumamt": total,
                         "psn_setlway": "01", "chrg_bchno": sale, "insutype": insurance.insutype,
                         "acct_used_flag": "1", "begntime": timestamp(site)},
                "drugdetail": _drug_details(items)}
        preview = Split.from_output(platform.query("2101", body, insured_region=person.insured_region), total,
                                    settled=False)
    except PlatformRefusedError as err:
        raise PaymentRefusedError(f"The platform refused the sale: {err.reason}. Nothing was paid.") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CentralError(f"The platform's pre-settlement (2101) cannot be used ({err}). {unpaid}") from None
    except ReversedError:
        raise
    except CentralError as err:
        raise _unreachable(err, unpaid) from None
    clerk.say(f"Total {yuan(total)} yuan: fund {yuan(preview.fund)}, medical personal account {yuan(preview.account)}, "
              f"cash {yuan(preview.cash)} (account balance after: {yuan(preview.balance)} yuan).")
    verify_holder_pin(at, clerk)
    try:
        record, output = platform.transact(SETTLEMENT, body, insured_region=person.insured_region, card_sn=at.card_sn,
                                           check=lambda out: Split.from_output(out, total, settled=True))
    except PlatformRefusedError as err:
        raise PaymentRefusedError(f"The platform refused the payment: {err.reason}. Nothing was paid.") from None
    except ReversedError:
        raise
    except CentralError as err:
        raise _unreachable(err, unpaid) from None
    split = Split.from_output(output, total, settled=True)
    cash = f"; cash to take {yuan(split.cash)} yuan" if split.cash else ""
    clerk.say(f"Paid {yuan(total)} yuan: fund {yuan(split.fund)}, account {yuan(split.account)}{cash}; "
              f"balance {yuan(split.balance)} yuan ({split.setl_id}, {record.msgid}).")
    return Purchase(sale, holder_line(identity), split, record, False)


@dataclass(frozen=True)
class Refund:
    """A pharmacy settlement cancelled (2103): what went back where; ``already_refunded`` when the
    journal had refunded it before."""

    sale_no: str
    settlement: QueuedRecord
    split: Split
    record: QueuedRecord
    already_refunded: bool

    def to_dict(self) -> dict[str, Any]:
        return {"sale_no": self.sale_no, "msgid": self.record.msgid, "settlement_msgid": self.settlement.msgid,
                "init_setl_id": _setl_id(self.settlement), **self.split.to_dict(),
                "already_refunded": self.already_refunded}


def refund(site: Site, sale_no: str, clerk: Clerk) -> Refund:
    """Cancel the settlement of a sale paid at this terminal (2103, journaled). The platform gives back
    exactly what it took: the account share to the account, the cash share to be given back by the
    clerk. Refused (16) when this terminal's journal has no payment of the sale."""
    sale = sale_number(sale_no)
    platform = site.online()
    entries = [e for e in site.outbox.with_data(SETTLEMENT, "chrg_bchno", sale) if e.state == ANSWERED]
    if not entries:
        raise PaymentRefusedError(f"Sale {sale} was not paid from a medical account at this terminal: there is "
                                  "nothing to refund here (refund it where it was paid). Nothing was done.")
    paid = entries[-1]
    total = Fen(yuan_field((paid.reply or {})["output"]["setlinfo"], "medfee_sumamt"))
    earlier = _refund_of(site, paid)
    if earlier is not None:
        if earlier.state == CALLING:
            raise PaymentRefusedError(f"Sale {sale} is being refunded right now ({earlier.msgid}). Nothing was done.")
        clerk.say(f"Sale {sale} was already refunded ({earlier.msgid}): nothing new done.")
        split = Split.from_output((earlier.reply or {}).get("output") or {}, total, settled=True)
        return Refund(sale, paid, split, earlier, True)
    data = {"setl_id": _setl_id(paid), "psn_no": record_data(paid).get("psn_no"), "mdtrt_id": ""}
    try:
        record, output = platform.transact(CANCELLATION, {"data": data}, insured_region=paid.insured_region,
                                           card_sn=paid.card_sn,
                                           check=lambda out: Split.from_output(out, total, settled=True))
    except PlatformRefusedError as err:
        raise PaymentRefusedError(f"The platform refused the refund: {err.reason}. Nothing was done.") from None
    except ReversedError:
        raise
    except CentralError as err:
        raise _unreachable(err, "The sale was not refunded: try again when the platform answers.") from None
    split = Split.from_output(output, total, settled=True)
    cash = f"; give back {yuan(split.cash)} yuan in cash" if split.cash else ""
    clerk.say(f"Refunded sale {sale}: {yuan(split.account)} yuan back to the medical personal account (balance "
              f"{yuan(split.balance)} yuan), fund {yuan(split.fund)}{cash} ({split.setl_id}, {record.msgid}).")
    return Refund(sale, paid, split, record, False)
