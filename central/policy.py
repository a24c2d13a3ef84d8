"""The virtual platform's settlement policy: who pays what of a bill (convention, docs/platform.md, "Policy").

The public record gives the shape of a settlement's answer (``fund_pay_sumamt``, ``acct_pay``,
``psn_cash_pay``, ``balc``) but every region sets its own numbers; these are the project's, chosen to
look like a Chinese city's and to exercise every branch. All amounts are integer fen; a share of a bill
is rounded down to the fen (the holder never pays a fraction of a fen less than the rule says).

For a bill of ``total`` fen, in this order:

1. **Deductible** (起付线): the first ``deductible`` fen of the year's eligible bills are not the fund's;
   what is left of it this year is taken first.
2. **Fund** (统筹): ``ratio`` percent of the rest (``cross_ratio`` when the person is treated outside
   the insured region: cross-region care is settled by the insured region's rules, at its cross-region
   ratio), limited by what is left of the year's ``cap``.
3. **Personal account** (个人账户): what the fund does not pay, up to the balance, when the holder
   agrees (``acct_used_flag`` 1) and the insurance type has an account (employees, 310).
4. **Cash**: the rest.

Pharmacy purchases (med_type 41) are outside the fund: steps 3 and 4 only.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One insured region's rule for one insurance type (fen per year, percent)."""

    deductible: int
    ratio: int
    cross_ratio: int
    cap: int
    account: bool


#: (insured region or "*", insutype) -> rule; the region's own row first, then "*"
RULES: dict[tuple[str, str], Rule] = {
    ("*", "310"): Rule(deductible=100_000, ratio=70, cross_ratio=60, cap=1_000_000, account=True),
    ("*", "390"): Rule(deductible=30_000, ratio=50, cross_ratio=40, cap=300_000, account=False),
    ("*", "510"): Rule(deductible=0, ratio=100, cross_ratio=100, cap=500_000, account=False),
    # Shenzhen's employees: no outpatient deductible, a lower ratio
    ("440300", "310"): Rule(deductible=0, ratio=60, cross_ratio=50, cap=800_000, account=True),
    # Urumqi's residents: a lower deductible
    ("650100", "390"): Rule(deductible=20_000, ratio=55, cross_ratio=45, cap=300_000, account=False),
}
#: med_types the fund does not pay (retail pharmacy purchases)
OUTSIDE_FUND = frozenset({"41"})
#: med_types each insurance type settles (maternity care only under maternity insurance)
MED_TYPES: dict[str, frozenset[str]] = {
    "310": frozenset({"11", "14", "21", "41"}),
    "390": frozenset({"11", "14", "21", "41"}),
    "510": frozenset({"51", "52"}),
}


def rule(insured_region: str, insutype: str) -> Rule:
    """The rule for a person insured in ``insured_region`` under ``insutype`` (KeyError when none)."""
    return RULES.get((insured_region, insutype)) or RULES[("*", insutype)]


@dataclass(frozen=True)
class Split:
    """Who pays what of one bill, in fen; ``deductible`` is how much of the year's deductible it used."""

    total: int
    fund: int
    account: int
    cash: int
    deductible: int

    def __post_init__(self) -> None:
        if self.fund + self.account + self.cash != self.total or min(self.fund, self.account, self.cash) < 0:
            raise ValueError(f"a split must add up: {self}")


def split(total: int, *, rule: Rule, med_type: str, cross_region: bool, deductible_used: int, fund_used: int,
          balance: int, use_account: bool) -> Split:
    """The shares of a bill of ``total`` fen (module docstring), given what the year has used so far."""
    if total < 0:
        raise ValueError("a bill is not negative")
    deductible = fund = 0
    if med_type not in OUTSIDE_FUND:
        deductible = min(total, max(0, rule.deductible - deductible_used))
        ratio = rule.cross_ratio if cross_region else rule.ratio
        fund = min((total - deductible) * ratio // 100, max(0, rule.cap - fund_used))
    rest = total - fund
    account = min(rest, max(0, balance)) if use_account and rule.account else 0
    return Split(total, fund, account, rest - account, deductible)
