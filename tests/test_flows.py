"""The counter flows end to end: virtual cards in memory, the real SQLite journal and queue, the real
key store, the virtual platform on a loopback port.

Every refusal is here, each checked to record (and pay) nothing; card removal is tried after every
APDU of each flow.
"""
from __future__ import annotations

import json

import pytest
from flowing import PINS, STATION, WINDOW2, clerk, open_site, platform, sim, site  # noqa: F401  (fixtures)

from sscard.apdu.errors import PINBlockedError, WrongPINError
from sscard.apdu.pin import PINFormatError, WeakPINError
from sscard.drivers.errors import CardRemovedError
from sscard.message.envelope import Fen
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.errors import CardAuthenticationError, IdentityMismatchError
from sscard.terminal.flows.bank import bank_activate
from sscard.terminal.flows.common import (
    IDNumberFormatError,
    PaymentRefusedError,
    RefusedError,
    ScriptedClerk,
    is_active,
)
from sscard.terminal.flows.desk import MALE_MATERNITY, register
from sscard.terminal.flows.kiosk import inquiry
from sscard.terminal.flows.pharmacy import Item, dual_card_activate, parse_money, purchase, read_old_card, refund
from sscard.terminal.oldcard import WrongCardOrderError
from sscard.terminal.online import OutcomeUnknownError, ReversedError
from sscard.terminal.upload import CentralError

#: psn_no of the fixtures' persons (fixtures/platform/persons.json)
LINA, ZHANGWEI = "3303000000000002", "3303000000000001"


def wire(record) -> dict:
    return json.loads(record.envelope)


def count(site) -> int:
    return sum(site.outbox.counts().values())


def removal_points(run, total: int):
    """Run ``run(remove_after)`` with the card pulled after each APDU: yield each outcome."""
    for n in range(total + 1):
        try:
            yield n, run(n)
        except CardRemovedError:
            yield n, None


# --- hospital desk -------------------------------------------------------------------------------------

def visits(platform) -> list[dict]:
    return platform.ledger.show()["visits"]


def test_desk_registration_is_asked_online_and_answered_with_the_visit(site, platform):
    result = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    assert result.activation is None and not result.cross_region
    assert result.record.state == "answered" and result.mdtrt_id == visits(platform)[0]["mdtrt_id"]
    envelope = wire(result.record)
    assert envelope["infno"] == "2201" and envelope["insuplc_admdvs"] == envelope["mdtrtarea_admvs"] == "330300"
    data = envelope["input"]["data"]
    assert data["dept_name"] == "内科" and data["med_type"] == "11" and data["insutype"] == "310"
    assert data["psn_no"] == ZHANGWEI and data["card_sn"] == "330300D15600000501234567FFFFFFFF"
    assert data["mdtrt_cert_type"] == "03" and data["cross_region"] is False
    assert [(v["psn_no"], v["dept_name"], v["state"]) for v in visits(platform)] == [(ZHANGWEI, "内科", "open")]


@pytest.mark.parametrize(("card", "kind", "infno", "med_type", "insutype"), [
    ("adult", "hospitalisation", "2401", "21", "310"), ("not-activated", "maternity", "2201", "51", "510"),
    ("minority", "outpatient", "2201", "11", "390")])
def test_desk_registration_kinds(site, platform, card, kind, infno, med_type, insutype):
    result = register(sim(card), site, kind, "妇产科", clerk(PINS[card]))
    body = wire(result.record)["input"]
    data = body["mdtrtinfo"] if infno == "2401" else body["data"]
    assert (result.record.infno, data["med_type"], data["insutype"]) == (infno, med_type, insutype)
    assert [(v["infno"], v["med_type"], v["insutype"]) for v in visits(platform)] == [(infno, med_type, insutype)]


def test_a_registration_the_holder_is_not_insured_for_is_refused(site, platform):
    confirming = ScriptedClerk([PINS["adult"]], agrees=True)  # 张伟 is male: the clerk confirms, the platform refuses
    with pytest.raises(RefusedError, match="no insurance in force for a maternity registration") as refused:
        register(sim("adult"), site, "maternity", "妇产科", confirming)
    assert exit_code(refused.value) == 15 and count(site) == 0 and visits(platform) == []


def test_maternity_for_a_male_holder_is_asked_refused_unless_confirmed_and_the_confirmation_recorded(tmp_path, site):
    asked = clerk(PINS["adult"])
    with pytest.raises(RefusedError, match="male holder not confirmed. Nothing was recorded") as refused:
        register(sim("adult"), site, "maternity", "妇产科", asked)
    assert exit_code(refused.value) == 15 and count(site) == 0
    assert asked.said[-1].startswith("The holder is male") and asked.said[-1].endswith(" no")
    assert asked.pins == [PINS["adult"]]  # asked before the PIN: the holder typed nothing
    # confirmed, with the platform unreachable: queued, the confirmation in the record the platform will get
    offline = open_site(tmp_path / "offline.sqlite", "http://127.0.0.1:9")
    try:
        result = register(sim("adult"), offline, "maternity", "妇产科", ScriptedClerk([PINS["adult"]], agrees=True))
        data = wire(result.record)["input"]["data"]
        assert data["med_type"] == "51" and data["exp_content"] == {"clerk_confirmed": [MALE_MATERNITY]}
        assert result.to_dict()["confirmed"] == [MALE_MATERNITY]
    finally:
        offline.platform.close()
        offline.outbox.close()
    # a female holder is not asked; nothing else is either
    female = clerk(PINS["not-activated"])
    assert register(sim("not-activated"), site, "maternity", "妇产科", female).to_dict()["confirmed"] == []
    assert not any("male" in line for line in female.said)
    outpatient = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    assert "exp_content" not in wire(outpatient.record)["input"]["data"]


