"""``make demo``: one day at a small clinic on virtual cards, online (docs/flows.md, "The demo day").

The virtual platform runs on 127.0.0.1 all day. Morning at a bank counter (its own terminal and
queue): 周敏 activates her card (ID document, new PIN, MAC-protected unblock). At the clinic's desk:
李娜's first registration activates her card, 陈静 (insured in Shenzhen) registers cross-region, 张伟 is
admitted (each registration answered online with its visit number), and 陈静's outpatient bill is settled
(the fund pays its share by her insured region's rules); the activations go up to the platform. At
the clinic's pharmacy window: 李娜's dual-card insert moves
her old medical card's account to her account at the platform (online), she buys two medicines (1101,
2101, PIN, 2102); 张伟 buys one and it is refunded (2103); the answer to 陈静's payment is lost on the
way back (the platform told to drop it), so it is reversed (2601) and she pays again. At day end the
pharmacy reconciles with the platform (3201), and what the platform holds is printed. Everything runs
on real parts: the in-memory simulator, SQLite journals, the bundled TEST keys and TEST gateway
credentials, HTTP on loopback.

Run: ``sscard demo`` (``--dir DIR`` keeps the files, ``--json`` prints the platform's holdings).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sscard.central import CentralService
from sscard.drivers.connection import Connection
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.message.envelope import CST, Fen, Operator, Station, yuan
from sscard.message.infno import Infno
from sscard.terminal.flows.bank import bank_activate
from sscard.terminal.flows.common import Clerk, Site
from sscard.terminal.flows.desk import register, settle_visit, visit_id
from sscard.terminal.flows.pharmacy import Item, dual_card_activate, purchase, read_old_card, refund
from sscard.terminal.gateway import test_credentials
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.online import Platform, ReversedError
from sscard.terminal.private import private_folder
from sscard.terminal.queue import Outbox
from sscard.terminal.reconcile import Reconciliation, reconcile
from sscard.terminal.upload import Uploader, ledger_errors

CLINIC = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 1, Operator("C001", "李收费"))
PHARMACY = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 2, Operator("C002", "王药师"))
BANK = Station("B33030000007", "某银行温州分行营业部", "330300", 1, Operator("G007", "赵柜员"))
#: the virtual platform's ledger, beside the terminals' journals
PLATFORM_DB = "platform.sqlite"


@dataclass
class DemoClerk:
    """Prints what the terminal says; types the holder's PINs from the script (shown as asterisks)."""

    out: TextIO
    pins: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"    {text}", file=self.out)

    def ask_pin(self, prompt: str) -> str:
        pin = self.pins.pop(0)
        print(f"    {prompt}: {'*' * len(pin)}", file=self.out)
        return pin

    def can_ask_again(self) -> bool:
        return bool(self.pins)

    def confirm(self, question: str) -> bool:
        print(f"    {question} no", file=self.out)  # the demo's day asks nothing it would agree to
        return False


def _sim(name: str) -> MemoryConnection:
    return MemoryConnection(load_card(name), name=f"sim:{name}")


#: how a step gets the connection to a card by its profile name (the demo: a fresh in-memory card)
Connect = Callable[[str], Connection]

#: 陈静's card identification code (fixtures/cards/other-region.json)
CHEN_JING = "440300D15600000503141592FFFFFFFF"

#: where a step happens: its journal file and its station
PLACES = {
    "bank": ("bank-queue.sqlite", BANK),
    "desk": ("clinic-queue.sqlite", CLINIC),
    "pharmacy": ("pharmacy-queue.sqlite", PHARMACY),
}


@dataclass(frozen=True)
class Step:
    """One transaction of the day: where, what the screen title says, the PINs typed, what it records
    in its journal when it completes (infno and state), whether it uses a card."""

    place: str
    title: str
    pins: tuple[str, ...]
    act: Callable[[Site, Connect, Clerk], object]
    records: tuple[tuple[str, str], ...]
    cards: bool = True


def _chen_jing_bill(site: Site, connect: Connect, clerk: Clerk) -> object:
    card = connect("other-region")
    registered = [r for r in site.outbox.records("answered") if r.infno == Infno.REGISTRATION and r.card_sn == CHEN_JING]
    visit = visit_id((registered[0].reply or {})["output"])
    return settle_visit(card, site, visit, "B20260301-0001", [Item("诊查费", 1, Fen(2000)), Item("血常规", 1, Fen(3500))],
                        clerk)


def _dual_card(site: Site, connect: Connect, clerk: Clerk) -> object:
    old_reader = connect("old-medical-lina")
    return dual_card_activate(read_old_card(old_reader), connect("not-activated"), site, clerk, old_reader)


