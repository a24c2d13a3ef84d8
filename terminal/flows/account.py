"""The medical personal account as this terminal sees it (project convention, docs/flows.md,
"The medical personal account balance").

The social security card's chip holds no balance: the personal account lives at the insurance agency
(the platform's 1101 answers carry it). Offline, a pharmacy terminal knows a card's balance only from
its own queue, so the balance is *derived from the queued records* and cannot disagree with them:

    balance = sum of ``acct_balc`` moved in by ``SS02`` (dual-card transfers to this card)
            - sum of ``acct_pay`` of ``2102`` settlements paid from the account with this card

A card with no transfer at this terminal has no known balance: purchases from the account are refused
(the holder pays at a terminal that knows the account, or in cash). All amounts are integer fen
(:class:`terminal.envelope.Fen`), never float.
"""
from __future__ import annotations

from dataclasses import dataclass

from terminal.flows.common import amount, record_data
from terminal.envelope import Fen
from terminal.queue import Outbox, QueuedRecord

TRANSFER = "SS02"
SETTLEMENT = "2102"


@dataclass(frozen=True)
class AccountView:
    """The terminal's view of one card's account: known or not, and the balance in fen."""

    card_sn: str
    known: bool
    balance: Fen
    transfers: tuple[QueuedRecord, ...]
    payments: tuple[QueuedRecord, ...]


def account_view(outbox: Outbox, card_sn: str) -> AccountView:
    """The balance derived from this card's queued SS02 and 2102 records (module docstring)."""
    records = outbox.for_card(card_sn)
    transfers = tuple(r for r in records if r.infno == TRANSFER)
    payments = tuple(r for r in records if r.infno == SETTLEMENT)
    balance = sum((amount(record_data(r), "acct_balc") for r in transfers), Fen(0)) - sum(
        (amount(record_data(r), "acct_pay") for r in payments), Fen(0))
    return AccountView(card_sn, bool(transfers), Fen(balance), transfers, payments)
