"""A bill settled online, and its refund: what the pharmacy and the desk share (docs/platform.md).

A bill is numbered by the till or the hospital's charging (``chrg_bchno``: the sale or charge batch
number) and made of :class:`Item` lines in integer fen. Settling it (:func:`settle`): the platform's
pre-settlement (2101 or 2206) shows the split before the PIN; the settlement (2102 or 2207) is a
journaled transaction; its answer is used only when it adds up (:class:`Split`). A bill number this
terminal's journal settled before is never settled again (:func:`standing`). Refunding it
(:func:`refund`): its cancellation (2103 or 2208), journaled, gives back exactly what it took.

Errors, in a clerk's words: the platform's refusal is :class:`PaymentRefusedError` (16); a platform
that cannot be asked is a :class:`terminal.upload.CentralError` (14) saying what was not done; a lost
answer reversed is :class:`terminal.online.ReversedError` (14); not reversed yet,
:class:`terminal.online.OutcomeUnknownError` (17).
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sscard.message.envelope import Fen, yuan
from sscard.message.infno import CODES, PREVIEWS, SETTLEMENTS, Infno
from sscard.terminal.flows.common import Clerk, PaymentRefusedError, Site
from sscard.terminal.online import Person, PlatformRefusedError, ReversedError, yuan_field
from sscard.terminal.queue import ANSWERED, CALLING, QueuedRecord, record_data
from sscard.terminal.upload import CentralError

BILL_NO = re.compile(r"[A-Za-z0-9-]{1,30}")
#: ASCII digits only: ``\d`` and ``str.isdigit`` also take other scripts' digits and '²'
MONEY = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,2}))?")
QUANTITY = re.compile(r"[0-9]{1,9}")
MAX_QUANTITY = 9999
#: the pre-settlement of each settlement
PREVIEW_OF: dict[str, Infno] = {settlement: CODES[preview] for preview, settlement in PREVIEWS.items()}


def parse_money(text: str) -> Fen:
    """``"12"``, ``"12.5"``, ``"12.50"`` yuan -> fen, by string arithmetic only (never float)."""
    match = MONEY.fullmatch(text.strip())
    if not match:
        raise PaymentRefusedError(f"{text!r} is not an amount in yuan (like 12.50)")
    whole, cents = match.group(1), (match.group(2) or "0").ljust(2, "0")
    return Fen(int(whole) * 100 + int(cents))


@dataclass(frozen=True)
class Item:
    """One line of a bill: name, quantity and unit price in fen."""

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


def bill_total(items: list[Item]) -> Fen:
    """The bill's total; :class:`PaymentRefusedError` for no items or nothing to pay."""
    if not items:
        raise PaymentRefusedError("A bill needs at least one item")
    total = Fen(sum(item.total for item in items))
    if total <= 0:
        raise PaymentRefusedError("The total is 0.00 yuan: there is nothing to pay from the account. "
                                  "Nothing was recorded.")
    return total


def bill_number(text: str, what: str = "sale") -> str:
    """The till's sale number (or the charge batch number) as the platform is told it: trimmed, letters
    in capitals (``t0001 `` and ``T0001`` are one bill); :class:`PaymentRefusedError` when malformed."""
    number = (text or "").strip()
    if not BILL_NO.fullmatch(number):
        raise PaymentRefusedError(f"The {what} number must be 1 to 30 letters, digits or '-'")
    return number.upper()


@dataclass(frozen=True)
class Split:
    """A settlement's figures as the platform answered them (pre-settlement, settlement, cancellation)."""

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

    @classmethod
    def of(cls, record: QueuedRecord, total: int) -> Split:
        """The split a journal entry's answer holds."""
        return cls.from_output((record.reply or {}).get("output") or {}, total, settled=True)

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"setl_id": self.setl_id}
        for name in ("total", "fund", "account", "cash", "balance"):
            value = getattr(self, name)
            fields[f"{name}_fen"] = int(value)
            fields[name] = yuan(value)
        return fields

    def preview_line(self) -> str:
        return (f"Total {yuan(self.total)} yuan: fund {yuan(self.fund)}, medical personal account "
                f"{yuan(self.account)}, cash {yuan(self.cash)} (account balance after: {yuan(self.balance)} yuan).")


def setl_id(record: QueuedRecord) -> str:
    """The ``setl_id`` a journal entry's answer holds ('' when none)."""
    output = (record.reply or {}).get("output") or {}
    return str((output.get("setlinfo") or {}).get("setl_id") or "")


def refund_of(site: Site, settlement: QueuedRecord) -> QueuedRecord | None:
    """The cancellation of ``settlement`` in this journal (answered, or in flight), if any."""
    number = setl_id(settlement)
    cancels = [r for r in site.outbox.with_data(SETTLEMENTS[settlement.infno], "setl_id", number)
               if r.state in (ANSWERED, CALLING)]
    return cancels[0] if cancels and number else None


def standing(site: Site, infno: str, bill: str, what: str = "Sale") -> QueuedRecord | None:
    """This terminal's settlement (``infno``) of ``bill`` that stands (answered, not refunded here), if
    any; :class:`PaymentRefusedError` while another process of this terminal is settling it."""
    entries = site.outbox.with_data(infno, "chrg_bchno", bill)
    live = [e for e in entries if e.state == CALLING]
    if live:
        raise PaymentRefusedError(f"{what} {bill} is being paid at this terminal right now ({live[0].msgid}): wait "
                                  "for that payment to end. Nothing was paid.")
    answered = [e for e in entries if e.state == ANSWERED and refund_of(site, e) is None]
    return answered[-1] if answered else None