def test_first_registration_activates_a_not_activated_card_once(site):
    first = register(sim("not-activated"), site, "outpatient", "内科", clerk(PINS["not-activated"]))
    assert first.activation is not None and first.activation.infno == "SS01"
    assert wire(first.activation)["input"]["data"]["actv_way"] == "first-registration"
    assert first.activation.msgid < first.record.msgid  # activation first: a retry heals a half-done pair
    # the chip still answers "not activated", but this terminal now treats the card as active
    second = register(sim("not-activated"), site, "outpatient", "外科", clerk(PINS["not-activated"]))
    assert second.activation is None and count(site) == 3


def test_cross_region_registration_carries_both_regions_and_the_flag(site):
    result = register(sim("other-region"), site, "outpatient", "急诊科", clerk(PINS["other-region"]))
    envelope = wire(result.record)
    assert result.cross_region and result.record.cross_region
    assert (envelope["insuplc_admdvs"], envelope["mdtrtarea_admvs"]) == ("440300", "330300")
    assert envelope["input"]["data"]["cross_region"] is True


def test_with_the_platform_unreachable_the_registration_waits_in_the_queue(site, platform):
    from sscard.terminal.upload import Uploader

    url = site.platform.central.url
    site.platform.central.url = "http://127.0.0.1:9"
    said = clerk(PINS["adult"])
    result = register(sim("adult"), site, "outpatient", "内科", said)
    assert result.mdtrt_id is None and result.record.state == "pending" and visits(platform) == []
    assert "psn_no" not in wire(result.record)["input"]["data"]  # no 1101: the platform finds the card's holder
    assert any("wait in the queue" in line for line in said.said)
    with Uploader(site.outbox, url) as uploader:
        assert uploader.drain().sent == 1
    assert [v["psn_no"] for v in visits(platform)] == [ZHANGWEI]


def test_desk_without_pin_when_the_site_does_not_require_it(site):
    said = clerk()
    register(sim("adult"), site, "outpatient", "内科", said, require_pin=False)
    assert count(site) == 1 and "PIN correct." not in said.said


@pytest.mark.parametrize(("card", "pin", "error"), [
    ("counterfeit", PINS["counterfeit"], CardAuthenticationError),
    ("adult", "111222", WrongPINError),
    ("blocked-pin", PINS["blocked-pin"], PINBlockedError),
])
def test_desk_refusals_record_nothing(site, platform, card, pin, error):
    with pytest.raises(error):
        register(sim(card), site, "outpatient", "内科", clerk(pin))
    assert count(site) == 0 and visits(platform) == []


def test_desk_refuses_an_unknown_kind_and_an_empty_department(site):
    with pytest.raises(RefusedError):
        register(sim("adult"), site, "dental", "内科", clerk(PINS["adult"]))
    with pytest.raises(RefusedError):
        register(sim("adult"), site, "outpatient", "  ", clerk(PINS["adult"]))
    assert count(site) == 0


def test_desk_card_removed_at_any_step_records_nothing(site, platform):
    for n, result in removal_points(
            lambda n: register(sim("not-activated", remove_after=n), site, "outpatient", "内科",
                               clerk(PINS["not-activated"])), 60):
        if result is not None:  # pulled after the last APDU: both records, activation first
            assert count(site) == 2 and n > 10 and len(visits(platform)) == 1
            break
        assert count(site) == 0 and visits(platform) == [], n
    else:
        pytest.fail("never completed")


FEES = [Item("诊查费", 1, Fen(2000)), Item("血常规", 1, Fen(3500)), Item("阿莫西林胶囊", 2, Fen(1250))]


def test_a_visit_is_cancelled_once_and_not_while_a_bill_stands(site, platform):
    from sscard.terminal.flows.desk import cancel, refund as refund_visit_bill, settle_visit

    visit = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    settle_visit(sim("adult"), site, visit.mdtrt_id, "B1", FEES, clerk(PINS["adult"]))
    with pytest.raises(RefusedError, match="has a settlement"):
        cancel(site, visit.mdtrt_id, clerk())
    refund_visit_bill(site, "B1", clerk())
    done = cancel(site, visit.mdtrt_id, clerk())
    assert not done.already and done.record.infno == "2202" and visits(platform)[0]["state"] == "cancelled"
    assert cancel(site, visit.mdtrt_id, clerk()).already
    with pytest.raises(RefusedError, match="No visit MD0"):
        cancel(site, "MD0", clerk())


def test_an_outpatient_bill_is_settled_with_the_policy_and_refunded_exactly(site, platform):
    from sscard.terminal.flows.desk import refund as refund_visit_bill, settle_visit

    visit = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    said = clerk(PINS["adult"])
    paid = settle_visit(sim("adult"), site, visit.mdtrt_id, " b1", FEES, said)
    # 80.00 yuan, all under the 1000.00 deductible (policy, 330300 employees): the account pays it
    assert (paid.split.total, paid.split.fund, paid.split.account, paid.split.cash) == (8000, 0, 8000, 0)
    assert paid.bill == "B1" and paid.record.infno == "2207" and paid.record.state == "answered"
    assert platform.ledger.balance(ZHANGWEI) == 235000 - 8000
    assert any("medical personal account 80.00" in line for line in said.said)
    again = settle_visit(sim("adult"), site, visit.mdtrt_id, "B1", FEES, clerk())
    assert again.already_paid and again.record.msgid == paid.record.msgid
    big = settle_visit(sim("adult"), site, visit.mdtrt_id, "B2", [Item("手术费", 1, Fen(300000))],
                       clerk(PINS["adult"]))
    # 920.00 left of the deductible, 70 % of the remaining 2080.00 is the fund's: 1456.00
    assert (big.split.fund, big.split.account) == (145600, 300000 - 145600)
    back = refund_visit_bill(site, "B2", clerk())
    assert back.split.account == 300000 - 145600 and platform.ledger.balance(ZHANGWEI) == 235000 - 8000
    again_big = settle_visit(sim("adult"), site, visit.mdtrt_id, "B3", [Item("手术费", 1, Fen(300000))],
                             clerk(PINS["adult"]))
    assert again_big.split.fund == 145600  # the refund gave the year's deductible and fund use back


