"""Day-end reconciliation: this terminal's journal against the platform (3201; docs/platform.md, "3201").

For one day, the journal's settlements that stand (2102 and 2207 answered, not cancelled by an answered
2103 or 2208 of this journal) are totalled per insurance type and clearing type, and each total is
sent to the platform in a 3201, which answers whether its own totals of the institution agree. Where
they differ, the platform's answer lists its settlements (a project extension: ``setl_list``) and
the records that differ are named: settled on one side only, or with other amounts.

Both sides count a settlement on the day the platform settled it (the ``setl_time`` it answered). The
totals are per institution at the platform: a reconciliation at one terminal of an institution with
several terminals agrees only when every terminal's journal is counted (``--queue`` several times).
"""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sscard.message.envelope import CLR_TYPES, CST, DATE, INSUTYPES, Fen, clr_type, iso_time, yuan
from sscard.message.infno import SETTLEMENTS, Infno
from sscard.terminal.online import Platform, yuan_field
from sscard.terminal.queue import ANSWERED, DamagedRecordError, Outbox
from sscard.terminal.upload import CentralProtocolError


@dataclass(frozen=True)
class Settled:
    """One settlement as the journal (or the platform) holds it, in fen."""

    setl_id: str
    msgid: str
    chrg_bchno: str
    insutype: str
    clr_type: str
    total: int
    fund: int
    account: int

    def to_dict(self) -> dict[str, Any]:
        return {"setl_id": self.setl_id, "msgid": self.msgid, "chrg_bchno": self.chrg_bchno,
                **amounts(self.total, self.fund, self.account)}


#: a settlement's amounts in the interface's names (docs/platform.md, 3201)
AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")


def amounts(total: int, fund: int, account: int) -> dict[str, Any]:
    """The three amounts as JSON results give money (docs/json.md): ``NAME_fen``, and ``NAME`` in yuan."""
    return {key: value for name, fen in zip(AMOUNTS, (total, fund, account))
            for key, value in ((f"{name}_fen", fen), (name, yuan(fen)))}


def _fen_beside(said: dict[str, Any]) -> dict[str, Any]:
    """The platform's settlement as it said it, with ``NAME_fen`` beside each amount that is yuan and
    its settlement time in ISO 8601 (docs/json.md); what is not as the interface says stays as said."""
    out = dict(said)
    for name in (*AMOUNTS, "psn_cash_pay"):
        try:
            out[f"{name}_fen"] = yuan_field(said, name)
        except (KeyError, ValueError):
            pass  # missing or not yuan: shown as the platform said it
    if isinstance(said.get("setl_time"), str):
        with contextlib.suppress(ValueError):
            out["setl_time"] = iso_time(said["setl_time"])
    return out


@dataclass
class Totals:
    """What 3201 compares for one insurance type and clearing type."""

    total: int = 0
    fund: int = 0
    account: int = 0
    count: int = 0
    settled: list[Settled] = field(default_factory=list)

    def add(self, s: Settled) -> None:
        self.total += s.total
        self.fund += s.fund
        self.account += s.account
        self.count += 1
        self.settled.append(s)


#: what reconciliation reads of a settlement's journal entry: (envelope or reply, JSON path)
SETTLED_FIELDS = {
    "setl_id": ("reply", "$.output.setlinfo.setl_id"),
    "setl_time": ("reply", "$.output.setlinfo.setl_time"),
    "medfee": ("reply", "$.output.setlinfo.medfee_sumamt"),
    "fund": ("reply", "$.output.setlinfo.fund_pay_sumamt"),
    "acct": ("reply", "$.output.setlinfo.acct_pay"),
    "answered_med_type": ("reply", "$.output.setlinfo.med_type"),
    "med_type": ("envelope", "$.input.data.med_type"),
    "insutype": ("envelope", "$.input.data.insutype"),
    "chrg_bchno": ("envelope", "$.input.data.chrg_bchno"),
}


def journal_settlements(outboxes: Iterable[Outbox], day: dt.date) -> list[Settled]:
    """The settlements of ``day`` that stand in these journals (module docstring), read with SQL."""
    found: list[Settled] = []
    for outbox in outboxes:
        cancelled = {row["setl_id"] for row in outbox.extract(
            ANSWERED, tuple(SETTLEMENTS.values()), {"setl_id": ("envelope", "$.input.data.setl_id")})}
        rows = outbox.extract(ANSWERED, tuple(SETTLEMENTS), SETTLED_FIELDS,
                              where=("reply", "$.output.setlinfo.setl_time", day.strftime(DATE)))
        for row in rows:
            settled = _settled(row)
            if settled is not None and settled.setl_id not in cancelled:
                found.append(settled)
    return found


