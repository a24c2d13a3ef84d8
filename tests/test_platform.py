"""The virtual national medical insurance platform (central/): gateway, sign-in, 1101, settlements with
the policy, cancellations, reversals, dedupe, the agency's records, day-end totals, batches, fault
switches, ``sscard central show`` and the policy itself.

Every test talks to a real :class:`central.CentralService` on 127.0.0.1 over HTTP (a fresh ledger on a
tmp SQLite file each time) or to a real :class:`central.Ledger`; nothing of the platform is mocked.
Amounts are hand-computed integer fen from the policy (central/policy.py) and the TEST persons of
fixtures/platform/persons.json.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from queueing import Clock

from sscard.central import CentralService, Ledger, Unanswerable, Unsigned, policy
from sscard.message.envelope import (
    CST,
    MSGID_TAKEN,
    Credentials,
    Envelope,
    Fen,
    Operator,
    Station,
    gateway_headers,
    msgid as make_msgid,
    parse_yuan,
    yuan,
)
from sscard.terminal.gateway import test_credentials as credentials_of

# --- the cast ------------------------------------------------------------------------------------

#: the Wenzhou clinic (330300), the pharmacy across the road, the bank's counter, a Beijing hospital
CLINIC = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 1, Operator("C001", "李收费"), dev_no="CLINIC-PC-1")
PHARMACY = Station("P33030200002", "温州市鹿城区示范药店", "330300", 3, Operator("Y001", "王药师"), dev_no="TILL-1")
BANK = Station("B33030000007", "某银行温州分行营业部", "330300", 5, Operator("K001", "赵柜员"), dev_no="BANK-1")
BEIJING = Station("H11010500001", "北京测试医院", "110105", 7, Operator("D001", "王医生"), dev_no="BJ-1")

#: the day every test lives on (the ledger's clock); msgids are minted from this morning on
TODAY = dt.datetime(2026, 3, 1, 9, 30, 0, tzinfo=CST)
_SECONDS = itertools.count(1)


@dataclass(frozen=True)
class Person:
    psn_no: str
    name: str
    certno: str
    region: str
    balance: int = 0  # fen, as seeded
    card: str = ""
    card_sn: str = ""


ZHANG = Person("3303000000000001", "张伟", "330302198506151239", "330300", 235000,
               "A01234567", "330300D15600000501234567FFFFFFFF")
LI = Person("3303000000000002", "李娜", "330302199203081020", "330300", 0,
            "A07654321", "330300D15600000507654321FFFFFFFF")
ZHOU = Person("3303000000000003", "周敏", "330303196811052226", "330300", 80000,
              "A08642097", "330300D15600000508642097FFFFFFFF")
WANG = Person("3303000000000004", "王芳", "33030419780921256X", "330300", 120000,
              "A02468024", "330300D15600000502468024FFFFFFFF")
AYI = Person("6501000000000005", "阿依古丽·买买提吐尔逊·阿卜杜热合曼", "650102199502031481", "650100", 0,
             "C05550123", "650100D15600000505550123FFFFFFFF")
CHEN = Person("4403000000000006", "陈静", "440304199007123447", "440300", 300000,
              "B03141592", "440300D15600000503141592FFFFFFFF")
SUN = Person("3303000000000007", "孙强", "330302197001010014", "330300")
ZHAO = Person("3303000000000008", "赵磊", "330304198203150039", "330300", 45000)
HUANG = Person("3101000000000010", "黄丽", "310101197506300040", "310101", 200000)

#: 周敏's card reported lost
LOST_CARD, LOST_SN = "A08640001", "330300D15600000508640001FFFFFFFF"
#: 李娜's old medical card (1286.50 yuan not yet moved) and 张伟's; 王芳's was moved already
LI_OLD, LI_OLD_BALANCE = "YB330300000012", 128650
ZHANG_OLD = "YB330300000034"
WANG_OLD = "YB330300000056"


# --- the platform and the terminals ----------------------------------------------------------------

@pytest.fixture
def service(tmp_path):
    """The virtual platform on a loopback port, a fresh ledger, fault switches off, clock on TODAY."""
    with CentralService(tmp_path / "platform.sqlite", clock=Clock(TODAY)) as running:
        yield running


@pytest.fixture
def faulty(tmp_path):
    """The virtual platform with its fault switches on."""
    with CentralService(tmp_path / "faulty.sqlite", faults=True, clock=Clock(TODAY)) as running:
        yield running


def new_msgid(station: Station) -> str:
    """A fresh msgid of ``station``: institution code + a second never used before in this module + the
    terminal number and counter 00."""
    return make_msgid(station, TODAY + dt.timedelta(seconds=next(_SECONDS)), 0)


def post(service: CentralService, path: str, body: Any, headers: dict[str, str] | None) -> httpx.Response:
    """One raw HTTP POST to the platform (``headers`` None: no gateway headers at all)."""
    data = json.dumps(body, ensure_ascii=False).encode()
    return httpx.post(f"{service.url}{path}", content=data, timeout=10,
                      headers={"content-type": "application/json", **(headers or {})})


def rows(service: CentralService, sql: str, *params: Any) -> list[tuple]:
    """Rows read straight from the ledger's SQLite file (a connection of its own)."""
    conn = sqlite3.connect(service.ledger.path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def one(service: CentralService, sql: str, *params: Any) -> Any:
    return rows(service, sql, *params)[0][0]


def stored(service: CentralService, msgid: str) -> bool:
    return bool(rows(service, "SELECT 1 FROM messages WHERE msgid = ?", msgid))


def balance(service: CentralService, person: Person) -> int:
    return service.ledger.balance(person.psn_no)


class Terminal:
    """One terminal of one institution: builds envelopes, signs requests as its institution."""

    def __init__(self, service: CentralService, station: Station, credentials: Credentials | None = None) -> None:
        self.service = service
        self.station = station
        self.credentials = credentials or credentials_of(station.fixmedins_code)
        self.sign_no = ""

    def message(self, infno: str, input: dict[str, Any], *, region: str | None = None, msgid: str | None = None,
                sign_no: str | None = None) -> dict[str, Any]:
        """An envelope as the wire carries it (Fen amounts as yuan strings)."""
        envelope = Envelope(infno=infno, msgid=msgid or new_msgid(self.station), station=self.station,
                            operator=self.station.operator, insured_region=region or self.station.region,
                            time=TODAY, input=input, sign_no=self.sign_no if sign_no is None else sign_no)
        return json.loads(envelope.to_wire())

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return post(self.service, path, body, headers or gateway_headers(self.credentials))

    def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """One message over /api/call; its platform response (HTTP 200 required)."""
        reply = self.post("/api/call", message)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def call(self, infno: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        return self.send(self.message(infno, input, **options))

    def ok(self, infno: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        """The output of an accepted message."""
        response = self.call(infno, input, **options)
        assert response["infcode"] == 0, response["err_msg"]
        return response["output"]

    def refused(self, infno: str, input: dict[str, Any], **options: Any) -> str:
        """The reason of a refused message."""
        response = self.call(infno, input, **options)
        assert response["infcode"] == -1, response
        assert response["err_msg"]
        return response["err_msg"]

    def sign_in_message(self) -> dict[str, Any]:
        return self.message("9001", {"signIn": {"opter_no": self.station.operator.opter, "mac": "", "ip": "127.0.0.1"}},
                            sign_no="")

    def sign_in(self) -> str:
        output = self.send(self.sign_in_message())["output"]
        self.sign_no = output["signinoutb"]["sign_no"]
        return self.sign_no


def terminal(service: CentralService, station: Station) -> Terminal:
    """A terminal of ``station`` signed in (9001)."""
    t = Terminal(service, station)
    t.sign_in()
    return t


# --- transaction inputs --------------------------------------------------------------------------------

def card(person: Person, **extra: Any) -> dict[str, Any]:
    """The social security card credential (type 03: card number and card identification code)."""
    return {"mdtrt_cert_type": "03", "mdtrt_cert_no": person.card, "card_sn": person.card_sn, **extra}


def sale(person: Person, total: int, chrg: str, *, drugs: list[int] | None = None, acct: str = "1",
         insutype: str = "310") -> dict[str, Any]:
    """A pharmacy (pre-)settlement, 2101/2102; ``drugs``: the amounts of the drug lines (fen)."""
    body: dict[str, Any] = {"data": {"psn_no": person.psn_no, "insutype": insutype, "med_type": "41",
                                     "medfee_sumamt": Fen(total), "chrg_bchno": chrg, "acct_used_flag": acct}}
    if drugs is not None:
        body["drugdetail"] = [{"med_list_codg": f"X{i:05d}", "medins_list_name": f"药品{i}", "cnt": 1,
                               "pric": Fen(amount), "det_item_fee_sumamt": Fen(amount)}
                              for i, amount in enumerate(drugs)]
    return body


def register(person: Person, insutype: str = "310", med_type: str = "11") -> dict[str, Any]:
    return {"data": {"psn_no": person.psn_no, "insutype": insutype, "med_type": med_type,
                     "begntime": "2026-03-01 09:30:00", "dept_name": "内科"}}


def fees(person: Person, mdtrt_id: str, chrg: str, *lines: tuple[str, int]) -> dict[str, Any]:
    """2204: fee lines (feedetl_sn, amount in fen) of one charge batch."""
    return {"feedetail": [{"mdtrt_id": mdtrt_id, "psn_no": person.psn_no, "chrg_bchno": chrg, "feedetl_sn": sn,
                           "med_list_codg": "F0001", "cnt": 1, "pric": Fen(amount),
                           "det_item_fee_sumamt": Fen(amount)} for sn, amount in lines]}


def bill(person: Person, mdtrt_id: str, chrg: str, total: int, *, insutype: str = "310", acct: str = "1",
         med_type: str | None = None) -> dict[str, Any]:
    """2206/2207 of a visit's charge batch."""
    data = {"psn_no": person.psn_no, "mdtrt_id": mdtrt_id, "insutype": insutype, "chrg_bchno": chrg,
            "medfee_sumamt": Fen(total), "acct_used_flag": acct}
    if med_type:
        data["med_type"] = med_type
    return {"data": data}


def cancel(person: Person, setl_id: str, mdtrt_id: str | None = None) -> dict[str, Any]:
    data = {"setl_id": setl_id, "psn_no": person.psn_no}
    if mdtrt_id:
        data["mdtrt_id"] = mdtrt_id
    return {"data": data}


def reversal(person: Person, omsgid: str, oinfno: str) -> dict[str, Any]:
    return {"data": {"omsgid": omsgid, "oinfno": oinfno, "psn_no": person.psn_no}}


def transfer(person: Person, old: str = LI_OLD, amount: int = LI_OLD_BALANCE, **extra: Any) -> dict[str, Any]:
    """SS02: the old card's account to the person's (the claimed balance in fen)."""
    return {"data": {"psn_no": person.psn_no, **card(person), "old_card_no": old, "acct_balc": Fen(amount), **extra}}


def shares(setlinfo: dict[str, Any]) -> tuple[int, int, int, int]:
    """(total, fund, account, cash) of a settlement answer, in fen."""
    return tuple(int(parse_yuan(setlinfo[k])) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                        "psn_cash_pay"))


def year_use(service: CentralService, person: Person, insutype: str = "310") -> tuple[int, int]:
    """(deductible used, fund used) of the person's year, read straight from the ledger."""
    got = rows(service, "SELECT deductible_used, fund_used FROM years WHERE psn_no = ? AND insutype = ? AND year = 2026",
               person.psn_no, insutype)
    return got[0] if got else (0, 0)


def settle_visit(t: Terminal, person: Person, chrg: str, total: int, **options: Any) -> tuple[str, dict[str, Any]]:
    """Register, upload one fee line of ``total`` and settle it (2201, 2204, 2207): (mdtrt_id, setlinfo)."""
    mdtrt_id = t.ok("2201", register(person, insutype=options.get("insutype", "310"),
                                     med_type=options.get("med_type") or "11"), region=person.region)["data"]["mdtrt_id"]
    t.ok("2204", fees(person, mdtrt_id, chrg, (f"{chrg}-1", total)), region=person.region)
    setl = t.ok("2207", bill(person, mdtrt_id, chrg, total, **options), region=person.region)["setlinfo"]
    return mdtrt_id, setl


def buy(t: Terminal, person: Person, total: int, chrg: str, **options: Any) -> tuple[str, dict[str, Any]]:
    """A pharmacy settlement (2102): (its msgid, setlinfo)."""
    message = t.message("2102", sale(person, total, chrg, **options), region=person.region)
    response = t.send(message)
    assert response["infcode"] == 0, response["err_msg"]
    return message["msgid"], response["output"]["setlinfo"]


# === 1. the gateway =========================================================================================

def test_a_request_without_gateway_headers_is_forbidden_and_nothing_is_stored(service):
    t = Terminal(service, CLINIC)
    reply = post(service, "/api/call", t.sign_in_message(), None)
    assert reply.status_code == 403
    assert "x-tif" in reply.json()["err_msg"]
    assert service.ledger.count() == 0
    assert rows(service, "SELECT * FROM signins") == []


def test_a_wrong_token_is_forbidden_and_nothing_is_stored(service):
    t = Terminal(service, CLINIC, Credentials(credentials_of(CLINIC.fixmedins_code).paasid, "not-the-token"))
    message = t.sign_in_message()
    reply = t.post("/api/call", message)
    assert reply.status_code == 403
    assert not stored(service, message["msgid"])
    assert rows(service, "SELECT * FROM signins") == []
    # an unknown paasid too
    reply = post(service, "/api/call", message, gateway_headers(Credentials("nobody", "x")))
    assert reply.status_code == 403
    assert service.ledger.count() == 0


@pytest.mark.parametrize("skew", [-305, 305, -3600])  # whole seconds, and the request takes time: a margin
def test_a_timestamp_more_than_300_s_off_is_forbidden(service, skew):
    t = Terminal(service, CLINIC)
    message = t.sign_in_message()
    reply = t.post("/api/call", message, gateway_headers(t.credentials, now=time.time() + skew))
    assert reply.status_code == 403
    assert "300" in reply.json()["err_msg"]
    assert service.ledger.count() == 0


def test_a_timestamp_within_the_window_is_accepted(service):
    t = Terminal(service, CLINIC)
    reply = t.post("/api/call", t.sign_in_message(), gateway_headers(t.credentials, now=time.time() - 250))
    assert reply.status_code == 200 and reply.json()["infcode"] == 0


def test_a_replayed_nonce_is_forbidden_and_the_replay_stores_nothing(service):
    t = terminal(service, CLINIC)
    headers = gateway_headers(t.credentials)
    first = t.message("1101", {"data": card(ZHANG)}, region=ZHANG.region)
    assert t.post("/api/call", first, headers).status_code == 200
    # the very same request again, and the same headers on another message
    assert t.post("/api/call", first, headers).status_code == 403
    other = t.message("1101", {"data": card(ZHANG)}, region=ZHANG.region)
    reply = t.post("/api/call", other, headers)
    assert reply.status_code == 403
    assert "nonce" in reply.json()["err_msg"]
    assert not stored(service, other["msgid"])
    assert service.ledger.repeats == 0


def test_a_nonce_is_used_up_even_when_its_request_is_refused(service):
    """Headers are one-use whatever became of the request they signed (401, 400): the signature covers
    no body, so reusable headers would carry any other message."""
    t = terminal(service, CLINIC)
    headers = gateway_headers(t.credentials)
    unsigned = t.message("1101", {"data": card(ZHANG)}, region=ZHANG.region, sign_no="S-never-issued")
    assert t.post("/api/call", unsigned, headers).status_code == 401
    replay = t.message("1101", {"data": card(ZHANG)}, region=ZHANG.region)
    assert t.post("/api/call", replay, headers).status_code == 403
    assert not stored(service, replay["msgid"])
    headers = gateway_headers(t.credentials)
    assert post(service, "/api/batch", {"messages": "none"}, headers).status_code == 400
    assert t.post("/api/call", replay, headers).status_code == 403
    assert not stored(service, replay["msgid"])


def test_the_e_voucher_query_refuses_replayed_headers(service):
    t = Terminal(service, CLINIC)
    headers = gateway_headers(t.credentials)
    first = t.post("/api/ec/query", {"qrcode": "ECQR-TEST-0001-ZHANGWEI"}, headers)
    assert first.status_code == 200 and first.json()["infcode"] == 0
    again = t.post("/api/ec/query", {"qrcode": "ECQR-TEST-0001-ZHANGWEI"}, headers)
    assert again.status_code == 403
    assert one(service, "SELECT count(*) FROM tokens") == 1


def test_a_message_of_another_institution_is_refused_and_does_not_use_up_its_msgid(service):
    clinic = terminal(service, CLINIC)
    pharmacy = terminal(service, PHARMACY)
    # the pharmacy's whole message (its msgid, its fixmedins_code) signed with the clinic's credentials
    theirs = pharmacy.message("2102", sale(ZHANG, 1000, "S1"), region=ZHANG.region, sign_no=clinic.sign_no)
    response = clinic.send(theirs)
    assert response["infcode"] == -1
    assert "P33030200002" in response["err_msg"]
    assert not stored(service, theirs["msgid"])
    assert balance(service, ZHANG) == ZHANG.balance
    # the pharmacy may still use that msgid for its own sale
    theirs["sign_no"] = pharmacy.sign_no
    assert pharmacy.send(theirs)["infcode"] == 0
    assert balance(service, ZHANG) == ZHANG.balance - 1000


def test_a_message_naming_another_institution_in_fixmedins_code_is_refused_and_not_executed(service):
    clinic = terminal(service, CLINIC)
    message = clinic.message("2201", register(ZHANG), region=ZHANG.region)
    message["fixmedins_code"] = PHARMACY.fixmedins_code
    response = clinic.send(message)
    assert response["infcode"] == -1 and "fixmedins_code" in response["err_msg"]
    assert rows(service, "SELECT * FROM visits") == []
    # a refusal is not final: the clinic's own message under that msgid is judged on its merits
    message["fixmedins_code"] = CLINIC.fixmedins_code
    assert clinic.send(message)["infcode"] == 0
    assert one(service, "SELECT count(*) FROM visits") == 1


def test_a_sign_no_of_another_institution_is_unauthorised(service):
    clinic = terminal(service, CLINIC)
    pharmacy = Terminal(service, PHARMACY)
    message = pharmacy.message("1101", {"data": card(ZHANG)}, region=ZHANG.region, sign_no=clinic.sign_no)
    reply = pharmacy.post("/api/call", message)
    assert reply.status_code == 401
    assert not stored(service, message["msgid"])


def test_after_sign_out_the_sign_no_is_unauthorised(service):
    t = terminal(service, CLINIC)
    assert t.ok("1101", {"data": card(ZHANG)}, region=ZHANG.region)["baseinfo"]["psn_no"] == ZHANG.psn_no
    out = t.ok("9002", {"signOut": {"sign_no": t.sign_no, "opter_no": "C001"}})
    assert out["signoutoutb"]["sign_no"] == t.sign_no
    message = t.message("1101", {"data": card(ZHANG)}, region=ZHANG.region)
    assert t.post("/api/call", message).status_code == 401
    assert not stored(service, message["msgid"])
    # a new sign-in works again
    t.sign_in()
    assert t.call("1101", {"data": card(ZHANG)}, region=ZHANG.region)["infcode"] == 0


def test_another_device_with_the_same_terminal_number_is_refused_the_same_device_is_not(service):
    first = terminal(service, CLINIC)
    intruder = Terminal(service, Station(CLINIC.fixmedins_code, CLINIC.fixmedins_name, CLINIC.region, 1,
                                         CLINIC.operator, dev_no="ANOTHER-PC"))
    response = intruder.send(intruder.sign_in_message())
    assert response["infcode"] == -1
    assert "terminal number 01" in response["err_msg"]
    assert one(service, "SELECT count(*) FROM signins") == 1
    # the first device signs in again (a restart): accepted, and both its sign_nos work
    again = Terminal(service, CLINIC)
    assert again.sign_in() != first.sign_no
    assert again.call("1101", {"data": card(ZHANG)}, region=ZHANG.region)["infcode"] == 0
    # the other device with its own number is welcome
    own = Terminal(service, Station(CLINIC.fixmedins_code, CLINIC.fixmedins_name, CLINIC.region, 2,
                                    CLINIC.operator, dev_no="ANOTHER-PC"))
    assert own.sign_in()


# === 2. person information (1101) ==========================================================================

def test_1101_by_social_security_card(service):
    t = terminal(service, CLINIC)
    output = t.ok("1101", {"data": card(ZHANG)}, region=ZHANG.region)
    assert output["baseinfo"] == {"psn_no": ZHANG.psn_no, "psn_cert_type": "01", "certno": ZHANG.certno,
                                  "psn_name": "张伟", "gend": "1", "naty": "01", "brdy": "1985-06-15", "age": 40}
    [insurance] = output["insuinfo"]
    assert insurance["insutype"] == "310" and insurance["psn_insu_stas"] == "1"
    assert insurance["balc"] == "2350.00"
    assert insurance["insuplc_admdvs"] == "330300" and insurance["emp_name"] == "温州市示范机械厂"


def test_1101_checks_the_card_number_and_card_identification_code_as_a_pair(service):
    t = terminal(service, CLINIC)
    assert "card identification code" in t.refused("1101", {"data": card(ZHANG, card_sn=LI.card_sn)})
    assert "card identification code" in t.refused("1101", {"data": card(LI, card_sn=ZHANG.card_sn)})
    assert "card_sn" in t.refused("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": ZHANG.card}})


