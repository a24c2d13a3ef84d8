"""The virtual platform's transactions driven by hypothesis (EXAMPLES each in CI): well-formed messages
of every money-moving and query transaction with their inputs mutated (a field removed, replaced by
a value of another type, an absurd amount, a huge text). The property: the ledger answers each one
(infcode 0, or negative with a reason) or raises one of its documented refusals, never anything
else; a refused message moves no money; no account ever goes below zero; every amount answered is
yuan with two decimals. The ledger is a real SQLite file, called as the server calls it."""
from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from queueing import Clock
from test_platform import (
    CLINIC,
    LI,
    LI_OLD,
    PHARMACY,
    TODAY,
    ZHANG,
    bill,
    cancel,
    card,
    fees,
    new_msgid,
    register,
    reversal,
    sale,
    transfer,
)

from sscard.central import Ledger, Unanswerable, Unsigned
from sscard.central.ledger import Forbidden, Rejected
from sscard.message.envelope import Envelope

#: generated messages per transaction in CI (issue 13: at least 2,000)
EXAMPLES = 2000
YUAN = re.compile(r"-?[0-9]{1,13}\.[0-9]{2}")
#: the answers' amount fields (docs/platform.md)
AMOUNT_KEYS = {"medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay", "balc", "acct_balc",
               "hifp_pay", "fulamt_ownpay_amt", "inscp_scp_amt", "act_pay_dedc"}
#: values that are not what a field holds
ODD = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                st.sampled_from(["", " ", "-0.01", "0.001", "1e400", "NaN", "99999999999999.99", "１２.００", "12,00",
                                 "x" * 3000, "\x00", "2026-02-30 25:61:00", "'; DROP TABLE accounts; --"]),
                st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@pytest.fixture
