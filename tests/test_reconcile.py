"""Day-end reconciliation (3201) of the journal against the virtual platform: balanced after a day,
unbalanced and naming the settlement after one is altered on either side."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner
from flowing import PINS, WINDOW2, clerk, open_site, platform, sim, site, write_config  # noqa: F401  (fixtures)
from jsonschema_rules import violations

from sscard.message.envelope import CST, Fen
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.flows.pharmacy import Item, dual_card_activate, purchase, read_old_card, refund
from sscard.terminal.queue import DamagedRecordError
from sscard.terminal.reconcile import reconcile

TODAY = dt.datetime.now(CST).date()


@pytest.fixture
def day(site):
    """A pharmacy day: 李娜's account moved, three sales paid (one over the balance: cash), one refunded."""
    old = sim("old-medical-lina")
    dual_card_activate(read_old_card(old), sim("not-activated"), site, clerk(PINS["not-activated"]), old)
    for sale, price in (("D1", 1250), ("D2", 860), ("D3", 200000)):
        purchase(sim("not-activated" if sale != "D2" else "adult"), site, sale, [Item("药", 1, Fen(price))],
                 clerk(PINS["not-activated" if sale != "D2" else "adult"]))
    refund(site, "D1", clerk())
    return site


def line(result, insutype="310", clr="41"):
    return next(x for x in result.lines if (x.insutype, x.clr_type) == (insutype, clr))


def test_a_day_reconciles_balanced(day):
    result = reconcile(day.platform, [day.outbox], TODAY)
    assert result.balanced and len(result.lines) == 9
    pharmacy = line(result)
    assert (pharmacy.totals.count, pharmacy.totals.total, pharmacy.totals.account) == (2, 860 + 200000, 860 + 127400)
    assert pharmacy.agreed and pharmacy.differences == []


def test_another_day_has_nothing_and_balances(day):
    result = reconcile(day.platform, [day.outbox], TODAY - dt.timedelta(days=1))
    assert result.balanced and all(x.totals.count == 0 for x in result.lines)


def test_a_settlement_altered_at_the_platform_is_named(day, platform):
    d3 = platform.ledger.conn.execute("SELECT setl_id FROM settlements WHERE chrg_bchno = 'D3'").fetchone()[0]
    platform.ledger.conn.execute("UPDATE settlements SET acct = acct - 100, cash = cash + 100 WHERE setl_id = ?", [d3])
    result = reconcile(day.platform, [day.outbox], TODAY)
    assert not result.balanced
    pharmacy = line(result)
    assert not pharmacy.agreed and "acct_pay" in pharmacy.description
    [difference] = pharmacy.differences
    assert difference.side == "both" and difference.platform["setl_id"] == d3 and "D3" in difference.text()


def test_a_settlement_altered_in_the_journal_is_named(day):
    record = next(r for r in day.outbox.records() if r.infno == "2102" and r.state == "answered"
                  and json.loads(r.envelope)["input"]["data"]["chrg_bchno"] == "D2")
    day.outbox.db.execute("UPDATE records SET reply = replace(reply, '\"medfee_sumamt\": \"8.60\"', "
                          "'\"medfee_sumamt\": \"18.60\"') WHERE msgid = ?", [record.msgid])
    with pytest.raises(DamagedRecordError) as refused:  # edited without the journal key: its seal fails
        reconcile(day.platform, [day.outbox], TODAY)
    assert refused.value.msgids == [record.msgid] and exit_code(refused.value) == 13
    # edited by someone holding the key (the terminal's own account): the platform's figures name it
    key, reply = int(record.msgid[12:]), day.outbox.db.execute("SELECT reply FROM records WHERE msgid = ?",
                                                               [record.msgid]).fetchone()[0]
    day.outbox.db.execute("UPDATE records SET answer_mac = ? WHERE msgid = ?", [day.outbox.seal.answer(key, reply, True),
                                                                                 record.msgid])
    result = reconcile(day.platform, [day.outbox], TODAY)
    [difference] = line(result).differences
    assert not result.balanced and difference.side == "both" and difference.journal.msgid == record.msgid
    assert "differs: journal 18.60" in difference.text()


def test_a_settlement_only_one_side_has_is_named(day, platform, tmp_path):
    other = open_site(tmp_path / "window2.sqlite", platform.url, WINDOW2)
    try:
        purchase(sim("adult"), other, "W2", [Item("药", 1, Fen(500))], clerk(PINS["adult"]))
    finally:
        other.platform.close()
        other.outbox.close()
    result = reconcile(day.platform, [day.outbox], TODAY)
    [difference] = line(result).differences
    assert difference.side == "platform" and difference.platform["chrg_bchno"] == "W2"
    # counted with the other window's journal too, the institution balances
    from sscard.terminal.queue import Outbox

    with Outbox(tmp_path / "window2.sqlite") as window2:
        assert reconcile(day.platform, [day.outbox, window2], TODAY).balanced
    platform.ledger.conn.execute("UPDATE settlements SET state = 'reversed' WHERE chrg_bchno = 'D2'")
    differences = line(reconcile(day.platform, [day.outbox], TODAY)).differences
    assert sorted(d.side for d in differences) == ["journal", "platform"]
    [missing] = [d for d in differences if d.side == "journal"]
    assert missing.journal.chrg_bchno == "D2" and "not settled at the platform" in missing.text()


def test_sscard_reconcile_prints_balanced_or_names_the_difference_with_exit_18(day, platform, tmp_path):
    config = write_config(day.outbox.path.parent, central=platform.url)
    runner = CliRunner()
    ok = runner.invoke(main, ["reconcile", "--json"], env={"SSCARD_CONFIG": str(config)})
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["balanced"] is True
    platform.ledger.conn.execute("UPDATE settlements SET fund = fund + 1, cash = cash - 1 WHERE chrg_bchno = 'D3'")
    bad = runner.invoke(main, ["reconcile", "--date", TODAY.isoformat()], env={"SSCARD_CONFIG": str(config)})
    assert bad.exit_code == 18 and "NOT BALANCED" in bad.stdout and "sale D3" in bad.stdout
    assert "Traceback" not in bad.output
    as_json = runner.invoke(main, ["reconcile", "--json"], env={"SSCARD_CONFIG": str(config)})
    body = json.loads(as_json.stdout)  # one document: the reconciliation, and the error beside it
    assert as_json.exit_code == 18 and body["balanced"] is False and body["error"]["code"] == "unbalanced"
    assert violations(body) == []  # docs/json.md: the platform's differing settlement too


def test_a_record_marked_sent_without_the_platforms_acceptance_stops_the_reconciliation(day):
    day.outbox.clock.now = dt.datetime.now(CST)  # a call of the day reconciled
    unanswered = day.outbox.begin_call("2102", {"data": {"psn_no": "3303000000000001", "chrg_bchno": "D9",
                                                         "medfee_sumamt": Fen(100)}},
                                       insured_region="330300")  # a call whose answer never came
    day.outbox.db.execute("UPDATE records SET state = 'answered' WHERE msgid = ?", [unanswered.msgid])
    with pytest.raises(DamagedRecordError) as stopped:
        reconcile(day.platform, [day.outbox], TODAY)
    assert stopped.value.msgids == [unanswered.msgid]