def test_a_bill_is_settled_only_with_the_visits_card(site, platform):
    from sscard.terminal.flows.desk import settle_visit

    visit = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    with pytest.raises(RefusedError, match="not the one visit"):
        settle_visit(sim("other-region"), site, visit.mdtrt_id, "B1", FEES, clerk(PINS["other-region"]))
    admission = register(sim("other-region"), site, "hospitalisation", "外科", clerk(PINS["other-region"]))
    with pytest.raises(RefusedError, match="is an admission"):
        settle_visit(sim("other-region"), site, admission.mdtrt_id, "B2", FEES, clerk(PINS["other-region"]))
    assert platform.ledger.show()["settlements"] == []


# --- pharmacy: dual-card insert ---------------------------------------------------------------------

def test_dual_card_moves_the_account_online_activates_and_marks_the_old_card(site, platform):
    old_reader = sim("old-medical-lina")
    old = read_old_card(old_reader)
    assert old.balance == Fen(128650) and not old.replaced
    result = dual_card_activate(old, sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)
    assert result.activated_now and result.old_card_marked and old_reader.card.replaced
    assert result.online and result.balance == Fen(128650) and platform.ledger.balance(LINA) == 128650
    assert result.record.infno == "SS02" and result.record.state == "answered"
    data = wire(result.record)["input"]["data"]
    assert data["acct_balc"] == "1286.50" and data["old_card_no"] == "YB330300000012" and data["psn_no"] == LINA
    assert data["card_sn"] == "330300D15600000507654321FFFFFFFF" and data["actv_way"] == "dual-card"
    assert read_old_card(old_reader).replaced  # the mark is on the card itself


def test_dual_card_old_card_that_does_not_allow_marking(site, platform):
    old_reader = sim("old-medical-zhangwei")
    result = dual_card_activate(read_old_card(old_reader), sim("adult"), site, clerk(PINS["adult"]), old_reader)
    assert result.record.state == "answered" and not result.old_card_marked and not result.activated_now
    assert "does not allow" in result.old_card_note and not read_old_card(old_reader).replaced
    assert platform.ledger.balance(ZHANGWEI) == 235000 + 53620
    with pytest.raises(RefusedError, match="already moved"):  # this terminal's journal guards a second move
        dual_card_activate(read_old_card(old_reader), sim("adult"), site, clerk(PINS["adult"]), old_reader)
    assert count(site) == 1


def test_the_same_old_card_moved_at_two_terminals_moves_once(site, platform, tmp_path):
    old_reader = sim("old-medical-zhangwei")
    dual_card_activate(read_old_card(old_reader), sim("adult"), site, clerk(PINS["adult"]), old_reader)
    other = open_site(tmp_path / "window2.sqlite", platform.url, WINDOW2)
    try:
        with pytest.raises(RefusedError, match="already moved") as refused:
            dual_card_activate(read_old_card(old_reader), sim("adult"), other, clerk(PINS["adult"]), old_reader)
        assert "platform refused" in str(refused.value)
        assert [r.state for r in other.outbox.records() if r.infno == "SS02"] == ["refused"]
    finally:
        other.platform.close()
        other.outbox.close()
    assert platform.ledger.balance(ZHANGWEI) == 235000 + 53620  # moved once


def test_dual_card_with_the_platform_unreachable_waits_in_the_queue_and_moves_at_upload(site, platform):
    from sscard.terminal.upload import Uploader

    url = site.platform.central.url
    site.platform.central.url = "http://127.0.0.1:9"  # nothing listens there
    said = clerk(PINS["not-activated"])
    result = dual_card_activate(read_old_card(sim("old-medical-lina")), sim("not-activated"), site, said)
    assert not result.online and result.record.state == "pending" and platform.ledger.balance(LINA) == 0
    assert any("wait in the queue" in line for line in said.said)
    with Uploader(site.outbox, url) as uploader:
        assert uploader.drain().sent == 1
    assert platform.ledger.balance(LINA) == 128650


def test_dual_card_one_reader_in_turn(site):
    old = read_old_card(sim("old-medical-lina"))  # then the old card is taken out
    result = dual_card_activate(old, sim("not-activated"), site, clerk(PINS["not-activated"]))
    assert count(site) == 1 and not result.old_card_marked and "out of the reader" in result.old_card_note


def test_dual_card_mismatch_queues_nothing(site):
    old_reader = sim("old-medical-zhangwei")
    with pytest.raises(IdentityMismatchError, match="different people"):
        dual_card_activate(read_old_card(old_reader), sim("not-activated"), site, clerk(PINS["not-activated"]),
                           old_reader)
    assert count(site) == 0 and not old_reader.card.replaced


def test_dual_card_swapped_order_is_named(site):
    with pytest.raises(WrongCardOrderError, match="goes in first"):
        read_old_card(sim("not-activated"))
    old = read_old_card(sim("old-medical-lina"))
    with pytest.raises(WrongCardOrderError, match="new social security card goes there"):
        dual_card_activate(old, sim("old-medical-zhangwei"), site, clerk(PINS["not-activated"]))
    assert count(site) == 0
    assert exit_code(WrongCardOrderError) == 15