def test_1101_refuses_a_card_reported_lost(service):
    t = terminal(service, CLINIC)
    reason = t.refused("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": LOST_CARD, "card_sn": LOST_SN}})
    assert "reported lost" in reason
    # 周敏's new card is fine
    assert t.ok("1101", {"data": card(ZHOU)})["baseinfo"]["psn_name"] == "周敏"


def test_1101_by_id_number(service):
    t = terminal(service, CLINIC)
    output = t.ok("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": ZHANG.certno}})
    assert output["baseinfo"]["psn_no"] == ZHANG.psn_no
    # the check letter X in either case
    output = t.ok("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": WANG.certno.lower()}})
    assert output["baseinfo"]["psn_no"] == WANG.psn_no
    assert [i["insutype"] for i in output["insuinfo"]] == ["310", "510"]
    assert [i["balc"] for i in output["insuinfo"]] == ["1200.00", "0.00"]  # no account under maternity
    assert "ID number" in t.refused("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "110101190001010000"}})


def test_1101_by_e_voucher_token(service):
    t = terminal(service, CLINIC)
    reply = t.post("/api/ec/query", {"qrcode": "ECQR-TEST-0001-ZHANGWEI"})
    assert reply.status_code == 200
    voucher = reply.json()
    assert voucher["infcode"] == 0 and voucher["output"]["userName"] == "张伟"
    token = voucher["output"]["ecToken"]
    output = t.ok("1101", {"data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": token}})
    assert output["baseinfo"]["psn_no"] == ZHANG.psn_no
    assert output["insuinfo"][0]["balc"] == "2350.00"
    assert "e-voucher token" in t.refused("1101", {"data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": "EC" + "0" * 32}})


