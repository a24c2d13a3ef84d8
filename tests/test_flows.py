"""The counter flows end to end in memory: virtual cards, the real SQLite queue, the real key store.

Every refusal named in issue 6 is here, each checked to queue nothing; card removal is tried after
every APDU of each flow.
"""
from __future__ import annotations

import json

import pytest

from apdu.crypto import PINFormatError, WeakPINError
from apdu.errors import (
    CardAuthenticationError,
    CardRemovedError,
    IdentityMismatchError,
    PINBlockedError,
    WrongPINError,
)
from flowing import PINS, STATION, clerk, sim, site  # noqa: F401  (fixture)
from terminal.card import SocialSecurityCard
from terminal.envelope import Fen
from terminal.flows.account import account_view
from terminal.flows.bank import bank_activate
from terminal.flows.common import PaymentRefusedError, RefusedError, is_active
from terminal.flows.desk import register
from terminal.flows.kiosk import inquiry
from terminal.flows.pharmacy import Item, dual_card_activate, parse_money, purchase, read_old_card
from terminal.oldcard import WrongCardOrderError


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

def test_desk_registration_is_queued_with_the_card_and_the_department(site):
    result = register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))
    assert count(site) == 1 and result.activation is None and not result.cross_region
    envelope = wire(result.record)
    assert envelope["infno"] == "2201" and envelope["insuplc_admdvs"] == envelope["mdtrtarea_admvs"] == "330300"
    data = envelope["input"]["data"]
    assert data["dept_name"] == "内科" and data["med_type"] == "11" and data["insutype"] == "310"
    assert data["certno"] == "330302198506151239" and data["card_sninfo"] == "330300D15600000501234567FFFFFFFF"
    assert data["mdtrt_cert_type"] == "03" and data["cross_region"] is False


@pytest.mark.parametrize(("kind", "infno", "med_type", "insutype"), [
    ("hospitalisation", "2401", "21", "310"), ("maternity", "2201", "51", "510")])
def test_desk_registration_kinds(site, kind, infno, med_type, insutype):
    record = register(sim("adult"), site, kind, "妇产科", clerk(PINS["adult"])).record
    data = wire(record)["input"]["data"]
    assert (record.infno, data["med_type"], data["insutype"]) == (infno, med_type, insutype)


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


def test_desk_without_pin_when_the_site_does_not_require_it(site):
    said = clerk()
    register(sim("adult"), site, "outpatient", "内科", said, require_pin=False)
    assert count(site) == 1 and "PIN correct." not in said.said


@pytest.mark.parametrize(("card", "pin", "error"), [
    ("counterfeit", PINS["counterfeit"], CardAuthenticationError),
    ("adult", "111222", WrongPINError),
    ("blocked-pin", PINS["blocked-pin"], PINBlockedError),
])
def test_desk_refusals_queue_nothing(site, card, pin, error):
    with pytest.raises(error):
        register(sim(card), site, "outpatient", "内科", clerk(pin))
    assert count(site) == 0


def test_desk_refuses_an_unknown_kind_and_an_empty_department(site):
    with pytest.raises(RefusedError):
        register(sim("adult"), site, "dental", "内科", clerk(PINS["adult"]))
    with pytest.raises(RefusedError):
        register(sim("adult"), site, "outpatient", "  ", clerk(PINS["adult"]))
    assert count(site) == 0


def test_desk_card_removed_at_any_step_queues_nothing(site):
    for n, result in removal_points(
            lambda n: register(sim("not-activated", remove_after=n), site, "outpatient", "内科",
                               clerk(PINS["not-activated"])), 60):
        if result is not None:  # pulled after the last APDU: both records, activation first
            assert count(site) == 2 and n > 10
            break
        assert count(site) == 0, n
    else:
        pytest.fail("never completed")


# --- pharmacy: dual-card insert ---------------------------------------------------------------------

def test_dual_card_moves_the_account_activates_and_marks_the_old_card(site):
    old_reader = sim("old-medical-lina")
    old = read_old_card(old_reader)
    assert old.balance == Fen(128650) and not old.replaced
    result = dual_card_activate(old, sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)
    assert result.activated_now and result.old_card_marked and old_reader.card.replaced
    assert count(site) == 1 and result.record.infno == "SS02"
    data = wire(result.record)["input"]["data"]
    assert data["acct_balc"] == "1286.50" and data["old_card_no"] == "YB330300000012"
    assert data["card_sninfo"] == "330300D15600000507654321FFFFFFFF" and data["actv_way"] == "dual-card"
    assert account_view(site.outbox, data["card_sninfo"]).balance == Fen(128650)
    assert read_old_card(old_reader).replaced  # the mark is on the card itself