def test_dual_card_refuses_an_old_card_already_replaced(site):
    with pytest.raises(RefusedError, match="already marked replaced"):
        dual_card_activate(read_old_card(sim("old-medical-replaced")), sim("blocked-pin"), site, clerk("135790"))
    assert count(site) == 0


@pytest.mark.parametrize(("card", "pin", "error"), [
    ("counterfeit", PINS["adult"], CardAuthenticationError), ("adult", "111222", WrongPINError)])
def test_dual_card_new_card_refusals(site, card, pin, error):
    old_reader = sim("old-medical-zhangwei")
    with pytest.raises(error):
        dual_card_activate(read_old_card(old_reader), sim(card), site, clerk(pin), old_reader)
    assert count(site) == 0


def test_dual_card_either_card_removed_halfway_moves_nothing(site, platform):
    def run_new(n):
        old_reader = sim("old-medical-lina")
        return dual_card_activate(read_old_card(old_reader), sim("not-activated", remove_after=n), site,
                                  clerk(PINS["not-activated"]), old_reader)

    def run_old(n):
        old_reader = sim("old-medical-lina")
        old = read_old_card(old_reader)
        old_reader.remove_after = old_reader.apdu_count + n
        return dual_card_activate(old, sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)

    for run in (run_new, run_old):
        for n, result in removal_points(run, 40):
            if result is None:
                assert not [r for r in site.outbox.records() if r.infno == "SS02"], n
                assert platform.ledger.balance(LINA) == 0, n
            else:  # pulled only after the move: it stands, the mark may be missing
                assert platform.ledger.balance(LINA) == 128650
                return
        else:
            pytest.fail("the flow never completed")


def test_old_card_removed_after_reading_with_two_readers(site):
    old_reader = sim("old-medical-lina")
    old = read_old_card(old_reader)
    old_reader.remove()
    with pytest.raises(CardRemovedError):
        dual_card_activate(old, sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)
    assert count(site) == 0


def test_not_an_old_card_in_the_old_reader(site):
    from sscard.drivers.memory import MemoryConnection
    from sscard.drivers.simulator import load_card
    from sscard.terminal.oldcard import NotOldMedicalCardError

    with pytest.raises(NotOldMedicalCardError, match="not an old medical insurance card"):
        read_old_card(MemoryConnection(load_card("psam")))


# --- pharmacy: purchase, settled online -----------------------------------------------------------

ITEMS = [Item("阿莫西林胶囊", 2, Fen(1250)), Item("布洛芬缓释胶囊", 1, Fen(1580))]


@pytest.fixture
def lina_account(site):
    old_reader = sim("old-medical-lina")
    dual_card_activate(read_old_card(old_reader), sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)
    return site


def settlements(platform) -> list[dict]:
    return platform.ledger.show()["settlements"]


def test_purchase_settles_online_and_the_journal_holds_the_intent_and_the_answer(lina_account, platform):
    site = lina_account
    said = clerk(PINS["not-activated"])
    paid = purchase(sim("not-activated"), site, "S0001", ITEMS, said)
    split = paid.split
    assert (split.total, split.fund, split.account, split.cash, split.balance) == (4080, 0, 4080, 0, 128650 - 4080)
    assert not paid.already_paid and platform.ledger.balance(LINA) == 128650 - 4080
    assert any("Total 40.80 yuan: fund 0.00, medical personal account 40.80, cash 0.00" in line for line in said.said)
    record = site.outbox.get(paid.record.msgid)
    assert record.infno == "2102" and record.state == "answered" and record.reply["output"]["setlinfo"]["setl_id"]
    sent = wire(record)
    data = sent["input"]["data"]
    assert (data["psn_no"], data["medfee_sumamt"], data["chrg_bchno"], data["med_type"], data["insutype"]) == (
        LINA, "40.80", "S0001", "41", "310")
    assert sent["input"]["drugdetail"][0] == {"feedetl_sn": "0001", "med_list_name": "阿莫西林胶囊", "cnt": 2,
                                              "pric": "12.50", "det_item_fee_sumamt": "25.00"}
    [settled] = settlements(platform)
    assert (settled["setl_id"], settled["msgid"], settled["acct_pay_fen"], settled["state"]) == (
        split.setl_id, record.msgid, 4080, "settled")


def test_a_card_whose_account_was_never_moved_here_pays_from_the_platforms_balance(site, platform):
    paid = purchase(sim("adult"), site, "S0002", ITEMS, clerk(PINS["adult"]))
    assert (paid.split.account, paid.split.balance) == (4080, 235000 - 4080)
    assert platform.ledger.balance(ZHANGWEI) == 235000 - 4080


def test_over_the_balance_the_account_pays_what_it_holds_and_the_rest_is_cash(lina_account, platform):
    site = lina_account
    paid = purchase(sim("not-activated"), site, "S2", [Item("胰岛素", 2, Fen(64326))], clerk(PINS["not-activated"]))
    assert (paid.split.account, paid.split.cash, paid.split.balance) == (128650, 2, 0)
    again = purchase(sim("not-activated"), site, "S3", [Item("一分", 1, Fen(1))], clerk(PINS["not-activated"]))
    assert (again.split.account, again.split.cash, again.split.balance) == (0, 1, 0)
    assert platform.ledger.balance(LINA) == 0


def test_a_resident_without_a_personal_account_pays_cash(site, platform):
    paid = purchase(sim("minority"), site, "S4", ITEMS, clerk(PINS["minority"]))
    assert (paid.split.fund, paid.split.account, paid.split.cash) == (0, 0, 4080)