def ledger():
    """A ledger of its own for each transaction (on memory-backed /dev/shm when there is one: the fuzz
    is about logic, not fsync), with a sign-in for the clinic and the pharmacy."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base) as folder:
        book = Ledger(Path(folder) / "ledger.sqlite", clock=Clock(TODAY))
        signs = {}
        for station in (CLINIC, PHARMACY):
            sign_in = Envelope("9001", new_msgid(station), station, station.operator, station.region, TODAY,
                               {"signIn": {"opter_no": station.operator.opter, "mac": "", "ip": "127.0.0.1"}})
            [answer] = book.process(station.fixmedins_code, [json.loads(sign_in.to_wire())])
            signs[station.fixmedins_code] = answer["output"]["signinoutb"]["sign_no"]
        yield book, signs
        book.close()


def _mutated(body: Any, draw: st.DrawFn) -> Any:
    """``body`` with up to three of its leaves replaced, removed or added to."""
    body = json.loads(json.dumps(body))
    for _ in range(draw(st.integers(0, 3))):  # none at times: the valid message, its money moved
        node = body
        path = []
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
            path.append((node, key))
            node = node[key]
        if not path:
            continue
        parent, key = path[-1]
        action = draw(st.sampled_from(("replace", "remove", "add")))
        if action == "remove" and isinstance(parent, dict):
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(ODD)
        else:
            parent[key] = draw(ODD)
    return body


def send(book: Ledger, signs: dict[str, str], station: Any, infno: str, body: dict[str, Any],
         when: dt.datetime = TODAY) -> tuple[dict[str, Any], dict[str, Any]]:
    """One message of ``station`` through the ledger as the server passes it: (message, answer)."""
    message = json.loads(Envelope(infno, new_msgid(station), station, station.operator, station.region, when,
                                  body, sign_no=signs[station.fixmedins_code]).to_wire())
    [answer] = book.process(station.fixmedins_code, [message])
    return message, answer


_batches = itertools.count(1)


def _visit(book: Ledger, signs: dict[str, str], fee: bool) -> tuple[str, str]:
    """A registered visit of 张伟 (2201) and, with ``fee``, one fee line uploaded (2204): (mdtrt_id, chrg)."""
    _, answer = send(book, signs, CLINIC, "2201", register(ZHANG))
    mdtrt_id, chrg = answer["output"]["data"]["mdtrt_id"], f"C{next(_batches)}"
    if fee:
        send(book, signs, CLINIC, "2204", fees(ZHANG, mdtrt_id, chrg, (f"{chrg}-1", 1200)))
    return mdtrt_id, chrg


def _bought(book: Ledger, signs: dict[str, str]) -> tuple[str, str]:
    """A pharmacy sale settled (2102): (its msgid, setl_id)."""
    message, answer = send(book, signs, PHARMACY, "2102", sale(ZHANG, 350, f"F{next(_batches)}", drugs=[350]))
    return message["msgid"], answer["output"]["setlinfo"]["setl_id"]


def _settled_visit(book: Ledger, signs: dict[str, str]) -> dict[str, Any]:
    mdtrt_id, chrg = _visit(book, signs, fee=True)
    _, answer = send(book, signs, CLINIC, "2207", bill(ZHANG, mdtrt_id, chrg, 1200))
    return cancel(ZHANG, answer["output"]["setlinfo"]["setl_id"], mdtrt_id)


#: transaction -> (station, a valid input made ready in the ledger: the visit, fees or sale it needs)
VALID: dict[str, tuple[Any, Callable[[Ledger, dict[str, str]], dict[str, Any]]]] = {
    "1101": (CLINIC, lambda book, signs: {"data": card(ZHANG)}),
    "2201": (CLINIC, lambda book, signs: register(ZHANG)),
    "2204": (CLINIC, lambda book, signs: fees(ZHANG, *_visit(book, signs, fee=False), ("X-1", 1200))),
    "2206": (CLINIC, lambda book, signs: bill(ZHANG, *_visit(book, signs, fee=True), 1200)),
    "2207": (CLINIC, lambda book, signs: bill(ZHANG, *_visit(book, signs, fee=True), 1200)),
    "2208": (CLINIC, _settled_visit),
    "2101": (PHARMACY, lambda book, signs: sale(ZHANG, 2350, "F0", drugs=[2350])),
    "2102": (PHARMACY, lambda book, signs: sale(ZHANG, 2350, f"F{next(_batches)}", drugs=[1350, 1000])),
    "2103": (PHARMACY, lambda book, signs: cancel(ZHANG, _bought(book, signs)[1])),
    "2601": (PHARMACY, lambda book, signs: reversal(ZHANG, _bought(book, signs)[0], "2102")),
    "3201": (PHARMACY, lambda book, signs: {"data": {"insutype": "310", "clr_type": "41", "setl_optins": "330300",
                                                      "stmt_begndate": "2026-03-01", "stmt_enddate": "2026-03-01",
                                                      "medfee_sumamt": "23.50", "fund_pay_sumamt": "0.00",
                                                      "acct_pay": "23.50", "fixmedins_setl_cnt": 1}}),
    "SS02": (PHARMACY, lambda book, signs: transfer(LI, LI_OLD)),
}


def _money(book: Ledger) -> tuple[Any, ...]:
    conn = book.conn
    return (conn.execute("SELECT coalesce(sum(balc), 0), min(balc) FROM accounts").fetchone(),
            conn.execute("SELECT count(*), coalesce(sum(acct), 0) FROM settlements WHERE state = 'settled'").fetchone(),
            conn.execute("SELECT count(*) FROM old_cards WHERE moved_msgid IS NOT NULL").fetchone())


def _amounts(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in AMOUNT_KEYS and isinstance(v, str)] + [
            a for v in node.values() for a in _amounts(v)]
    if isinstance(node, list):
        return [a for v in node for a in _amounts(v)]
    return []


@pytest.mark.parametrize("infno", sorted(VALID))
def test_a_mutated_transaction_is_answered_or_refused_and_a_refusal_moves_no_money(ledger, infno):
    book, signs = ledger
    station, valid = VALID[infno]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        when = TODAY + dt.timedelta(seconds=data.draw(st.integers(0, 3600)))
        message = json.loads(Envelope(infno, new_msgid(station), station, station.operator, station.region, when,
                                      valid(book, signs), sign_no=signs[station.fixmedins_code]).to_wire())
        message["input"] = _mutated(message["input"], data.draw)  # as the wire carries it: amounts in yuan
        before = _money(book)
        try:
            [answer] = book.process(station.fixmedins_code, [message])
        except (Unanswerable, Unsigned, Forbidden, Rejected):
            assert _money(book) == before
            return
        assert isinstance(answer, dict) and isinstance(answer.get("infcode"), int), answer
        if answer["infcode"] != 0:
            assert answer.get("err_msg") and _money(book) == before, answer
        assert (_money(book)[0][1] or 0) >= 0  # no account below zero
        for amount in _amounts(answer.get("output")):
            assert YUAN.fullmatch(amount), (infno, amount)
        accepted[answer["infcode"] == 0] += 1
        reasons.add(str(answer.get("err_msg"))[:60])

    accepted, reasons = [0, 0], set()
    run()
    assert accepted[True] and accepted[False], (accepted, sorted(reasons)[:5])  # the mutations reach both the refusals and the money