def same_items(record: QueuedRecord, items: list[Item], key: str) -> bool:
    """The journal entry's bill (``input[key]``) has exactly these items."""
    lines = json.loads(record.envelope)["input"].get(key) or []
    return [(d.get("med_list_name"), d.get("cnt"), d.get("pric")) for d in lines] == [
        (i.name, i.quantity, yuan(i.price)) for i in items]


@contextlib.contextmanager
def platform_errors(action: str, not_done: str) -> Iterator[None]:
    """The platform's answers in a clerk's words: a refusal of ``action`` (e.g. "payment") is
    :class:`PaymentRefusedError`; a platform that cannot be asked, or an answer that cannot be used,
    a :class:`CentralError` saying ``not_done``; a reversal or an unknown outcome as they are."""
    try:
        yield
    except PlatformRefusedError as err:
        raise PaymentRefusedError(f"The platform refused the {action}: {err.reason}. Nothing was done.") from None
    except ReversedError:
        raise
    except CentralError as err:
        done = CentralError(f"{str(err).rstrip('.')}. {not_done}")
        done.maybe_processed = err.maybe_processed
        raise done from None
    except (ValueError, KeyError, TypeError) as err:
        raise CentralError(f"The platform's answer cannot be used ({err}). {not_done}") from None


def settle(site: Site, person: Person, infno: str, body: dict[str, Any], total: Fen, clerk: Clerk, *,
           card_sn: str, verify_pin: Callable[[], None], not_done: str) -> tuple[QueuedRecord, Split]:
    """The preview (2101/2206) shown, ``verify_pin``, then the settlement ``infno`` (2102/2207),
    journaled: (the journal entry, its split). Errors: module docstring."""
    platform = site.online()
    with platform_errors("bill", not_done):
        preview = Split.from_output(platform.query(PREVIEW_OF[infno], body, insured_region=person.insured_region),
                                    total, settled=False)
    clerk.say(preview.preview_line())
    verify_pin()
    with platform_errors("payment", not_done):
        record, output = platform.transact(infno, body, insured_region=person.insured_region, card_sn=card_sn,
                                           check=lambda out: Split.from_output(out, total, settled=True))
        split = Split.from_output(output, total, settled=True)
    cash = f"; cash to take {yuan(split.cash)} yuan" if split.cash else ""
    clerk.say(f"Paid {yuan(total)} yuan: fund {yuan(split.fund)}, account {yuan(split.account)}{cash}; "
              f"balance {yuan(split.balance)} yuan ({split.setl_id}, {record.msgid}).")
    return record, split


@dataclass(frozen=True)
class Refund:
    """A settlement cancelled (2103, 2208): what went back where; ``already_refunded`` when the journal
    had refunded it before."""

    bill: str
    settlement: QueuedRecord
    split: Split
    record: QueuedRecord
    already_refunded: bool

    def to_dict(self) -> dict[str, Any]:
        number = "bill_no" if self.settlement.infno == Infno.OUTPATIENT_SETTLEMENT else "sale_no"  # as the desk and the till name it
        return {number: self.bill, "msgid": self.record.msgid, "settlement_msgid": self.settlement.msgid,
                "init_setl_id": setl_id(self.settlement), **self.split.to_dict(),
                "already_refunded": self.already_refunded}


def refund(site: Site, infno: str, bill: str, clerk: Clerk, what: str = "Sale") -> Refund:
    """Cancel this terminal's settlement (``infno``: 2102 or 2207) of ``bill`` (journaled). The platform
    gives back exactly what it took: the account share to the account, the cash share to be given back
    by the clerk. Refused (16) when this terminal's journal has no settlement of the bill."""
    platform = site.online()
    entries = [e for e in site.outbox.with_data(infno, "chrg_bchno", bill) if e.state == ANSWERED]
    if not entries:
        raise PaymentRefusedError(f"{what} {bill} was not paid from a medical account at this terminal: there is "
                                  "nothing to refund here (refund it where it was paid). Nothing was done.")
    paid = entries[-1]
    total = Fen(yuan_field((paid.reply or {})["output"]["setlinfo"], "medfee_sumamt"))
    earlier = refund_of(site, paid)
    if earlier is not None:
        if earlier.state == CALLING:
            raise PaymentRefusedError(f"{what} {bill} is being refunded right now ({earlier.msgid}). Nothing was done.")
        clerk.say(f"{what} {bill} was already refunded ({earlier.msgid}): nothing new done.")
        return Refund(bill, paid, Split.of(earlier, total), earlier, True)
    data = {"setl_id": setl_id(paid), "psn_no": record_data(paid).get("psn_no"),
            "mdtrt_id": record_data(paid).get("mdtrt_id") or ""}
    taken = Split.of(paid, total)

    def gives_back_what_it_took(output: dict[str, Any]) -> None:
        back = Split.from_output(output, total, settled=True)
        if output["setlinfo"].get("init_setl_id") != data["setl_id"]:
            raise ValueError(f"the cancellation names settlement {output['setlinfo'].get('init_setl_id')!r}")
        if (back.fund, back.account, back.cash) != (taken.fund, taken.account, taken.cash):
            raise ValueError("the cancellation gives back other shares than the settlement took")

    with platform_errors("refund", f"The {what.lower()} was not refunded: try again when the platform answers."):
        record, output = platform.transact(SETTLEMENTS[infno], {"data": data}, insured_region=paid.insured_region,
                                           card_sn=paid.card_sn, check=gives_back_what_it_took)
        split = Split.from_output(output, total, settled=True)
    cash = f"; give back {yuan(split.cash)} yuan in cash" if split.cash else ""
    clerk.say(f"Refunded {what.lower()} {bill}: {yuan(split.account)} yuan back to the medical personal account "
              f"(balance {yuan(split.balance)} yuan), fund {yuan(split.fund)}{cash} ({split.setl_id}, {record.msgid}).")
    return Refund(bill, paid, split, record, False)