def test_an_unknown_e_voucher_code_is_refused(service):
    t = Terminal(service, CLINIC)
    reply = t.post("/api/ec/query", {"qrcode": "ECQR-TEST-9999-NOBODY"})
    assert reply.status_code == 200
    assert reply.json()["infcode"] == -1
    assert "e-voucher" in reply.json()["err_msg"]
    assert one(service, "SELECT count(*) FROM tokens") == 0
    assert t.post("/api/ec/query", {"code": "x"}).status_code == 400


def test_1101_of_a_person_not_insured_has_no_insurance(service):
    t = terminal(service, CLINIC)
    output = t.ok("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": SUN.certno}})
    assert output["baseinfo"]["psn_name"] == "孙强"
    assert output["insuinfo"] == []


def test_1101_of_a_suspended_insurance_shows_state_2(service):
    t = terminal(service, CLINIC)
    output = t.ok("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": ZHAO.certno}})
    [insurance] = output["insuinfo"]
    assert insurance["psn_insu_stas"] == "2"
    assert insurance["paus_insu_date"] == "2026-06-30"
    assert insurance["balc"] == "450.00"


def test_1101_of_a_resident_shows_no_account(service):
    t = terminal(service, CLINIC)
    output = t.ok("1101", {"data": card(AYI)})
    assert output["baseinfo"]["naty"] == "05"
    assert [(i["insutype"], i["balc"]) for i in output["insuinfo"]] == [("390", "0.00")]


# === 3. pharmacy: 2101, 2102, 2103 ==========================================================================

def test_2101_previews_the_split_and_moves_nothing(service):
    t = terminal(service, PHARMACY)
    setl = t.ok("2101", sale(ZHANG, 2350, "T0001", drugs=[1250, 1100]), region=ZHANG.region)["setlinfo"]
    assert shares(setl) == (2350, 0, 2350, 0)
    assert setl["balc"] == yuan(ZHANG.balance - 2350) and setl["setl_id"] == ""
    assert balance(service, ZHANG) == ZHANG.balance
    assert rows(service, "SELECT * FROM settlements") == []
    assert rows(service, "SELECT * FROM years") == []
    # the sale number is still free
    buy(t, ZHANG, 2350, "T0001")


def test_2102_debits_the_account_and_cash_pays_beyond_the_balance(service):
    t = terminal(service, PHARMACY)
    _, setl = buy(t, ZHANG, 2350, "T0001", drugs=[1250, 1100])
    assert shares(setl) == (2350, 0, 2350, 0)  # a pharmacy purchase is outside the fund
    assert setl["clr_type"] == "41" and setl["setl_id"].startswith("ST20260301")
    assert balance(service, ZHANG) == ZHANG.balance - 2350 == int(parse_yuan(setl["balc"]))
    # 周敏 has 800.00 yuan: a bill of 1000.00 takes all of it, 200.00 in cash
    _, setl = buy(t, ZHOU, 100000, "T0002")
    assert shares(setl) == (100000, 0, 80000, 20000)
    assert balance(service, ZHOU) == 0 and setl["balc"] == "0.00"
    # an empty account: all cash, the balance stays 0
    _, setl = buy(t, ZHOU, 999, "T0003")
    assert shares(setl) == (999, 0, 0, 999)
    assert balance(service, ZHOU) == 0
    # the holder keeps the account (acct_used_flag 0): all cash
    _, setl = buy(t, ZHANG, 500, "T0004", acct="0")
    assert shares(setl) == (500, 0, 0, 500)
    assert balance(service, ZHANG) == ZHANG.balance - 2350
    settled = rows(service, "SELECT chrg_bchno, medfee, fund, acct, cash, state FROM settlements ORDER BY id")
    assert settled == [("T0001", 2350, 0, 2350, 0, "settled"), ("T0002", 100000, 0, 80000, 20000, "settled"),
                       ("T0003", 999, 0, 0, 999, "settled"), ("T0004", 500, 0, 0, 500, "settled")]


def test_the_drug_details_must_add_up_to_the_bill(service):
    t = terminal(service, PHARMACY)
    reason = t.refused("2102", sale(ZHANG, 2350, "T0001", drugs=[1250, 1099]), region=ZHANG.region)
    assert "23.49" in reason and "23.50" in reason
    assert "drug details" in t.refused("2101", sale(ZHANG, 2350, "T0001", drugs=[]), region=ZHANG.region)
    assert rows(service, "SELECT * FROM settlements") == []
    assert balance(service, ZHANG) == ZHANG.balance


def test_a_sale_number_settles_once_per_institution_trimmed_and_case_folded(service):
    pharmacy = terminal(service, PHARMACY)
    buy(pharmacy, ZHANG, 1000, " t1")
    reason = pharmacy.refused("2102", sale(ZHANG, 1000, "T1"), region=ZHANG.region)
    assert "already settled" in reason
    assert "already settled" in pharmacy.refused("2102", sale(WANG, 500, "t1 "), region=WANG.region)
    assert balance(service, ZHANG) == ZHANG.balance - 1000
    assert balance(service, WANG) == WANG.balance
    # another institution has its own sale numbers
    clinic = terminal(service, CLINIC)
    buy(clinic, ZHANG, 700, "T1")
    assert balance(service, ZHANG) == ZHANG.balance - 1700
    assert one(service, "SELECT count(*) FROM settlements WHERE state = 'settled'") == 2