def test_purchase_card_pulled_right_after_payment_is_paid_once(lina_account, platform):
    site = lina_account
    probe = sim("not-activated")
    purchase(probe, site, "S0100", ITEMS, clerk(PINS["not-activated"]))
    last_apdu = probe.apdu_count
    # pulled right after the last APDU (the PIN): the payment stands...
    card = sim("not-activated", remove_after=last_apdu)
    paid = purchase(card, site, "S0101", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(CardRemovedError):
        SocialSecurityCard(card).select()
    # ...and the clerk who runs it again with the card back in gets the same payment, not a second one
    again = purchase(sim("not-activated"), site, "s0101 ", ITEMS, clerk())
    assert again.already_paid and again.record.msgid == paid.record.msgid and again.split == paid.split
    assert len([s for s in settlements(platform) if s["chrg_bchno"] == "S0101"]) == 1
    assert platform.ledger.balance(LINA) == 128650 - 2 * 4080


def test_purchase_card_removed_before_payment_pays_nothing(lina_account, platform):
    site = lina_account
    for n, result in removal_points(
            lambda n: purchase(sim("not-activated", remove_after=n), site, f"R{n}", ITEMS, clerk(PINS["not-activated"])),
            40):
        if result is not None:
            assert len(settlements(platform)) == 1 and n > 10
            break
        assert settlements(platform) == [] and platform.ledger.balance(LINA) == 128650
        assert not [r for r in site.outbox.records() if r.infno == "2102"]
    else:
        pytest.fail("never completed")


def test_purchase_refusals_pay_nothing(lina_account, platform):
    site = lina_account
    with pytest.raises(RefusedError, match="not activated"):
        purchase(sim("not-activated-zhou"), site, "S4", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(WrongPINError):
        purchase(sim("not-activated"), site, "S5", ITEMS, clerk("111222"))
    with pytest.raises(CardAuthenticationError):
        purchase(sim("counterfeit"), site, "S6", ITEMS, clerk(PINS["adult"]))
    with pytest.raises(PaymentRefusedError, match="sale number"):
        purchase(sim("not-activated"), site, "bad sale!", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(PaymentRefusedError, match="at least one item"):
        purchase(sim("not-activated"), site, "S7", [], clerk(PINS["not-activated"]))
    zero = clerk(PINS["not-activated"])
    with pytest.raises(PaymentRefusedError, match="total is 0.00 yuan"):
        purchase(sim("not-activated"), site, "S12", [Item.parse("空:1:0"), Item.parse("赠品:2:0.00")], zero)
    assert zero.pins == [PINS["not-activated"]]  # refused before the PIN
    assert settlements(platform) == [] and platform.ledger.balance(LINA) == 128650


def test_insurance_suspended_at_the_platform_is_refused_before_the_pin(site, platform):
    platform.ledger.conn.execute("UPDATE insurances SET psn_insu_stas = '2', paus_insu_date = '2026-06-30' "
                                 "WHERE psn_no = ?", [ZHANGWEI])
    said = clerk(PINS["adult"])
    with pytest.raises(PaymentRefusedError, match="no medical insurance in force") as refused:
        purchase(sim("adult"), site, "S13", ITEMS, said)
    assert exit_code(refused.value) == 16 and said.pins == [PINS["adult"]]
    assert settlements(platform) == []


def test_purchase_sale_number_reused_for_other_items_is_refused(lina_account, platform):
    site = lina_account
    purchase(sim("not-activated"), site, "S10", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(PaymentRefusedError, match="already paid with other items"):
        purchase(sim("not-activated"), site, "S10", ITEMS[:1], clerk(PINS["not-activated"]))
    assert len([r for r in site.outbox.records() if r.infno == "2102"]) == 1 and len(settlements(platform)) == 1


def test_purchase_sale_number_paid_with_another_card_is_refused(lina_account, platform):
    site = lina_account
    purchase(sim("not-activated"), site, "T0001", ITEMS, clerk(PINS["not-activated"]))
    said = clerk(PINS["adult"])
    with pytest.raises(PaymentRefusedError, match="T0001 was already paid with another card") as refused:
        purchase(sim("adult"), site, "t0001", ITEMS, said)
    assert "李娜" not in str(refused.value) and "330302199203081020" not in str(refused.value)
    assert said.pins == [PINS["adult"]]  # refused before the PIN was asked
    assert len(settlements(platform)) == 1
    assert exit_code(PaymentRefusedError) == 16


def test_a_sale_paid_at_another_window_is_refused_by_the_platform(lina_account, platform, tmp_path):
    purchase(sim("not-activated"), lina_account, "T0002", ITEMS, clerk(PINS["not-activated"]))
    other = open_site(tmp_path / "window2.sqlite", platform.url, WINDOW2)
    try:
        with pytest.raises(PaymentRefusedError, match="already settled"):
            purchase(sim("adult"), other, "T0002", ITEMS, clerk(PINS["adult"]))
    finally:
        other.platform.close()
        other.outbox.close()
    assert len(settlements(platform)) == 1 and platform.ledger.balance(ZHANGWEI) == 235000


def test_a_refund_gives_back_exactly_what_the_sale_took_once(lina_account, platform):
    site = lina_account
    paid = purchase(sim("not-activated"), site, "S20", ITEMS, clerk(PINS["not-activated"]))
    said = clerk()
    back = refund(site, " s20", said)
    assert (back.split.account, back.split.balance, back.already_refunded) == (4080, 128650, False)
    assert platform.ledger.balance(LINA) == 128650
    assert [s["state"] for s in settlements(platform)] == ["cancelled"]
    assert back.record.state == "answered" and wire(back.record)["input"]["data"]["setl_id"] == paid.split.setl_id
    again = refund(site, "S20", clerk())
    assert again.already_refunded and again.record.msgid == back.record.msgid
    assert platform.ledger.balance(LINA) == 128650
    with pytest.raises(PaymentRefusedError, match="nothing to refund here"):
        refund(site, "S21", clerk())


def test_a_lost_answer_is_reversed_at_once_and_the_sale_can_be_paid_again(lina_account, platform):
    site = lina_account
    platform.set_fault("drop", count=1, infno="2102")
    with pytest.raises(ReversedError, match="reversed, nothing was done") as lost:
        purchase(sim("not-activated"), site, "S30", ITEMS, clerk(PINS["not-activated"]))
    assert exit_code(lost.value) == 14
    [entry] = [r for r in site.outbox.records() if r.infno == "2102"]
    [reversal] = [r for r in site.outbox.records() if r.infno == "2601"]
    assert entry.state == "reversed" and reversal.state == "answered"
    assert wire(reversal)["input"]["data"] == {"psn_no": LINA, "omsgid": entry.msgid, "oinfno": "2102"}
    assert [s["state"] for s in settlements(platform)] == ["reversed"]  # it had been made, then undone
    assert platform.ledger.balance(LINA) == 128650
    paid = purchase(sim("not-activated"), site, "S30", ITEMS, clerk(PINS["not-activated"]))
    assert paid.split.balance == 128650 - 4080 and platform.ledger.balance(LINA) == 128650 - 4080


def test_a_lost_answer_whose_reversal_also_fails_is_unknown_until_resolved(lina_account, platform):
    site = lina_account
    platform.set_fault("stall", count=1, seconds=8, infno="2102")  # the terminal's 5 s timeout
    platform.set_fault("fail", count=1, infno="2601")
    with pytest.raises(OutcomeUnknownError, match="do not hand anything over") as unknown:
        purchase(sim("not-activated"), site, "S31", ITEMS, clerk(PINS["not-activated"]))
    assert exit_code(unknown.value) == 17
    [entry] = [r for r in site.outbox.records() if r.infno == "2102"]
    assert entry.state == "calling" and [r.msgid for r in site.outbox.unknown_calls()] == [entry.msgid]
    deadline = __import__("time").monotonic() + 10
    while not settlements(platform) and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)  # the stalled settlement lands at the platform
    assert platform.ledger.balance(LINA) == 128650 - 4080
    [resolution] = site.platform.resolve()
    assert resolution.state == "reversed" and "S31" in resolution.text
    assert site.outbox.get(entry.msgid).state == "reversed" and site.outbox.unknown_calls() == []
    assert platform.ledger.balance(LINA) == 128650 and [s["state"] for s in settlements(platform)] == ["reversed"]


def test_the_platform_unreachable_pays_nothing_and_says_so(lina_account, platform):
    site = lina_account
    site.platform.central.url = "http://127.0.0.1:9"
    with pytest.raises(CentralError, match="not paid") as down:
        purchase(sim("not-activated"), site, "S40", ITEMS, clerk(PINS["not-activated"]))
    assert exit_code(down.value) == 14 and not [r for r in site.outbox.records() if r.infno == "2102"]


def test_a_platform_answering_a_split_that_does_not_add_up_is_reversed(lina_account, platform, monkeypatch):
    from sscard.central.ledger import Ledger

    real = Ledger._settle

    def lying(self, call, *, commit):
        output = real(self, call, commit=commit)
        if commit:
            output["setlinfo"]["psn_cash_pay"] = "1.00"  # fund + account + cash no longer the bill
        return output

    monkeypatch.setattr(Ledger, "_settle", lying)
    with pytest.raises(ReversedError, match="cannot be used"):
        purchase(sim("not-activated"), lina_account, "S41", ITEMS, clerk(PINS["not-activated"]))
    assert platform.ledger.balance(LINA) == 128650 and [s["state"] for s in settlements(platform)] == ["reversed"]


@pytest.mark.parametrize(("text", "fen"), [("12", 1200), ("12.5", 1250), ("12.50", 1250), ("0.01", 1), ("0.1", 10)])
def test_money_is_parsed_to_integer_fen(text, fen):
    value = parse_money(text)
    assert value == fen and type(value) is Fen


@pytest.mark.parametrize("text", ["12.345", "-1", "1e3", "12,50", "", "abc", "0x10"])
def test_money_refuses_anything_else(text):
    with pytest.raises(PaymentRefusedError):
        parse_money(text)


def test_items_parse_and_refuse():
    assert Item.parse("阿莫西林胶囊:2:12.50") == Item("阿莫西林胶囊", 2, Fen(1250))
    assert Item.parse("a:b:c:3:1").name == "a:b:c"
    assert Item.parse("x: 3 :1") == Item("x", 3, Fen(100))
    for bad in ("阿莫西林胶囊:2", ":1:1", "x:0:1", "x:1.5:1", "x:10000:1",
                "x:²:1.00", "x:٣:1.00", "x:３:1.00", "x:1:٣.00", "x:1:1.٥0"):  # ASCII digits only
        with pytest.raises(PaymentRefusedError):
            Item.parse(bad)


# --- bank counter ----------------------------------------------------------------------------------

def test_bank_activation_sets_the_pin_and_activates_the_card(site):
    reader = sim("not-activated")
    result = bank_activate(reader, site, "330302199203081020", clerk("135792", "135792"))
    assert count(site) == 1 and result.record.infno == "SS01"
    assert wire(result.record)["input"]["data"]["actv_way"] == "bank"
    card = SocialSecurityCard(reader)
    assert card.select() is True  # the chip itself is active now
    card.verify_pin("135792")
    with pytest.raises(WrongPINError):
        SocialSecurityCard(reader).verify_pin("123456")


def test_bank_activation_id_in_lower_case_x_matches():
    from sscard.terminal.flows.common import same_person

    assert same_person("33030419780921256x", "33030419780921256X") and not same_person("1", "2")


@pytest.mark.parametrize(("id_number", "pins", "error"), [
    ("330302197001010014", ("135792", "135792"), IdentityMismatchError),  # another person's
    ("330302199203081021", ("135792", "135792"), IDNumberFormatError),    # a digit mistyped: no ID number
    ("330302199203081020", ("123456", "123456"), WeakPINError),
    ("330302199203081020", ("888888", "888888"), WeakPINError),
    ("330302199203081020", ("135792", "135793"), PINFormatError),
    ("330302199203081020", ("12a456", "12a456"), PINFormatError),
])
def test_bank_refusals_change_and_queue_nothing(site, id_number, pins, error):
    reader = sim("not-activated")
    with pytest.raises(error) as raised:
        bank_activate(reader, site, id_number, clerk(*pins))
    assert count(site) == 0 and SocialSecurityCard(reader).select() is False
    assert "330302199203081020" not in str(raised.value) and pins[0] not in str(raised.value)


def test_bank_refuses_an_active_card_and_a_counterfeit(site):
    with pytest.raises(RefusedError, match="already activated"):
        bank_activate(sim("adult"), site, "330302198506151239", clerk("135792", "135792"))
    with pytest.raises(CardAuthenticationError):
        bank_activate(_not_activated_counterfeit(), site, "330302198506151239", clerk("135792", "135792"))
    assert count(site) == 0


def _not_activated_counterfeit():
    from sscard.drivers.memory import MemoryConnection
    from sscard.drivers.simulator import load_card

    card = load_card("counterfeit")
    card.activated = False
    return MemoryConnection(card)


def test_bank_card_removed_at_any_step_queues_nothing(site):
    for n, result in removal_points(
            lambda n: bank_activate(sim("not-activated", remove_after=n), site, "330302199203081020",
                                    clerk("135792", "135792")), 60):
        if result is not None:
            assert count(site) == 1
            break
        assert count(site) == 0, n
    else:
        pytest.fail("never completed")


# --- kiosk ------------------------------------------------------------------------------------------

def test_kiosk_shows_masked_holder_the_platforms_balance_and_the_cards_records(lina_account, platform):
    site = lina_account
    register(sim("not-activated"), site, "outpatient", "内科", clerk(PINS["not-activated"]))
    purchase(sim("not-activated"), site, "S11", ITEMS, clerk(PINS["not-activated"]))
    register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))  # another card's record
    before = count(site)
    view = inquiry(sim("not-activated"), site, clerk(PINS["not-activated"]))
    assert count(site) == before  # a 1101 is asked: a query, nothing journaled
    assert view.activated and view.balance_fen == 124570 == platform.ledger.balance(LINA)
    assert [r["infno"] for r in view.records] == ["2102", "2201", "SS02"] and view.records_total == 3
    newest = inquiry(sim("not-activated"), site, clerk(PINS["not-activated"]), limit=2)
    assert [r["infno"] for r in newest.records] == ["2102", "2201"] and newest.records_total == 3
    assert view.records[0]["amount"] == "40.80" and view.records[1]["department"] == "内科"
    text = json.dumps(view.to_dict(), ensure_ascii=False)
    assert "330302199203081020" not in text and "李娜" not in text and "330300D15600000507654321FFFFFFFF" not in text
    assert view.shown["full_name"] == "李*" and view.holder["id_number"] == "330302************"


def test_kiosk_with_the_platform_unreachable_shows_the_rest(site):
    site.platform.central.url = "http://127.0.0.1:9"
    view = inquiry(sim("adult"), site, clerk(PINS["adult"]))
    assert view.balance_fen is None and "cannot say now" in view.balance_note and view.activated


def test_kiosk_wrong_pin(site):
    with pytest.raises(WrongPINError):
        inquiry(sim("adult"), site, clerk("000001"))
    assert is_active(SocialSecurityCard(sim("adult")).read_identity(), site.outbox)


def test_a_wrong_pin_is_asked_again_while_the_clerk_can_ask_and_what_was_typed_is_kept(lina_account, platform):
    said = clerk("111222", PINS["not-activated"])  # a person at the screen: a second PIN to type
    paid = purchase(sim("not-activated"), lina_account, "S50", ITEMS, said)
    assert not paid.already_paid and platform.ledger.balance(LINA) == 128650 - 4080
    assert any("Wrong PIN: 2 tries left" in line and "Type it again" in line for line in said.said)
    with pytest.raises(WrongPINError):  # a script's one PIN: one try
        purchase(sim("not-activated"), lina_account, "S51", ITEMS, clerk("111222"))


@pytest.mark.parametrize("card", ["adult", "minority", "other-region", "blocked-pin"])
def test_a_purchase_settles_for_every_bundled_active_card(site, platform, card):
    """Every active card of fixtures/cards pays at the pharmacy: from the account (310), in cash (390, no
    account), cross-region (Shenzhen); the card whose PIN is blocked is refused before anything moves."""
    if card == "blocked-pin":
        with pytest.raises(PINBlockedError):
            purchase(sim(card), site, "E1", ITEMS, clerk(PINS[card]))
        assert settlements(platform) == []
        return
    paid = purchase(sim(card), site, "E1", ITEMS, clerk(PINS[card]))
    assert paid.split.total == 4080 and paid.split.fund + paid.split.account + paid.split.cash == 4080
    assert [(s["chrg_bchno"], s["state"]) for s in settlements(platform)] == [("E1", "settled")]


# --- the journal under takeovers, refusals and lies (review findings) -------------------------------

LATE_PAYER = """
import json, sys
sys.path.insert(0, {tests!r})
from onlineworker import buy, open_site
site = open_site({journal!r}, {url!r}, 1)
site.platform.lease = 1.0  # as if the call had outlived its lease
print(json.dumps(buy(site, "not-activated", "S60", 4080)), flush=True)
"""


def test_a_late_answer_after_another_command_took_the_call_over_is_not_acted_on(lina_account, platform):
    """Another process of the terminal resolves a call whose lease ran out while its caller still waits:
    the caller's late answer is refused by the journal, and its clerk is told not to act on it."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sscard.terminal.queue import now_cst

    site = lina_account
    site.outbox.clock = now_cst  # the real clock: leases run out in real time here
    platform.set_fault("stall", count=1, seconds=4, infno="2102")
    payer = subprocess.Popen([sys.executable, "-c", LATE_PAYER.format(tests=str(Path(__file__).parent),
                                                                      journal=str(site.outbox.path), url=platform.url)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    resolved: list = []
    deadline = time.monotonic() + 20
    while not resolved and time.monotonic() < deadline and payer.poll() is None:
        resolved = site.platform.resolve()  # this process is "the next command"
        time.sleep(0.05)
    out, err_text = payer.communicate(timeout=60)
    assert [r.state for r in resolved] == ["reversed"] and "S60" in resolved[0].text, err_text
    outcome = json.loads(out)
    assert outcome["error"] == "OutcomeUnknownError" and outcome["exit"] == 17, outcome
    assert "took the call over" in outcome["text"] and "Do not hand anything over" in outcome["text"]
    [entry] = [r for r in site.outbox.records() if r.infno == "2102"]
    assert entry.state == "reversed" and [s["state"] for s in settlements(platform)] == ["reversed"]
    assert platform.ledger.balance(LINA) == 128650


def test_an_unknown_refund_that_cannot_be_undone_is_confirmed_and_the_next_entry_is_still_resolved(lina_account,
                                                                                                  platform):
    site = lina_account
    purchase(sim("not-activated"), site, "S70", ITEMS, clerk(PINS["not-activated"]))
    platform.set_fault("drop", count=1, infno="2103")
    platform.set_fault("fail", count=1, infno="2601")
    with pytest.raises(OutcomeUnknownError):
        refund(site, "S70", clerk())
    assert platform.ledger.balance(LINA) == 128650  # the refund did happen at the platform
    platform.ledger.conn.execute("UPDATE accounts SET balc = 0 WHERE psn_no = ?", [LINA])  # and was spent since
    platform.set_fault("drop", count=1, infno="2102")
    platform.set_fault("fail", count=1, infno="2601")
    with pytest.raises(OutcomeUnknownError):
        purchase(sim("adult"), site, "S71", ITEMS, clerk(PINS["adult"]))
    resolutions = site.platform.resolve()
    assert [r.state for r in resolutions] == ["answered", "reversed"]
    assert "it stands" in resolutions[0].text and "S71" in resolutions[1].text
    states = {r.infno: r.state for r in site.outbox.records() if r.infno in ("2103",)}
    assert states == {"2103": "answered"} and site.outbox.unknown_calls() == []
    assert platform.ledger.balance(ZHANGWEI) == 235000  # S71 reversed


def test_an_entry_the_platform_cannot_be_asked_about_stays_unknown_and_is_said_so(lina_account, platform):
    site = lina_account
    platform.set_fault("drop", count=1, infno="2102")
    platform.set_fault("fail", count=1, infno="2601")
    with pytest.raises(OutcomeUnknownError):
        purchase(sim("not-activated"), site, "S80", ITEMS, clerk(PINS["not-activated"]))
    site.platform.central.url = "http://127.0.0.1:9"
    with pytest.raises(CentralError):
        site.platform.resolve()
    assert [r.infno for r in site.outbox.unknown_calls()] == ["2102"]  # handed back, not hidden


def test_a_refund_answer_giving_back_other_shares_is_not_used(lina_account, platform, monkeypatch):
    from sscard.central.ledger import Ledger

    site = lina_account
    purchase(sim("not-activated"), site, "S90", ITEMS, clerk(PINS["not-activated"]))
    real = Ledger._cancel

    def lying(self, call, settlement_infno):
        output = real(self, call, settlement_infno)
        output["setlinfo"]["acct_pay"], output["setlinfo"]["psn_cash_pay"] = "0.00", "40.80"
        return output

    monkeypatch.setattr(Ledger, "_cancel", lying)
    with pytest.raises(ReversedError, match="other shares"):
        refund(site, "S90", clerk())
    assert [s["state"] for s in settlements(platform)] == ["settled"]  # the cancellation reversed
    assert platform.ledger.balance(LINA) == 128650 - 4080


def test_a_sign_in_the_platform_refuses_journals_nothing(site, platform, tmp_path):
    from dataclasses import replace

    other = open_site(tmp_path / "other.sqlite", platform.url, replace(STATION, dev_no="DEV-OTHER"))
    mine = open_site(tmp_path / "mine.sqlite", platform.url, replace(STATION, dev_no="DEV-MINE"))
    try:
        purchase(sim("adult"), other, "S100", ITEMS, clerk(PINS["adult"]))  # signed in with terminal 01
        mine.outbox.clock.tick(60)  # a minute later (the same second would give the same msgids)
        with pytest.raises(CentralError, match="terminal number 01") as refused:
            purchase(sim("adult"), mine, "S101", ITEMS, clerk(PINS["adult"]))
        assert exit_code(refused.value) == 14 and mine.outbox.records() == []
    finally:
        for opened in (other, mine):
            opened.platform.close()
            opened.outbox.close()
