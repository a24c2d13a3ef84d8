"""The platform's transaction codes (``infno``), their names and how they relate (docs/platform.md,
"Transactions").

One enum, :class:`Infno`, names every transaction the terminal and the virtual platform know; it is a
``str`` enum, so a member is the code itself on the wire, in the journal and in JSON, and a code read
back from any of them compares equal to its member. Each member carries two words:

- :attr:`Infno.label`: the platform's name for it (``pharmacy settlement``), in errors and listings;
- :attr:`Infno.clerk_word`: what a clerk (and the kiosk's holder) reads for a journal entry of it
  (``purchase``), the label where there is no shorter word.

``SSxx`` are project codes for what the social insurance agency records (activation, the old card's
account), answered by the platform too (docs/platform.md, "SS01 / SS02").
"""
from __future__ import annotations

import enum


class Infno(enum.StrEnum):
    """A transaction code, with its :attr:`label` and :attr:`clerk_word`."""

    label: str
    clerk_word: str

    def __new__(cls, code: str, label: str, clerk_word: str = "") -> Infno:
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label
        member.clerk_word = clerk_word or label
        return member

    SIGN_IN = "9001", "operator sign-in"
    SIGN_OUT = "9002", "operator sign-out"
    PERSON = "1101", "person information"
    PHARMACY_PREVIEW = "2101", "pharmacy pre-settlement"
    PHARMACY_SETTLEMENT = "2102", "pharmacy settlement", "purchase"
    PHARMACY_CANCELLATION = "2103", "pharmacy settlement cancellation", "refund"
    REGISTRATION = "2201", "outpatient registration", "registration"
    REGISTRATION_CANCELLATION = "2202", "outpatient registration cancellation", "registration cancelled"
    VISIT_INFORMATION = "2203", "outpatient visit information"
    FEE_DETAILS = "2204", "outpatient fee details"
    FEE_DETAILS_CANCELLATION = "2205", "outpatient fee details cancellation"
    OUTPATIENT_PREVIEW = "2206", "outpatient pre-settlement"
    OUTPATIENT_SETTLEMENT = "2207", "outpatient settlement", "outpatient bill"
    OUTPATIENT_CANCELLATION = "2208", "outpatient settlement cancellation", "outpatient bill refunded"
    ADMISSION = "2401", "hospital admission", "admission"
    ADMISSION_CANCELLATION = "2404", "hospital admission cancellation", "admission cancelled"
    REVERSAL = "2601", "reversal"
    RECONCILIATION = "3201", "day-end totals reconciliation"
    ACTIVATION = "SS01", "card activation", "activation"
    TRANSFER = "SS02", "account transfer from the old medical insurance card", \
        "account moved from the old card (activation)"


#: every member by its code: ``code in CODES`` for a plain ``str``, ``CODES[code]`` for its member
CODES: dict[str, Infno] = {member.value: member for member in Infno}
#: (tables keyed by ``str``: a code read from the wire or the journal looks its member up)
#: settlements (money moves from the fund and the personal account) and what cancels each
SETTLEMENTS: dict[str, Infno] = {Infno.PHARMACY_SETTLEMENT: Infno.PHARMACY_CANCELLATION,
                                   Infno.OUTPATIENT_SETTLEMENT: Infno.OUTPATIENT_CANCELLATION}
#: the pre-settlement (a preview, nothing moves) of each settlement
PREVIEWS: dict[str, Infno] = {Infno.PHARMACY_PREVIEW: Infno.PHARMACY_SETTLEMENT,
                                Infno.OUTPATIENT_PREVIEW: Infno.OUTPATIENT_SETTLEMENT}
#: registrations (visits opened) and what cancels each
VISIT_CANCELLATIONS: dict[str, Infno] = {Infno.REGISTRATION: Infno.REGISTRATION_CANCELLATION,
                                           Infno.ADMISSION: Infno.ADMISSION_CANCELLATION}
#: what activates a card: at a counter, or by moving the old card's account (pharmacy dual-card insert)
ACTIVATIONS: frozenset[str] = frozenset({Infno.ACTIVATION, Infno.TRANSFER})
#: transactions a 2601 reversal can undo (docs/platform.md, "2601")
REVERSIBLE: frozenset[str] = frozenset({*SETTLEMENTS, *SETTLEMENTS.values(), *VISIT_CANCELLATIONS,
                                          *VISIT_CANCELLATIONS.values(), Infno.TRANSFER})
#: transactions that may wait in the terminal's queue and be uploaded later in a batch; every other
#: transaction is an online call, answered at once or not at all (docs/platform.md, "Online first")
QUEUEABLE: frozenset[str] = frozenset({Infno.REGISTRATION, Infno.ADMISSION, *ACTIVATIONS})


def label(code: str) -> str:
    """The platform's name for ``code`` (the code itself for one this module does not know)."""
    return CODES[code].label if code in CODES else code


def clerk_word(code: str) -> str:
    """What a clerk reads for a journal entry of ``code`` (the code itself for an unknown one)."""
    return CODES[code].clerk_word if code in CODES else code