def test_the_account_never_goes_negative(service):
    t = terminal(service, PHARMACY)
    for i, total in enumerate([50000, 29999, 2, 10000, 1]):
        buy(t, ZHOU, total, f"N{i}")
    assert balance(service, ZHOU) == 0
    # the ledger's own rows: no negative balance, and what the sales took is exactly what was there
    assert one(service, "SELECT min(balc) FROM accounts") >= 0
    assert one(service, "SELECT sum(acct) FROM settlements WHERE psn_no = ?", ZHOU.psn_no) == ZHOU.balance
    assert rows(service, "SELECT count(*) FROM settlements WHERE fund + acct + cash != medfee OR acct < 0 "
                         "OR cash < 0 OR fund < 0") == [(0,)]
    # and the file refuses a negative balance whoever writes it
    conn = sqlite3.connect(service.ledger.path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE accounts SET balc = -1 WHERE psn_no = ?", [ZHOU.psn_no])
    finally:
        conn.close()


def test_2103_restores_exactly_and_only_once(service):
    t = terminal(service, PHARMACY)
    buy(t, ZHOU, 30000, "K1")
    _, setl = buy(t, ZHOU, 70000, "K2")
    assert shares(setl) == (70000, 0, 50000, 20000)
    assert balance(service, ZHOU) == 0
    # the wrong person cannot cancel it
    assert "psn_no" in t.refused("2103", cancel(ZHANG, setl["setl_id"]), region=ZHANG.region)
    out = t.ok("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)["setlinfo"]
    assert out["init_setl_id"] == setl["setl_id"] and out["setl_id"].startswith("CX")
    assert out["acct_pay"] == "500.00" and out["balc"] == "500.00"
    assert balance(service, ZHOU) == 50000
    assert "already cancelled" in t.refused("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)
    assert balance(service, ZHOU) == 50000
    assert rows(service, "SELECT state FROM settlements ORDER BY id") == [("settled",), ("cancelled",)]
    # a cancelled sale keeps its number (only a reversal frees it)
    assert "already settled" in t.refused("2102", sale(ZHOU, 100, "k2"), region=ZHOU.region)
    # another institution cannot cancel the pharmacy's settlements
    clinic = terminal(service, CLINIC)
    assert "no settlement" in clinic.refused("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)


def test_a_suspended_insurance_cannot_settle(service):
    t = terminal(service, PHARMACY)
    assert "suspended" in t.refused("2102", sale(ZHAO, 1000, "Z1"), region=ZHAO.region)
    assert "suspended" in t.refused("2101", sale(ZHAO, 1000, "Z1"), region=ZHAO.region)
    assert "not insured" in t.refused("2102", sale(SUN, 1000, "Z1"), region=SUN.region)
    assert balance(service, ZHAO) == ZHAO.balance
    assert rows(service, "SELECT * FROM settlements") == []


def test_the_insured_region_of_the_envelope_must_be_the_persons(service):
    t = terminal(service, PHARMACY)
    assert "insuplc_admdvs" in t.refused("2102", sale(ZHANG, 1000, "R1"), region="440300")
    assert balance(service, ZHANG) == ZHANG.balance


# === 4. outpatient and admission ===========================================================================

def test_registration_visit_information_and_fee_details(service):
    t = terminal(service, CLINIC)
    data = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]
    mdtrt_id = data["mdtrt_id"]
    assert mdtrt_id.startswith("MD20260301") and data["psn_no"] == ZHANG.psn_no
    diseinfo = [{"diag_type": "1", "diag_code": "J06.900", "diag_name": "急性上呼吸道感染"}]
    assert t.ok("2203", {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no, "med_type": "11"},
                         "diseinfo": diseinfo}, region=ZHANG.region) == {}
    stored_visit = rows(service, "SELECT psn_no, insutype, med_type, state, diseinfo FROM visits WHERE mdtrt_id = ?",
                        mdtrt_id)
    assert stored_visit[0][:4] == (ZHANG.psn_no, "310", "11", "open")
    assert json.loads(stored_visit[0][4]) == diseinfo
    # maternity care is not settled under 310
    assert "med_type 51" in t.refused("2203", {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no,
                                                             "med_type": "51"}}, region=ZHANG.region)
    result = t.ok("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 3000), ("2", 1250)), region=ZHANG.region)["result"]
    assert [(r["feedetl_sn"], r["det_item_fee_sumamt"]) for r in result] == [("1", "30.00"), ("2", "12.50")]
    reason = t.refused("2204", fees(ZHANG, mdtrt_id, "B1", ("3", 100), ("2", 1250)), region=ZHANG.region)
    assert "uploaded before" in reason
    # the refusal kept none of its lines (line 3 neither)
    assert rows(service, "SELECT feedetl_sn, amount FROM fees ORDER BY feedetl_sn") == [("1", 3000), ("2", 1250)]
    # fee details of another person's visit are refused
    assert "psn_no" in t.refused("2204", fees(WANG, mdtrt_id, "B1", ("9", 100)), region=WANG.region)


def test_2206_previews_and_2207_settles_with_the_deductible_carried_over(service):
    t = terminal(service, CLINIC)
    mdtrt_id = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]["mdtrt_id"]
    t.ok("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 40000), ("2", 20000)), region=ZHANG.region)
    preview = t.ok("2206", bill(ZHANG, mdtrt_id, "B1", 60000), region=ZHANG.region)["setlinfo"]
    # 600.00 yuan, all under the year's 1000.00 deductible: no fund, the account pays
    assert shares(preview) == (60000, 0, 60000, 0)
    assert balance(service, ZHANG) == ZHANG.balance and year_use(service, ZHANG) == (0, 0)
    assert rows(service, "SELECT * FROM settlements") == []
    setl = t.ok("2207", bill(ZHANG, mdtrt_id, "B1", 60000), region=ZHANG.region)["setlinfo"]
    assert shares(setl) == shares(preview)
    assert setl["clr_type"] == "11" and setl["mdtrt_id"] == mdtrt_id
    assert balance(service, ZHANG) == 175000 and year_use(service, ZHANG) == (60000, 0)
    # the next bill: 400.00 of deductible left, then 70 % of the rest (600.00) = 420.00 from the fund
    t.ok("2204", fees(ZHANG, mdtrt_id, "B2", ("3", 100000)), region=ZHANG.region)
    setl = t.ok("2207", bill(ZHANG, mdtrt_id, "B2", 100000), region=ZHANG.region)["setlinfo"]
    assert shares(setl) == (100000, 42000, 58000, 0)
    assert balance(service, ZHANG) == 117000 and year_use(service, ZHANG) == (100000, 42000)
    # the deductible used up: 70 % of 100.01 is 70.007, rounded down to 70.00; the account pays the rest
    t.ok("2204", fees(ZHANG, mdtrt_id, "B3", ("4", 10001)), region=ZHANG.region)
    setl = t.ok("2207", bill(ZHANG, mdtrt_id, "B3", 10001, acct="0"), region=ZHANG.region)["setlinfo"]
    assert shares(setl) == (10001, 7000, 0, 3001)
    assert year_use(service, ZHANG) == (100000, 49000)


def test_the_bill_must_equal_the_fee_details_of_its_charge_batch(service):
    t = terminal(service, CLINIC)
    mdtrt_id = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]["mdtrt_id"]
    t.ok("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 3000), ("2", 1250)), region=ZHANG.region)
    t.ok("2204", fees(ZHANG, mdtrt_id, "B2", ("3", 999)), region=ZHANG.region)
    assert "42.50" in t.refused("2207", bill(ZHANG, mdtrt_id, "B1", 4251), region=ZHANG.region)
    assert "0.00" in t.refused("2207", bill(ZHANG, mdtrt_id, "B9", 100), region=ZHANG.region)
    assert "42.50" in t.refused("2206", bill(ZHANG, mdtrt_id, "B1", 5249), region=ZHANG.region)
    assert rows(service, "SELECT * FROM settlements") == []
    setl = t.ok("2207", bill(ZHANG, mdtrt_id, "B1", 4250), region=ZHANG.region)["setlinfo"]
    assert shares(setl)[0] == 4250
    # a settled charge batch takes no more details
    assert "already settled" in t.refused("2204", fees(ZHANG, mdtrt_id, "B1", ("4", 10)), region=ZHANG.region)


def test_cross_region_care_is_paid_at_the_cross_region_ratio_up_to_the_cap(service):
    t = terminal(service, CLINIC)
    # 黄丽, insured in Shanghai (310101), treated in Wenzhou: the deductible 1000.00, then 60 %
    _, setl = settle_visit(t, HUANG, "H1", 200000)
    assert shares(setl) == (200000, 60000, 140000, 0)
    assert year_use(service, HUANG) == (100000, 60000)
    assert balance(service, HUANG) == 60000
    # a large bill meets the year's cap (10000.00 yuan): 60 % of 20000.00 = 12000.00, capped at 9400.00 left
    _, setl = settle_visit(t, HUANG, "H2", 2000000)
    assert shares(setl) == (2000000, 940000, 60000, 1000000)
    assert year_use(service, HUANG) == (100000, 1000000)
    assert balance(service, HUANG) == 0
    # the fund has nothing left this year
    _, setl = settle_visit(t, HUANG, "H3", 5000)
    assert shares(setl) == (5000, 0, 0, 5000)


def test_the_insured_regions_own_rule_applies_across_regions(service):
    t = terminal(service, CLINIC)
    # 陈静, insured in Shenzhen (440300): no deductible there, 50 % across regions
    _, setl = settle_visit(t, CHEN, "C1", 10001)
    assert shares(setl) == (10001, 5000, 5001, 0)
    assert year_use(service, CHEN) == (0, 5000)
    # a resident of Urumqi (390, deductible 200.00, 45 % across regions, no account)
    _, setl = settle_visit(t, AYI, "A1", 30000, insutype="390")
    assert shares(setl) == (30000, 4500, 0, 25500)


def test_the_same_person_at_home_gets_the_home_ratio(service):
    t = terminal(service, CLINIC)
    _, setl = settle_visit(t, WANG, "W1", 200000)
    assert shares(setl) == (200000, 70000, 120000, 10000)  # deductible 1000.00, 70 %, account 1200.00
    beijing = terminal(service, BEIJING)
    _, setl = settle_visit(beijing, WANG, "W2", 10000)
    assert shares(setl) == (10000, 6000, 0, 4000)  # in Beijing: 60 %; the account is empty


def test_2208_restores_exactly_and_a_later_settlement_splits_as_if_it_never_happened(service):
    t = terminal(service, CLINIC)
    settle_visit(t, ZHANG, "B1", 60000)
    assert balance(service, ZHANG) == 175000 and year_use(service, ZHANG) == (60000, 0)
    mdtrt_id, setl = settle_visit(t, ZHANG, "B2", 100000)
    assert shares(setl) == (100000, 42000, 58000, 0)
    assert year_use(service, ZHANG) == (100000, 42000)
    out = t.ok("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)["setlinfo"]
    assert out["init_setl_id"] == setl["setl_id"] and out["balc"] == "1750.00"
    assert balance(service, ZHANG) == 175000 and year_use(service, ZHANG) == (60000, 0)
    assert "already cancelled" in t.refused("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)
    assert balance(service, ZHANG) == 175000 and year_use(service, ZHANG) == (60000, 0)
    # the same bill again: the same split as the one cancelled
    _, again = settle_visit(t, ZHANG, "B3", 100000)
    assert shares(again) == (100000, 42000, 58000, 0)
    assert year_use(service, ZHANG) == (100000, 42000)
    # a pharmacy settlement is not cancelled by 2208, nor an outpatient one by 2103
    pharmacy_setl = buy(t, ZHANG, 100, "P1")[1]
    assert "not a outpatient settlement" in t.refused("2208", cancel(ZHANG, pharmacy_setl["setl_id"]),
                                                      region=ZHANG.region)
    assert "not a pharmacy settlement" in t.refused("2103", cancel(ZHANG, again["setl_id"]), region=ZHANG.region)


def test_2202_cancels_a_visit_without_settlement_and_is_refused_while_one_stands(service):
    t = terminal(service, CLINIC)
    mdtrt_id, setl = settle_visit(t, ZHANG, "B1", 5000)
    assert "has a settlement" in t.refused("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no}},
                                           region=ZHANG.region)
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "open"
    t.ok("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)
    out = t.ok("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no}}, region=ZHANG.region)
    assert out["data"]["mdtrt_id"] == mdtrt_id
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "cancelled"
    assert "already cancelled" in t.refused("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no}},
                                            region=ZHANG.region)
    # a cancelled visit takes no fee details and no settlement
    assert "cancelled" in t.refused("2204", fees(ZHANG, mdtrt_id, "B2", ("9", 100)), region=ZHANG.region)
    # a fresh visit with no settlement at all is cancelled at once
    other = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]["mdtrt_id"]
    t.ok("2202", {"data": {"mdtrt_id": other, "psn_no": ZHANG.psn_no}}, region=ZHANG.region)


def test_2401_admission_and_2404_its_cancellation(service):
    t = terminal(service, CLINIC)
    result = t.ok("2401", {"mdtrtinfo": {"psn_no": ZHANG.psn_no, "insutype": "310", "med_type": "21",
                                         "adm_time": "2026-03-01 10:00:00", "adm_dept_name": "外科",
                                         "ipt_no": "ZY0001"}}, region=ZHANG.region)["result"]
    assert result["ipt_otp_no"] == "ZY0001"
    visit = rows(service, "SELECT infno, med_type, begntime, dept_name, state FROM visits WHERE mdtrt_id = ?",
                 result["mdtrt_id"])
    assert visit == [("2401", "21", "2026-03-01 10:00:00", "外科", "open")]
    outpatient = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]["mdtrt_id"]
    assert "not a hospital admission" in t.refused("2404", {"data": {"mdtrt_id": outpatient, "psn_no": ZHANG.psn_no}},
                                                   region=ZHANG.region)
    assert "not a outpatient registration" in t.refused(
        "2202", {"data": {"mdtrt_id": result["mdtrt_id"], "psn_no": ZHANG.psn_no}}, region=ZHANG.region)
    t.ok("2404", {"data": {"mdtrt_id": result["mdtrt_id"], "psn_no": ZHANG.psn_no}}, region=ZHANG.region)
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", result["mdtrt_id"]) == "cancelled"
    # an inpatient settlement clears as 21
    mdtrt_id = t.ok("2401", {"mdtrtinfo": {"psn_no": ZHANG.psn_no, "insutype": "310"}},
                    region=ZHANG.region)["result"]["mdtrt_id"]
    t.ok("2204", fees(ZHANG, mdtrt_id, "I1", ("1", 1000)), region=ZHANG.region)
    assert t.ok("2207", bill(ZHANG, mdtrt_id, "I1", 1000), region=ZHANG.region)["setlinfo"]["clr_type"] == "21"


def test_maternity_care_is_paid_by_the_fund_under_510_only(service):
    t = terminal(service, CLINIC)
    _, setl = settle_visit(t, LI, "M1", 123456, insutype="510", med_type="51")
    assert shares(setl) == (123456, 123456, 0, 0)
    assert setl["med_type"] == "51" and setl["insutype"] == "510"
    assert year_use(service, LI, "510") == (0, 123456)
    # 张伟 has no maternity insurance
    assert "not insured under insutype 510" in t.refused("2201", register(ZHANG, "510", "51"), region=ZHANG.region)
    # maternity care is not an employee outpatient visit
    assert "med_type 51" in t.refused("2201", register(LI, "310", "51"), region=LI.region)
    assert one(service, "SELECT count(*) FROM visits") == 1


# === 5. reversal (2601) ==============================================================================

def test_reversal_of_a_pharmacy_settlement(service):
    t = terminal(service, PHARMACY)
    msgid, setl = buy(t, ZHANG, 4321, "RV1")
    assert balance(service, ZHANG) == ZHANG.balance - 4321
    out = t.ok("2601", reversal(ZHANG, msgid, "2102"), region=ZHANG.region)
    assert out == {"omsgid": msgid, "oinfno": "2102", "rvs_rslt": "reversed"}
    assert balance(service, ZHANG) == ZHANG.balance
    assert one(service, "SELECT state FROM settlements WHERE setl_id = ?", setl["setl_id"]) == "reversed"
    # the sale number is free again
    buy(t, ZHANG, 4321, "rv1 ")
    assert balance(service, ZHANG) == ZHANG.balance - 4321


def test_reversal_of_a_cancellation_settles_again(service):
    t = terminal(service, PHARMACY)
    _, setl = buy(t, ZHOU, 90000, "RV2")
    assert balance(service, ZHOU) == 0
    message = t.message("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)
    assert t.send(message)["infcode"] == 0
    assert balance(service, ZHOU) == ZHOU.balance
    out = t.ok("2601", reversal(ZHOU, message["msgid"], "2103"), region=ZHOU.region)
    assert out["rvs_rslt"] == "reversed"
    assert one(service, "SELECT state FROM settlements WHERE setl_id = ?", setl["setl_id"]) == "settled"
    assert balance(service, ZHOU) == 0
    # the settlement can be cancelled again, once
    assert t.ok("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)["setlinfo"]["balc"] == "800.00"


def test_reversal_of_an_outpatient_cancellation_takes_the_years_use_again(service):
    t = terminal(service, CLINIC)
    mdtrt_id, setl = settle_visit(t, ZHANG, "B1", 150000)
    assert shares(setl) == (150000, 35000, 115000, 0)
    message = t.message("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)
    assert t.send(message)["infcode"] == 0
    assert year_use(service, ZHANG) == (0, 0) and balance(service, ZHANG) == ZHANG.balance
    assert t.ok("2601", reversal(ZHANG, message["msgid"], "2208"), region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert year_use(service, ZHANG) == (100000, 35000)
    assert balance(service, ZHANG) == ZHANG.balance - 115000


def test_reversing_a_visit_cancellation_does_not_reopen_a_visit_whose_registration_was_reversed(service):
    t = terminal(service, CLINIC)
    registration = t.message("2201", register(ZHANG), region=ZHANG.region)
    mdtrt_id = t.send(registration)["output"]["data"]["mdtrt_id"]
    cancellation = t.message("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no}}, region=ZHANG.region)
    assert t.send(cancellation)["infcode"] == 0
    assert t.ok("2601", reversal(ZHANG, registration["msgid"], "2201"), region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert "reversed" in t.refused("2601", reversal(ZHANG, cancellation["msgid"], "2202"), region=ZHANG.region)
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "reversed"
    assert "reversed" in t.refused("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 100)), region=ZHANG.region)


def test_reversing_a_settlement_cancellation_needs_the_visit_open(service):
    """A settlement stands only on an open visit: once the visit is cancelled (2202), the 2208 that let
    it be cancelled is reversed only after the 2202 is."""
    t = terminal(service, CLINIC)
    mdtrt_id, setl = settle_visit(t, ZHANG, "B1", 5000)
    settlement_cancellation = t.message("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)
    assert t.send(settlement_cancellation)["infcode"] == 0
    visit_cancellation = t.message("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": ZHANG.psn_no}},
                                   region=ZHANG.region)
    assert t.send(visit_cancellation)["infcode"] == 0
    reason = t.refused("2601", reversal(ZHANG, settlement_cancellation["msgid"], "2208"), region=ZHANG.region)
    assert "cancelled" in reason
    assert rows(service, "SELECT state FROM settlements") == [("cancelled",)]
    assert balance(service, ZHANG) == ZHANG.balance and year_use(service, ZHANG) == (0, 0)
    # undone in the reverse order, both go through
    assert t.ok("2601", reversal(ZHANG, visit_cancellation["msgid"], "2202"), region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "open"
    assert t.ok("2601", reversal(ZHANG, settlement_cancellation["msgid"], "2208"),
                region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert rows(service, "SELECT state FROM settlements") == [("settled",)]
    assert balance(service, ZHANG) == ZHANG.balance - 5000 and year_use(service, ZHANG) == (5000, 0)


def test_reversal_of_a_registration(service):
    t = terminal(service, CLINIC)
    message = t.message("2201", register(ZHANG), region=ZHANG.region)
    mdtrt_id = t.send(message)["output"]["data"]["mdtrt_id"]
    assert t.ok("2601", reversal(ZHANG, message["msgid"], "2201"), region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "reversed"
    assert "reversed" in t.refused("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 100)), region=ZHANG.region)


def test_a_visit_with_a_settlement_is_not_reversed(service):
    t = terminal(service, CLINIC)
    message = t.message("2201", register(ZHANG), region=ZHANG.region)
    mdtrt_id = t.send(message)["output"]["data"]["mdtrt_id"]
    t.ok("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 100)), region=ZHANG.region)
    t.ok("2207", bill(ZHANG, mdtrt_id, "B1", 100), region=ZHANG.region)
    assert "has a settlement" in t.refused("2601", reversal(ZHANG, message["msgid"], "2201"), region=ZHANG.region)
    assert one(service, "SELECT state FROM visits WHERE mdtrt_id = ?", mdtrt_id) == "open"
    assert one(service, "SELECT reversed_by FROM messages WHERE msgid = ?", message["msgid"]) is None


def test_reversal_of_an_account_transfer(service):
    bank = terminal(service, BANK)
    message = bank.message("SS02", transfer(LI), region=LI.region)
    assert bank.send(message)["infcode"] == 0
    assert balance(service, LI) == LI_OLD_BALANCE
    out = bank.ok("2601", reversal(LI, message["msgid"], "SS02"), region=LI.region)
    assert out["rvs_rslt"] == "reversed"
    assert balance(service, LI) == 0
    assert rows(service, "SELECT moved_msgid FROM old_cards WHERE card_no = ?", LI_OLD) == [(None,)]
    # not moved after all: a new transfer moves it (once)
    assert bank.ok("SS02", transfer(LI), region=LI.region)["data"]["balc"] == "1286.50"
    assert "already moved" in bank.refused("SS02", transfer(LI), region=LI.region)
    assert balance(service, LI) == LI_OLD_BALANCE


def test_a_reversal_that_would_take_money_already_spent_is_refused(service):
    """Undoing a 2103 or an SS02 takes money back from the account: never more than it holds."""
    pharmacy = terminal(service, PHARMACY)
    _, setl = buy(pharmacy, ZHOU, 90000, "SP1")
    refund = pharmacy.message("2103", cancel(ZHOU, setl["setl_id"]), region=ZHOU.region)
    assert pharmacy.send(refund)["infcode"] == 0
    buy(pharmacy, ZHOU, 30000, "SP2")  # the refunded 800.00 partly spent again
    assert balance(service, ZHOU) == 50000
    reason = pharmacy.refused("2601", reversal(ZHOU, refund["msgid"], "2103"), region=ZHOU.region)
    assert "500.00" in reason and "800.00" in reason
    assert balance(service, ZHOU) == 50000
    assert one(service, "SELECT state FROM settlements WHERE setl_id = ?", setl["setl_id"]) == "cancelled"
    bank = terminal(service, BANK)
    move = bank.message("SS02", transfer(LI), region=LI.region)
    assert bank.send(move)["infcode"] == 0
    buy(pharmacy, LI, 100, "SP3")
    assert "less than 1286.50" in bank.refused("2601", reversal(LI, move["msgid"], "SS02"), region=LI.region)
    assert balance(service, LI) == LI_OLD_BALANCE - 100
    assert one(service, "SELECT min(balc) FROM accounts") >= 0


def test_reversal_of_a_message_never_seen_refuses_it_for_ever(service):
    t = terminal(service, PHARMACY)
    late = t.message("2102", sale(ZHANG, 5000, "LATE"), region=ZHANG.region)
    out = t.ok("2601", reversal(ZHANG, late["msgid"], "2102"), region=ZHANG.region)
    assert out["rvs_rslt"] == "nothing_to_undo"
    response = t.send(late)
    assert response["infcode"] == -1 and "reversed" in response["err_msg"]
    assert balance(service, ZHANG) == ZHANG.balance
    assert rows(service, "SELECT * FROM settlements") == []
    # it stays refused
    assert t.send(late)["infcode"] == -1
    assert balance(service, ZHANG) == ZHANG.balance
    # the sale number was never used
    buy(t, ZHANG, 5000, "LATE")


def test_reversal_of_a_refused_message_refuses_it_for_ever(service):
    t = terminal(service, PHARMACY)
    refused = t.message("2102", sale(ZHANG, 5000, "RF1", drugs=[1]), region=ZHANG.region)
    assert t.send(refused)["infcode"] == -1
    assert t.ok("2601", reversal(ZHANG, refused["msgid"], "2102"), region=ZHANG.region)["rvs_rslt"] == "nothing_to_undo"
    refused["input"]["drugdetail"][0]["det_item_fee_sumamt"] = "50.00"  # mended: still not executed
    assert t.send(refused)["infcode"] == -1
    assert balance(service, ZHANG) == ZHANG.balance


def test_a_second_reversal_says_already_reversed_and_the_repeat_of_a_reversed_message_is_refused(service):
    t = terminal(service, PHARMACY)
    message = t.message("2102", sale(ZHANG, 1000, "TW1"), region=ZHANG.region)
    assert t.send(message)["infcode"] == 0
    first = t.message("2601", reversal(ZHANG, message["msgid"], "2102"), region=ZHANG.region)
    assert t.send(first)["output"]["rvs_rslt"] == "reversed"
    out = t.ok("2601", reversal(ZHANG, message["msgid"], "2102"), region=ZHANG.region)
    assert out["rvs_rslt"] == "already_reversed" and out["rvs_msgid"] == first["msgid"]
    assert balance(service, ZHANG) == ZHANG.balance  # given back once, not twice
    # the original sent again (its answer was lost, say): refused, not settled again
    message["sign_no"] = t.sign_in()
    response = t.send(message)
    assert response["infcode"] == -1 and first["msgid"] in response["err_msg"]
    assert balance(service, ZHANG) == ZHANG.balance
    assert one(service, "SELECT count(*) FROM settlements WHERE state = 'settled'") == 0


def test_a_reversal_naming_the_wrong_transaction_or_person_is_refused(service):
    t = terminal(service, PHARMACY)
    msgid, setl = buy(t, ZHANG, 1000, "WR1")
    assert "is a 2102, not a 2207" in t.refused("2601", reversal(ZHANG, msgid, "2207"), region=ZHANG.region)
    assert "psn_no" in t.refused("2601", reversal(WANG, msgid, "2102"), region=WANG.region)
    assert "cannot be reversed" in t.refused("2601", reversal(ZHANG, msgid, "1101"), region=ZHANG.region)
    # another institution's msgid is not this one's to reverse
    clinic = terminal(service, CLINIC)
    assert "not a msgid of this institution" in clinic.refused("2601", reversal(ZHANG, msgid, "2102"),
                                                               region=ZHANG.region)
    assert balance(service, ZHANG) == ZHANG.balance - 1000
    assert one(service, "SELECT state FROM settlements WHERE setl_id = ?", setl["setl_id"]) == "settled"
    assert one(service, "SELECT reversed_by FROM messages WHERE msgid = ?", msgid) is None
    # and the settlement is still reversible by the right reversal
    assert t.ok("2601", reversal(ZHANG, msgid, "2102"), region=ZHANG.region)["rvs_rslt"] == "reversed"
    assert balance(service, ZHANG) == ZHANG.balance


# === 6. dedupe ===========================================================================================

def test_the_repeat_of_an_accepted_message_gets_the_first_answer_and_does_nothing_twice(service):
    t = terminal(service, PHARMACY)
    message = t.message("2102", sale(ZHANG, 2350, "D1"), region=ZHANG.region)
    first = t.send(message)
    assert first["infcode"] == 0
    message["sign_no"] = t.sign_in()  # a later session
    second = t.send(message)
    assert second == first
    assert balance(service, ZHANG) == ZHANG.balance - 2350
    assert one(service, "SELECT count(*) FROM settlements") == 1
    assert service.ledger.repeats == 1
    assert httpx.get(f"{service.url}/_stats").json()["repeats"] == 1


def test_other_content_under_an_accepted_msgid_is_refused(service):
    t = terminal(service, PHARMACY)
    message = t.message("2102", sale(ZHANG, 2350, "D1"), region=ZHANG.region)
    assert t.send(message)["infcode"] == 0
    changed = dict(message, input=sale(ZHANG, 9999, "D2"))
    response = t.send(changed)
    assert response["infcode"] == MSGID_TAKEN and "different message" in response["err_msg"]
    assert balance(service, ZHANG) == ZHANG.balance - 2350
    assert service.ledger.message(message["msgid"])["input"]["data"]["chrg_bchno"] == "D1"
    assert one(service, "SELECT infcode FROM messages WHERE msgid = ?", message["msgid"]) == 0


def test_a_refused_message_is_judged_again_when_it_comes_back(service):
    t = terminal(service, CLINIC)
    mdtrt_id = t.ok("2201", register(ZHANG), region=ZHANG.region)["data"]["mdtrt_id"]
    settlement = t.message("2207", bill(ZHANG, mdtrt_id, "B1", 3000), region=ZHANG.region)
    assert t.send(settlement)["infcode"] == -1  # no fee details yet
    assert one(service, "SELECT infcode FROM messages WHERE msgid = ?", settlement["msgid"]) == -1
    t.ok("2204", fees(ZHANG, mdtrt_id, "B1", ("1", 3000)), region=ZHANG.region)
    response = t.send(settlement)
    assert response["infcode"] == 0
    assert shares(response["output"]["setlinfo"]) == (3000, 0, 3000, 0)
    assert balance(service, ZHANG) == ZHANG.balance - 3000
    # now it is final: its repeat gets that answer
    assert t.send(settlement) == response
    assert balance(service, ZHANG) == ZHANG.balance - 3000
    # and a refused msgid may carry other content when it comes back
    other = t.message("1101", {"data": card(ZHANG, card_sn=LI.card_sn)})
    assert t.send(other)["infcode"] == -1
    assert t.send(dict(other, input={"data": card(ZHANG)}))["infcode"] == 0


# === 7. the agency's records: SS01 activation, SS02 the old card's account ====================================

def test_ss01_activates_the_card(service):
    bank = terminal(service, BANK)
    assert one(service, "SELECT activated FROM cards WHERE card_no = ?", LI.card) == 0
    out = bank.ok("SS01", {"data": {"psn_no": LI.psn_no, **card(LI)}}, region=LI.region)["data"]
    assert out == {"psn_no": LI.psn_no, "card_no": LI.card, "actv_stas": "1", "already_active": False}
    assert one(service, "SELECT activated FROM cards WHERE card_no = ?", LI.card) == 1
    out = bank.ok("SS01", {"data": card(LI)}, region=LI.region)["data"]  # by the card alone
    assert out["already_active"] is True


def test_ss01_checks_the_card(service):
    bank = terminal(service, BANK)
    assert "card identification code" in bank.refused("SS01", {"data": card(LI, card_sn=ZHOU.card_sn)},
                                                      region=LI.region)
    assert "not this person's" in bank.refused("SS01", {"data": {"psn_no": ZHANG.psn_no, **card(LI)}},
                                               region=LI.region)
    assert "reported lost" in bank.refused("SS01", {"data": {"psn_no": ZHOU.psn_no, "mdtrt_cert_type": "03",
                                                             "mdtrt_cert_no": LOST_CARD, "card_sn": LOST_SN}},
                                           region=ZHOU.region)
    assert one(service, "SELECT activated FROM cards WHERE card_no = ?", LI.card) == 0


def test_ss02_moves_the_old_cards_account_once_ever(service):
    bank = terminal(service, BANK)
    out = bank.ok("SS02", transfer(LI), region=LI.region)["data"]
    assert out == {"psn_no": LI.psn_no, "old_card_no": LI_OLD, "acct_balc": "1286.50", "balc": "1286.50"}
    assert balance(service, LI) == LI_OLD_BALANCE
    assert one(service, "SELECT activated FROM cards WHERE card_no = ?", LI.card) == 1
    assert "already moved" in bank.refused("SS02", transfer(LI), region=LI.region)
    # another institution cannot move it again either
    pharmacy = terminal(service, PHARMACY)
    assert "already moved" in pharmacy.refused("SS02", transfer(LI), region=LI.region)
    assert balance(service, LI) == LI_OLD_BALANCE
    # 王芳's old card was moved before the platform's records began
    assert "already moved" in bank.refused("SS02", transfer(WANG, WANG_OLD, 0), region=WANG.region)
    assert balance(service, WANG) == WANG.balance


def test_ss02_refuses_a_wrong_balance_another_persons_old_card_and_a_wrong_card_pair(service):
    bank = terminal(service, BANK)
    assert "1286.50" in bank.refused("SS02", transfer(LI, amount=LI_OLD_BALANCE - 1), region=LI.region)
    assert "another person" in bank.refused("SS02", transfer(LI, ZHANG_OLD, 53620), region=LI.region)
    assert "no old medical insurance card" in bank.refused("SS02", transfer(LI, "YB330300999999", 0), region=LI.region)
    assert "card identification code" in bank.refused("SS02", transfer(LI, card_sn=ZHANG.card_sn), region=LI.region)
    assert balance(service, LI) == 0 and balance(service, ZHANG) == ZHANG.balance
    assert rows(service, "SELECT card_no FROM old_cards WHERE moved_msgid IS NOT NULL") == [(WANG_OLD,)]
    assert one(service, "SELECT activated FROM cards WHERE card_no = ?", LI.card) == 0


# === 8. day-end totals (3201) ==========================================================================

def totals(medfee: int, fund: int, acct: int, count: int, clr: str = "41") -> dict[str, Any]:
    return {"data": {"insutype": "310", "clr_type": clr, "stmt_begndate": "2026-03-01", "stmt_enddate": "2026-03-01",
                     "medfee_sumamt": Fen(medfee), "fund_pay_sumamt": Fen(fund), "acct_pay": Fen(acct),
                     "fixmedins_setl_cnt": count}}


def test_3201_counts_only_settlements_standing(service):
    t = terminal(service, PHARMACY)
    kept_msgid, kept = buy(t, ZHANG, 1000, "S1")
    _, cancelled = buy(t, ZHANG, 2000, "S2")
    t.ok("2103", cancel(ZHANG, cancelled["setl_id"]), region=ZHANG.region)
    reversed_msgid, _ = buy(t, ZHANG, 4000, "S3")
    t.ok("2601", reversal(ZHANG, reversed_msgid, "2102"), region=ZHANG.region)
    buy(t, ZHOU, 90000, "S4")  # 800.00 from the account, 100.00 in cash
    out = t.ok("3201", totals(91000, 0, 81000, 2))
    assert out["stmt_rslt"] == "0" and "setl_list" not in out
    assert out["totals"] == {"medfee_sumamt": "910.00", "fund_pay_sumamt": "0.00", "acct_pay": "810.00",
                             "fixmedins_setl_cnt": 2}
    # the terminal still counts the cancelled sale: a difference, with the platform's list
    out = t.ok("3201", totals(93000, 0, 83000, 3))
    assert out["stmt_rslt"] == "1"
    assert "medfee_sumamt" in out["stmt_rslt_dscr"] and "fixmedins_setl_cnt" in out["stmt_rslt_dscr"]
    assert [s["chrg_bchno"] for s in out["setl_list"]] == ["S1", "S4"]
    assert out["setl_list"][0]["setl_id"] == kept["setl_id"] and out["setl_list"][0]["msgid"] == kept_msgid
    assert out["setl_list"][1]["psn_cash_pay"] == "100.00"
    # another clearing type, another day, another institution: none of these
    assert t.ok("3201", totals(0, 0, 0, 0, clr="11"))["stmt_rslt"] == "0"
    clinic = terminal(service, CLINIC)
    assert clinic.ok("3201", totals(0, 0, 0, 0))["stmt_rslt"] == "0"


def test_3201_of_outpatient_settlements(service):
    t = terminal(service, CLINIC)
    settle_visit(t, ZHANG, "B1", 150000)  # fund 350.00, account 1150.00
    mdtrt_id, setl = settle_visit(t, ZHANG, "B2", 5000)
    t.ok("2208", cancel(ZHANG, setl["setl_id"], mdtrt_id), region=ZHANG.region)
    assert t.ok("3201", totals(150000, 35000, 115000, 1, clr="11"))["stmt_rslt"] == "0"
    out = t.ok("3201", totals(150000, 35001, 115000, 1, clr="11"))
    assert out["stmt_rslt"] == "1" and out["stmt_rslt_dscr"].endswith("fund_pay_sumamt")
    assert len(out["setl_list"]) == 1
    assert "count" in t.refused("3201", totals(0, 0, 0, -1, clr="11"))


# === 9. batch upload ====================================================================================

def test_a_batch_takes_queueable_records_and_refuses_online_calls_per_item(service):
    desk = terminal(service, CLINIC)
    settlement = desk.message("2102", sale(ZHANG, 1000, "BT1"), region=ZHANG.region)
    registration = desk.message("2201", {"data": {**card(ZHANG), "insutype": "310", "med_type": "11"}},
                                region=ZHANG.region)
    activation = desk.message("SS01", {"data": card(LI)}, region=LI.region)
    reply = desk.post("/api/batch", {"messages": [settlement, registration, activation]})
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert [r["msgid"] for r in results] == [settlement["msgid"], registration["msgid"], activation["msgid"]]
    assert results[0]["infcode"] == -1 and "online call" in results[0]["err_msg"]
    assert results[1]["infcode"] == 0 and results[1]["output"]["data"]["psn_no"] == ZHANG.psn_no
    assert results[2]["infcode"] == 0 and results[2]["output"]["data"]["actv_stas"] == "1"
    assert balance(service, ZHANG) == ZHANG.balance
    assert rows(service, "SELECT * FROM settlements") == []
    assert rows(service, "SELECT psn_no, state FROM visits") == [(ZHANG.psn_no, "open")]
    # the same settlement as an online call is fine
    assert desk.send(settlement)["infcode"] == 0
    assert balance(service, ZHANG) == ZHANG.balance - 1000


def test_a_batch_with_a_message_not_signed_in_is_processed_not_at_all(service):
    desk = terminal(service, CLINIC)
    good = desk.message("2201", register(ZHANG), region=ZHANG.region)
    bad = desk.message("2201", register(WANG), region=WANG.region, sign_no="S-unknown")
    assert desk.post("/api/batch", {"messages": [good, bad]}).status_code == 401
    nameless = desk.message("2201", register(WANG), region=WANG.region)
    del nameless["msgid"]
    assert desk.post("/api/batch", {"messages": [good, nameless]}).status_code == 422
    assert not stored(service, good["msgid"])
    assert rows(service, "SELECT * FROM visits") == []


# === 10. fault switches ==================================================================================

def test_the_fault_switches_are_off_unless_the_service_was_started_with_them(service):
    t = Terminal(service, CLINIC)
    reply = t.post("/_control", {"mode": "fail"})
    assert reply.status_code == 404
    with pytest.raises(PermissionError):
        service.set_fault("fail")
    assert terminal(service, CLINIC).call("1101", {"data": card(ZHANG)})["infcode"] == 0


def test_a_fault_aimed_at_one_transaction_hits_only_that_one(faulty):
    t = terminal(faulty, PHARMACY)
    faulty.set_fault("drop", count=1, infno="2102")
    assert t.ok("2101", sale(ZHANG, 1000, "F1"), region=ZHANG.region)["setlinfo"]["acct_pay"] == "10.00"
    assert t.ok("1101", {"data": card(ZHANG)})["baseinfo"]["psn_no"] == ZHANG.psn_no
    message = t.message("2102", sale(ZHANG, 1000, "F1"), region=ZHANG.region)
    with pytest.raises(httpx.HTTPError):
        t.send(message)
    # the answer was lost, the work done: the retry gets the answer, nothing twice
    assert balance(faulty, ZHANG) == ZHANG.balance - 1000
    assert t.send(message)["infcode"] == 0
    assert balance(faulty, ZHANG) == ZHANG.balance - 1000
    assert faulty.faulty_requests == 1
    # over HTTP, signed: fail the next 2101 only
    assert t.post("/_control", {"mode": "fail", "count": 1, "infno": "2101"}).json() == {"mode": "fail"}
    assert t.call("1101", {"data": card(ZHANG)})["infcode"] == 0
    preview = t.message("2101", sale(ZHANG, 500, "F2"), region=ZHANG.region)
    assert t.post("/api/call", preview).status_code == 503
    assert t.post("/api/call", preview).status_code == 200
    # the control request is signed like any other
    assert post(faulty, "/_control", {"mode": "fail"}, None).status_code == 403
    assert t.post("/_control", {"mode": "explode"}).status_code == 400
    assert t.call("1101", {"data": card(ZHANG)})["infcode"] == 0


# === 11. sscard central show ===============================================================================

def show(db: Path) -> Any:
    from sscard.terminal.cli import main

    return CliRunner().invoke(main, ["central", "show", "--db", str(db), "--json"])


def test_central_show_prints_messages_settlements_and_accounts(tmp_path):
    db = tmp_path / "ledger.sqlite"
    with CentralService(db, clock=Clock(TODAY)) as running:
        t = terminal(running, PHARMACY)
        msgid, setl = buy(t, ZHOU, 90000, "SH1")
        _, cancelled = buy(t, ZHANG, 100, "SH2")
        t.ok("2103", cancel(ZHANG, cancelled["setl_id"]), region=ZHANG.region)
        refused = t.message("2102", sale(ZHAO, 100, "SH3"), region=ZHAO.region)
        assert t.send(refused)["infcode"] == -1
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    result = show(db)
    assert result.exit_code == 0, result.output
    held = json.loads(result.stdout)
    messages = {m["msgid"]: m for m in held["messages"]}
    assert messages[msgid]["infno"] == "2102" and messages[msgid]["infcode"] == 0
    assert messages[msgid]["transaction"] == "pharmacy settlement"
    assert messages[refused["msgid"]]["infcode"] == -1
    assert len(held["messages"]) == 5  # 9001 and four messages
    by_sale = {s["chrg_bchno"]: s for s in held["settlements"]}
    assert by_sale["SH1"]["setl_id"] == setl["setl_id"] and by_sale["SH1"]["state"] == "settled"
    assert (by_sale["SH1"]["medfee_sumamt"], by_sale["SH1"]["acct_pay"], by_sale["SH1"]["psn_cash_pay"],
            by_sale["SH1"]["fund_pay_sumamt"]) == ("900.00", "800.00", "100.00", "0.00")
    assert by_sale["SH1"]["acct_pay_fen"] == 80000
    assert by_sale["SH2"]["state"] == "cancelled" and by_sale["SH2"]["cancel_id"].startswith("CX")
    accounts = {a["psn_no"]: a for a in held["accounts"]}
    assert accounts[ZHOU.psn_no]["balc"] == "0.00" and accounts[ZHOU.psn_no]["psn_name"] == "周敏"
    assert accounts[ZHANG.psn_no]["balc_fen"] == ZHANG.balance
    assert "token" not in result.stdout and ZHANG.certno not in result.stdout
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("content", [b"this is not a ledger, just text\n" * 10, b""])
def test_central_show_on_a_file_that_is_not_a_ledger_exits_14_and_leaves_it_alone(tmp_path, content):
    db = tmp_path / "notes.sqlite"
    db.write_bytes(content)
    result = show(db)
    assert result.exit_code == 14, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert db.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


def test_central_show_on_another_sqlite_database_exits_14_and_leaves_it_alone(tmp_path):
    db = tmp_path / "other.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE things (x)")
    conn.execute("INSERT INTO things VALUES (1)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    result = show(db)
    assert result.exit_code == 14, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert db.read_bytes() == before
    conn = sqlite3.connect(db)
    try:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["things"]
    finally:
        conn.close()


def test_central_show_of_a_missing_file_exits_14_and_creates_nothing(tmp_path):
    result = show(tmp_path / "nothing.sqlite")
    assert result.exit_code == 14
    assert list(tmp_path.iterdir()) == []


def test_the_ledger_keeps_every_answer_across_a_restart(tmp_path):
    """What the platform said survives it: a ledger opened again on the file answers a repeat with the
    first answer and moves nothing again; it is not seeded twice."""
    db = tmp_path / "ledger.sqlite"
    with CentralService(db, clock=Clock(TODAY)) as running:
        t = terminal(running, PHARMACY)
        message = t.message("2102", sale(ZHOU, 90000, "RS1"), region=ZHOU.region)
        first = t.send(message)
        assert first["infcode"] == 0
    ledger = Ledger(db, clock=Clock(TODAY))
    try:
        assert ledger.balance(ZHOU.psn_no) == 0
        assert ledger.process(PHARMACY.fixmedins_code, [message]) == [first]
        assert ledger.repeats == 1 and ledger.balance(ZHOU.psn_no) == 0
        assert ledger.conn.execute("SELECT count(*) FROM institutions").fetchone()[0] == 5
        # the pharmacy's sign_no is not the clinic's
        with pytest.raises(Unsigned):
            ledger.process(CLINIC.fixmedins_code, [message])
        with pytest.raises(Unanswerable):
            ledger.process(PHARMACY.fixmedins_code, [{"infno": "1101"}])
        assert ledger.count() == 2  # the 9001 and the 2102
    finally:
        ledger.close()


# === 12. the policy ==========================================================================================

EMPLOYEE = policy.rule("330300", "310")
RESIDENT = policy.rule("330300", "390")
MATERNITY = policy.rule("330300", "510")


def split(total: int, rule: policy.Rule = EMPLOYEE, *, med_type: str = "11", cross_region: bool = False,
          deductible_used: int = 0, fund_used: int = 0, balance: int = 0, use_account: bool = True) -> policy.Split:
    return policy.split(total, rule=rule, med_type=med_type, cross_region=cross_region,
                        deductible_used=deductible_used, fund_used=fund_used, balance=balance,
                        use_account=use_account)


def test_policy_rules_by_region():
    assert EMPLOYEE == policy.Rule(deductible=100_000, ratio=70, cross_ratio=60, cap=1_000_000, account=True)
    assert policy.rule("440300", "310").deductible == 0
    assert policy.rule("650100", "390").deductible == 20_000
    assert policy.rule("650100", "310") == EMPLOYEE
    with pytest.raises(KeyError):
        policy.rule("330300", "999")


def test_policy_deductible_first_then_the_ratio_rounded_down():
    # all under the deductible
    assert split(60000) == policy.Split(60000, 0, 0, 60000, 60000)
    # part of it left: 400.00, then 70 % of 600.00
    assert split(100000, deductible_used=60000) == policy.Split(100000, 42000, 0, 58000, 40000)
    # deductible met: 70 % of 0.01 yuan is 0.007: the fund pays nothing, never a fraction
    assert split(1, deductible_used=100000).fund == 0
    assert split(10001, deductible_used=100000).fund == 7000
    assert split(10001, deductible_used=100000, cross_region=True).fund == 6000
    # more used than the deductible (a changed rule): nothing of it left, never negative
    assert split(1000, deductible_used=500000).deductible == 0


def test_policy_cap():
    assert split(500000, deductible_used=100000, fund_used=999_000).fund == 1000
    assert split(500000, deductible_used=100000, fund_used=1_000_000).fund == 0
    assert split(500000, deductible_used=100000, fund_used=2_000_000).fund == 0
    assert split(10_000_000, MATERNITY) == policy.Split(10_000_000, 500_000, 0, 9_500_000, 0)


def test_policy_account_only_for_employees_and_when_the_holder_agrees():
    assert split(50000, balance=30000) == policy.Split(50000, 0, 30000, 20000, 50000)
    assert split(50000, balance=30000, use_account=False).account == 0
    assert split(50000, RESIDENT, balance=30000).account == 0
    assert split(50000, MATERNITY, balance=30000).account == 0
    assert split(50000, balance=-5).account == 0


def test_policy_pharmacy_is_outside_the_fund():
    assert split(2350, med_type="41", balance=235000) == policy.Split(2350, 0, 2350, 0, 0)
    assert split(2350, med_type="41", balance=1000, deductible_used=100000) == policy.Split(2350, 0, 1000, 1350, 0)
    assert split(2350, RESIDENT, med_type="41", balance=1000) == policy.Split(2350, 0, 0, 2350, 0)


def test_policy_refuses_a_negative_bill_and_a_split_that_does_not_add_up():
    with pytest.raises(ValueError):
        split(-1)
    with pytest.raises(ValueError):
        policy.Split(100, 50, 50, 1, 0)
    with pytest.raises(ValueError):
        policy.Split(100, 150, -50, 0, 0)


RULE_ITEMS = st.sampled_from(sorted(policy.RULES.items()))


@settings(max_examples=500, deadline=None)
@given(rule=RULE_ITEMS, total=st.integers(0, 10**12), med_type=st.sampled_from(["11", "14", "21", "41", "51", "52"]),
       cross=st.booleans(), deductible_used=st.integers(0, 10**7), fund_used=st.integers(0, 10**7),
       balance=st.integers(-10**3, 10**9), use_account=st.booleans())
def test_policy_shares_always_add_up_and_are_never_negative(rule, total, med_type, cross, deductible_used,
                                                           fund_used, balance, use_account):
    _, r = rule
    s = policy.split(total, rule=r, med_type=med_type, cross_region=cross, deductible_used=deductible_used,
                     fund_used=fund_used, balance=balance, use_account=use_account)
    assert s.fund + s.account + s.cash == s.total == total
    assert min(s.fund, s.account, s.cash, s.deductible) >= 0
    assert all(type(v) is int for v in (s.fund, s.account, s.cash, s.deductible))
    assert s.deductible <= max(0, r.deductible - deductible_used)
    assert s.fund <= max(0, r.cap - fund_used)
    assert s.fund * 100 <= (total - s.deductible) * (r.cross_ratio if cross else r.ratio)
    assert s.account <= max(0, balance)
    if med_type == "41":
        assert s.fund == 0 and s.deductible == 0
    if not (use_account and r.account):
        assert s.account == 0


def test_a_signature_header_of_other_characters_is_forbidden_not_a_server_error(service):
    t = Terminal(service, CLINIC)
    headers = {**gateway_headers(t.credentials), "x-tif-signature": "é".encode("latin-1") * 64}
    reply = t.post("/api/call", t.sign_in_message(), headers)
    assert reply.status_code == 403 and service.ledger.count() == 0