def test_dual_card_old_card_that_does_not_allow_marking(site):
    old_reader = sim("old-medical-zhangwei")
    result = dual_card_activate(read_old_card(old_reader), sim("adult"), site, clerk(PINS["adult"]), old_reader)
    assert count(site) == 1 and not result.old_card_marked and not result.activated_now
    assert "does not allow" in result.old_card_note and not read_old_card(old_reader).replaced
    with pytest.raises(RefusedError, match="already moved"):  # the queue guards a second transfer
        dual_card_activate(read_old_card(old_reader), sim("adult"), site, clerk(PINS["adult"]), old_reader)
    assert count(site) == 1


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
    assert WrongCardOrderError.exit_code == 15


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


def test_dual_card_either_card_removed_halfway_queues_nothing(site):
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
                assert count(site) == 0, n
            else:  # pulled only after the record was queued: the move stands, the mark may be missing
                assert count(site) == 1
                site.outbox.db.execute("DELETE FROM records")
                break
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
    from drivers.memory import MemoryConnection
    from drivers.simulator import load_card
    from terminal.oldcard import NotOldMedicalCardError

    with pytest.raises(NotOldMedicalCardError, match="not an old medical insurance card"):
        read_old_card(MemoryConnection(load_card("psam")))


# --- pharmacy: purchase -------------------------------------------------------------------------------

ITEMS = [Item("阿莫西林胶囊", 2, Fen(1250)), Item("布洛芬缓释胶囊", 1, Fen(1580))]


@pytest.fixture
def lina_account(site):
    old_reader = sim("old-medical-lina")
    dual_card_activate(read_old_card(old_reader), sim("not-activated"), site, clerk(PINS["not-activated"]), old_reader)
    return site


def test_purchase_pays_from_the_account_and_the_record_agrees(lina_account):
    site = lina_account
    paid = purchase(sim("not-activated"), site, "S0001", ITEMS, clerk(PINS["not-activated"]))
    assert paid.total == Fen(4080) and paid.balance_after == Fen(128650 - 4080) and not paid.already_paid
    data = wire(paid.record)["input"]["data"]
    assert (data["medfee_sumamt"], data["acct_pay"], data["balc"], data["psn_cash_pay"]) == (
        "40.80", "40.80", "1245.70", "0.00")
    assert data["items"][0] == {"med_list_name": "阿莫西林胶囊", "cnt": 2, "pric": "12.50", "det_item_fee_sumamt": "25.00"}
    assert paid.record.infno == "2102" and data["med_type"] == "41" and data["chrg_bchno"] == "S0001"
    assert account_view(site.outbox, data["card_sninfo"]).balance == paid.balance_after