DAY: tuple[Step, ...] = (
    Step("bank", "Bank counter: 周敏 activates her card with her ID card", ("386152", "386152"),
         lambda site, connect, clerk: bank_activate(connect("not-activated-zhou"), site, "330303196811052226", clerk),
         ((Infno.ACTIVATION, "pending"),)),
    Step("desk", "Clinic desk: 李娜's first registration (outpatient, 内科)", ("123456",),
         lambda site, connect, clerk: register(connect("not-activated"), site, "outpatient", "内科", clerk),
         ((Infno.ACTIVATION, "pending"), (Infno.REGISTRATION, "answered"))),
    Step("desk", "Clinic desk: 陈静, insured in Shenzhen (440300): cross-region", ("802613",),
         lambda site, connect, clerk: register(connect("other-region"), site, "outpatient", "急诊科", clerk),
         ((Infno.REGISTRATION, "answered"),)),
    Step("desk", "Clinic desk: 张伟 is admitted (hospitalisation, 外科)", ("246810",),
         lambda site, connect, clerk: register(connect("adult"), site, "hospitalisation", "外科", clerk),
         ((Infno.ADMISSION, "answered"),)),
    Step("desk", "Clinic desk: 陈静's outpatient bill (诊查费 20.00, 血常规 35.00)", ("802613",),
         _chen_jing_bill, ((Infno.OUTPATIENT_SETTLEMENT, "answered"),)),
    Step("pharmacy", "Pharmacy: 李娜's dual-card insert (old card in reader 1, new card in reader 2)", ("123456",),
         _dual_card, ((Infno.TRANSFER, "answered"),)),
    Step("pharmacy", "Pharmacy: 李娜 buys 2 x 阿莫西林胶囊 (12.50) and 1 x 布洛芬缓释胶囊 (15.80)", ("123456",),
         lambda site, connect, clerk: purchase(
             connect("not-activated"), site, "T20260301-0001",
             [Item("阿莫西林胶囊", 2, Fen(1250)), Item("布洛芬缓释胶囊", 1, Fen(1580))], clerk),
         ((Infno.PHARMACY_SETTLEMENT, "answered"),)),
    Step("pharmacy", "Pharmacy: 张伟 buys 1 x 复方甘草片 (8.60)", ("246810",),
         lambda site, connect, clerk: purchase(connect("adult"), site, "T20260301-0002",
                                               [Item("复方甘草片", 1, Fen(860))], clerk),
         ((Infno.PHARMACY_SETTLEMENT, "answered"),)),
    Step("pharmacy", "Pharmacy: 张伟 brings it back unopened: sale T20260301-0002 is refunded", (),
         lambda site, connect, clerk: refund(site, "T20260301-0002", clerk),
         ((Infno.PHARMACY_CANCELLATION, "answered"),), cards=False),
)


@contextmanager
def open_site(folder: Path, place: str, url: str) -> Iterator[Site]:
    """The site of a place of the day: its journal in ``folder``, the bundled TEST keys, the platform
    at ``url`` with the TEST credentials of its institution."""
    name, station = PLACES[place]
    with Outbox(folder / name, station) as outbox, \
            Platform(outbox, url, test_credentials(station.fixmedins_code)) as platform:
        yield Site(outbox, SoftwareKeyStore.bundled_test_keys(), platform)


@contextmanager
def virtual_platform(folder: Path, faults: bool = False) -> Iterator[CentralService]:
    """The virtual platform on the ledger in ``folder``, for the time of the block (a damaged ledger:
    :class:`terminal.upload.CentralError`)."""
    with ledger_errors(folder / PLATFORM_DB):
        service = CentralService(folder / PLATFORM_DB, faults=faults)
    with service:
        yield service


@contextmanager
def platform_for(folder: Path, url: str | None) -> Iterator[str]:
    """``url``, or the virtual platform on the ledger in ``folder`` for the time of the block."""
    if url is not None:
        yield url
        return
    with virtual_platform(folder) as service:
        yield service.url


def run_step(step: Step, folder: Path, out: TextIO, connect: Connect = _sim, url: str | None = None) -> object:
    """Run one step of the day with its own clerk against the platform at ``url`` (by default one on the
    ledger in ``folder``, for this step); the step's refusal or fault propagates."""
    print(f"\n== {step.title}", file=out)
    with platform_for(folder, url) as where, open_site(folder, step.place, where) as site:
        return step.act(site, connect, DemoClerk(out, list(step.pins)))


def upload_all(folder: Path, url: str, out: TextIO) -> None:
    """Upload what waits in every journal of the day to the platform at ``url``."""
    for name, institution in sorted({(name, station.fixmedins_code) for name, station in PLACES.values()}):
        if not (folder / name).exists():
            continue
        with Outbox(folder / name, create=False) as outbox, \
                Uploader(outbox, url, credentials=test_credentials(institution)) as uploader:
            report = uploader.drain()
            print(f"    {name}: {report.sent} sent, {report.dead} refused, {report.pending} waiting", file=out)