def _settled(row: dict[str, Any]) -> Settled | None:
    try:
        return Settled(str(row["setl_id"]), row["msgid"], str(row["chrg_bchno"] or ""), str(row["insutype"]),
                       clr_type(str(row["answered_med_type"] or row["med_type"] or "")),
                       yuan_field(row, "medfee"), yuan_field(row, "fund"), yuan_field(row, "acct"))
    except (KeyError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Difference:
    """One settlement the two sides disagree on: ``side`` says where it is (``journal``, ``platform``
    or ``both`` with other amounts)."""

    side: str
    journal: Settled | None
    platform: dict[str, Any] | None

    def text(self) -> str:
        if self.side == "journal" and self.journal:
            return (f"settlement {self.journal.setl_id} (sale {self.journal.chrg_bchno}, {self.journal.msgid}) is in "
                    "this journal but not settled at the platform")
        if self.side == "platform" and self.platform:
            return (f"settlement {self.platform.get('setl_id')} (sale {self.platform.get('chrg_bchno')}, "
                    f"{self.platform.get('msgid')}) is settled at the platform but not in this journal")
        theirs = self.platform or {}
        ours = self.journal
        return (f"settlement {theirs.get('setl_id')} (sale {theirs.get('chrg_bchno')}) differs: journal "
                f"{yuan(ours.total) if ours else '-'} / fund {yuan(ours.fund) if ours else '-'} / account "
                f"{yuan(ours.account) if ours else '-'}, platform {theirs.get('medfee_sumamt')} / fund "
                f"{theirs.get('fund_pay_sumamt')} / account {theirs.get('acct_pay')}")

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "journal": self.journal.to_dict() if self.journal else None,
                "platform": _fen_beside(self.platform) if self.platform is not None else None, "text": self.text()}


@dataclass(frozen=True)
class Line:
    """One 3201: the journal's totals for an insurance type and clearing type, and the platform's word."""

    insutype: str
    clr_type: str
    totals: Totals
    agreed: bool
    description: str
    differences: list[Difference]

    def to_dict(self) -> dict[str, Any]:
        return {"insutype": self.insutype, "clr_type": self.clr_type,
                **amounts(self.totals.total, self.totals.fund, self.totals.account),
                "fixmedins_setl_cnt": self.totals.count,
                "agreed": self.agreed, "description": self.description,
                "differences": [d.to_dict() for d in self.differences]}


@dataclass(frozen=True)
class Reconciliation:
    """The day's reconciliation: balanced when every line agreed."""

    day: dt.date
    lines: list[Line]

    @property
    def balanced(self) -> bool:
        return all(line.agreed for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "balanced": self.balanced, "lines": [line.to_dict() for line in self.lines]}


def reconcile(platform: Platform, outboxes: list[Outbox], day: dt.date) -> Reconciliation:
    """Send one 3201 per insurance type and clearing type (every pair, so what only the platform holds
    shows too) and name the records that differ (module docstring). First each journal's records of
    the day are checked (:meth:`Outbox.verify`): one edited or forged, or marked sent without the
    platform's sealed acceptance, is :class:`DamagedRecordError` (exit 13) naming it, before any total."""
    start = dt.datetime.combine(day, dt.time(), CST)
    for outbox in outboxes:
        damaged = outbox.verify(since=start)  # the day's records (an older damaged one is not today's sum)
        if damaged:
            raise DamagedRecordError(outbox.path, damaged)
    settled = journal_settlements(outboxes, day)
    lines = []
    station = platform.outbox.require_station()
    by_kind: dict[tuple[str, str], Totals] = {}
    for s in settled:
        by_kind.setdefault((s.insutype, s.clr_type), Totals()).add(s)
    for insutype in INSUTYPES:
        for clr in CLR_TYPES:
            totals = by_kind.get((insutype, clr), Totals())
            body = {"data": {"insutype": insutype, "clr_type": clr, "setl_optins": station.region,
                             "stmt_begndate": day.strftime(DATE), "stmt_enddate": day.strftime(DATE),
                             "medfee_sumamt": Fen(totals.total), "fund_pay_sumamt": Fen(totals.fund),
                             "acct_pay": Fen(totals.account), "fixmedins_setl_cnt": totals.count}}
            output = platform.query(Infno.RECONCILIATION, body, insured_region=station.region)
            result = output.get("stmt_rslt")
            if result not in ("0", "1"):
                raise CentralProtocolError("The platform's reconciliation (3201) has no stmt_rslt of 0 or 1")
            agreed = result == "0"
            differences = [] if agreed else _differences(totals.settled, output.get("setl_list"))
            lines.append(Line(insutype, clr, totals, agreed, str(output.get("stmt_rslt_dscr") or ""), differences))
    return Reconciliation(day, lines)


def _differences(ours: list[Settled], theirs: object) -> list[Difference]:
    listed = [t for t in theirs if isinstance(t, dict)] if isinstance(theirs, list) else []
    by_id = {str(t.get("setl_id")): t for t in listed}
    found = []
    for s in ours:
        t = by_id.pop(s.setl_id, None)
        if t is None:
            found.append(Difference("journal", s, None))
            continue
        try:
            same = (yuan_field(t, "medfee_sumamt"), yuan_field(t, "fund_pay_sumamt"), yuan_field(t, "acct_pay")) == (
                s.total, s.fund, s.account)
        except (KeyError, ValueError):
            same = False
        if not same:
            found.append(Difference("both", s, t))
    found += [Difference("platform", None, t) for t in by_id.values()]
    return found