def test_purchase_card_pulled_right_after_payment_is_queued_once(lina_account):
    site = lina_account
    probe = sim("not-activated")
    purchase(probe, site, "S0100", ITEMS, clerk(PINS["not-activated"]))
    last_apdu = probe.apdu_count
    site.outbox.db.execute("DELETE FROM records WHERE infno = '2102'")
    # pulled right after the last APDU (the PIN): the payment stands...
    card = sim("not-activated", remove_after=last_apdu)
    paid = purchase(card, site, "S0101", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(CardRemovedError):
        SocialSecurityCard(card).select()
    # ...and the clerk who runs it again with the card back in gets the same payment, not a second one
    again = purchase(sim("not-activated"), site, "S0101", ITEMS, clerk())
    assert again.already_paid and again.record.msgid == paid.record.msgid and again.balance_after == paid.balance_after
    assert len([r for r in site.outbox.records() if r.infno == "2102"]) == 1


def test_purchase_card_removed_before_payment_queues_nothing(lina_account):
    site = lina_account
    before = count(site)
    for n, result in removal_points(
            lambda n: purchase(sim("not-activated", remove_after=n), site, f"R{n}", ITEMS, clerk(PINS["not-activated"])),
            40):
        if result is not None:
            assert count(site) == before + 1 and n > 10
            break
        assert count(site) == before


def test_purchase_refusals_queue_nothing(lina_account):
    site = lina_account
    before = count(site)
    with pytest.raises(PaymentRefusedError, match="over the account balance"):
        purchase(sim("not-activated"), site, "S2", [Item("胰岛素", 2, Fen(64326))], clerk(PINS["not-activated"]))
    with pytest.raises(PaymentRefusedError, match="no medical personal account balance"):
        purchase(sim("adult"), site, "S3", ITEMS, clerk(PINS["adult"]))
    with pytest.raises(RefusedError, match="not activated"):
        purchase(sim("not-activated"), _fresh(site), "S4", ITEMS, clerk(PINS["not-activated"]))
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
    assert count(site) == before


def test_purchase_exactly_the_balance_then_nothing_more(lina_account):
    site = lina_account
    purchase(sim("not-activated"), site, "S8", [Item("全部", 1, Fen(128650))], clerk(PINS["not-activated"]))
    with pytest.raises(PaymentRefusedError):
        purchase(sim("not-activated"), site, "S9", [Item("一分", 1, Fen(1))], clerk(PINS["not-activated"]))


def test_purchase_sale_number_reused_for_other_items_is_refused(lina_account):
    site = lina_account
    purchase(sim("not-activated"), site, "S10", ITEMS, clerk(PINS["not-activated"]))
    with pytest.raises(PaymentRefusedError, match="already paid with other items"):
        purchase(sim("not-activated"), site, "S10", ITEMS[:1], clerk(PINS["not-activated"]))
    assert len([r for r in site.outbox.records() if r.infno == "2102"]) == 1


def test_purchase_sale_number_paid_with_another_card_is_refused(lina_account):
    site = lina_account
    other = sim("old-medical-zhangwei")
    dual_card_activate(read_old_card(other), sim("adult"), site, clerk(PINS["adult"]), other)
    purchase(sim("not-activated"), site, "T0001", ITEMS, clerk(PINS["not-activated"]))
    said = clerk(PINS["adult"])
    with pytest.raises(PaymentRefusedError, match="T0001 was already paid with another card") as refused:
        purchase(sim("adult"), site, "T0001", ITEMS, said)
    assert "李娜" not in str(refused.value) and "330302199203081020" not in str(refused.value)
    assert said.pins == [PINS["adult"]]  # refused before the PIN was asked
    assert len([r for r in site.outbox.records() if r.infno == "2102"]) == 1
    assert PaymentRefusedError.exit_code == 16


def _fresh(site):
    """The same site with an empty queue in another file (the card is not active there)."""
    from terminal.flows.common import Site
    from terminal.queue import Outbox

    return Site(Outbox(site.outbox.path.with_name("other.sqlite"), STATION), site.keys)


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
    from terminal.flows.common import same_person

    assert same_person("33030419780921256x", "33030419780921256X") and not same_person("1", "2")


@pytest.mark.parametrize(("id_number", "pins", "error"), [
    ("330302199203081021", ("135792", "135792"), IdentityMismatchError),
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
    from drivers.memory import MemoryConnection
    from drivers.simulator import load_card

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

def test_kiosk_shows_masked_holder_and_the_cards_records(lina_account):
    site = lina_account
    register(sim("not-activated"), site, "outpatient", "内科", clerk(PINS["not-activated"]))
    purchase(sim("not-activated"), site, "S11", ITEMS, clerk(PINS["not-activated"]))
    register(sim("adult"), site, "outpatient", "内科", clerk(PINS["adult"]))  # another card's record
    before = count(site)
    view = inquiry(sim("not-activated"), site, clerk(PINS["not-activated"]))
    assert count(site) == before
    assert view.active and view.balance == "1245.70"
    assert [r["infno"] for r in view.records] == ["2102", "2201", "SS02"]
    assert view.records[0]["amount"] == "40.80" and view.records[1]["department"] == "内科"
    text = json.dumps(view.to_dict(), ensure_ascii=False)
    assert "330302199203081020" not in text and "李娜" not in text and "330300D15600000507654321FFFFFFFF" not in text
    assert view.holder["full_name"] == "李*"


def test_kiosk_wrong_pin(site):
    with pytest.raises(WrongPINError):
        inquiry(sim("adult"), site, clerk("000001"))
    assert is_active(SocialSecurityCard(sim("adult")).read_identity(), site.outbox)