def lost_answer(service: CentralService, folder: Path, out: TextIO) -> None:
    """陈静 pays; the platform settles but its answer is dropped on the way back: the terminal reverses
    the payment (2601), and she pays again."""
    items = [Item("板蓝根颗粒", 2, Fen(1500))]
    step = "Pharmacy: 陈静 pays 2 x 板蓝根颗粒 (15.00); the platform's answer is lost on the way back"
    print(f"\n== {step}", file=out)
    service.set_fault("drop", count=1, infno=Infno.PHARMACY_SETTLEMENT)
    with open_site(folder, "pharmacy", service.url) as site:
        try:
            purchase(_sim("other-region"), site, "T20260301-0003", items, DemoClerk(out, ["802613"]))
        except ReversedError as err:
            print(f"    Error: {err}", file=out)
        print("\n== Pharmacy: the clerk runs the sale again", file=out)
        purchase(_sim("other-region"), site, "T20260301-0003", items, DemoClerk(out, ["802613"]))


def day_end(url: str, folder: Path, out: TextIO) -> Reconciliation:
    """The pharmacy's day-end reconciliation (3201) with the platform, printed."""
    print("\n== Day end: the clinic reconciles with the platform (3201)", file=out)
    with contextlib.ExitStack() as stack:
        outboxes = [stack.enter_context(Outbox(folder / PLACES[place][0], create=False)) for place in ("pharmacy", "desk")]
        platform = stack.enter_context(Platform(outboxes[0], url, test_credentials(PHARMACY.fixmedins_code)))
        result = reconcile(platform, outboxes, dt.datetime.now(CST).date())
    for line in result.lines:
        if line.totals.count or not line.agreed:
            print(f"    insutype {line.insutype}, clearing {line.clr_type}: {line.totals.count} settlements, "
                  f"{yuan(line.totals.total)} yuan: {'agreed' if line.agreed else line.description}", file=out)
    print(f"    {'balanced' if result.balanced else 'NOT BALANCED'}", file=out)
    return result


def run_day(folder: Path, out: TextIO) -> dict[str, Any]:
    """Walk the day (module docstring); return what the platform holds and the reconciliation."""
    with virtual_platform(folder, faults=True) as service:
        print(f"The virtual platform is on {service.url}", file=out)
        for step in DAY[:5]:
            run_step(step, folder, out, url=service.url)
        print("\n== The activations go up to the platform", file=out)
        upload_all(folder, service.url, out)
        for step in DAY[5:]:
            run_step(step, folder, out, url=service.url)
        lost_answer(service, folder, out)
        print("\n== The records still waiting go up", file=out)
        upload_all(folder, service.url, out)
        result = day_end(service.url, folder, out)
        return {"platform": service.ledger.show(), "reconciliation": result.to_dict()}


def print_holdings(held: dict[str, Any], out: TextIO) -> None:
    """What the platform holds, for people."""
    platform = held["platform"]
    print(f"\n== The platform holds {len(platform['messages'])} messages", file=out)
    for m in platform["messages"]:
        state = "accepted" if m["infcode"] == 0 else "refused"
        reversed_by = f", reversed by {m['reversed_by']}" if m["reversed_by"] else ""
        print(f"    {m['msgid']}  {m['infno']}  {m['transaction']}: {state}{reversed_by}", file=out)
    print("  settlements:", file=out)
    for s in platform["settlements"]:
        print(f"    {s['setl_id']}  sale {s['chrg_bchno']}  {s['medfee_sumamt']} yuan: fund {s['fund_pay_sumamt']}, "
              f"account {s['acct_pay']}, cash {s['psn_cash_pay']}  {s['state']}", file=out)
    print("  accounts:", file=out)
    for a in platform["accounts"]:
        print(f"    {a['psn_no']}  {a['psn_name']}  {a['balc']} yuan", file=out)
    print(f"  reconciliation: {'balanced' if held['reconciliation']['balanced'] else 'NOT BALANCED'}", file=out)


def walk(folder: Path | None, out: TextIO) -> dict[str, Any]:
    """Run the demo day in ``folder`` (a fresh temporary folder by default), telling it on ``out``;
    return what the platform holds and the reconciliation (:func:`run_day`)."""
    with tempfile.TemporaryDirectory(prefix="sscard-demo-") as tmp:
        where = folder or Path(tmp)
        private_folder(where)  # the day's journal and ledger hold the demo holders' data
        return run_day(where, out)
