"""``make demo``: one day at a small clinic on virtual cards, then the upload (docs/flows.md, "The demo day").

Morning at a bank counter (its own terminal and queue): 周敏 activates her card (ID document, new PIN,
MAC-protected unblock). At the clinic's desk: 李娜's first registration activates her card, 陈静 (insured
in Shenzhen) registers cross-region, 张伟 registers for an ordinary outpatient visit. At the clinic's
pharmacy window: 李娜's dual-card insert moves her old medical card's account to her new card, then she
buys two medicines from it. Then both queues are uploaded to the reference central service on
127.0.0.1, and what the service holds is printed. Everything runs on real parts: the in-memory
simulator, SQLite queue files, the bundled TEST keys, HTTP on loopback.

Run: ``sscard demo`` or ``python -m terminal.demo`` (``--dir`` keeps the files).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from drivers.connection import Connection
from drivers.memory import MemoryConnection
from drivers.simulator import load_card
from drivers.simulator.oldmedical import load_old_card
from terminal.central import CentralService
from terminal.crypto import SoftwareKeyStore
from terminal.envelope import Fen, Operator, Station, parse_yuan, yuan
from terminal.flows.bank import bank_activate
from terminal.flows.common import Clerk, Site
from terminal.flows.desk import register
from terminal.flows.pharmacy import Item, dual_card_activate, purchase, read_old_card
from terminal.queue import Outbox
from terminal.upload import Uploader

CLINIC = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 1, Operator("C001", "李收费"))
PHARMACY = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 2, Operator("C002", "王药师"))
BANK = Station("B33030000007", "某银行温州分行营业部", "330300", 1, Operator("G007", "赵柜员"))


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


def _sim(name: str) -> MemoryConnection:
    card = load_old_card(name) if name.startswith("old-medical") else load_card(name)
    return MemoryConnection(card, name=f"sim:{name}")


#: how a step gets the connection to a card by its profile name (the demo: a fresh in-memory card)
Connect = Callable[[str], Connection]

#: where a step happens: its queue file and its station
PLACES = {
    "bank": ("bank-queue.sqlite", BANK),
    "desk": ("clinic-queue.sqlite", CLINIC),
    "pharmacy": ("clinic-queue.sqlite", PHARMACY),
}


@dataclass(frozen=True)
class Step:
    """One transaction of the day: where, what the screen title says, the PINs typed, what it queues."""

    place: str
    title: str
    pins: tuple[str, ...]
    act: Callable[[Site, Connect, Clerk], object]
    #: the message types it queues when it completes
    queues: tuple[str, ...]


def _dual_card(site: Site, connect: Connect, clerk: Clerk) -> object:
    old_reader = connect("old-medical-lina")
    return dual_card_activate(read_old_card(old_reader), connect("not-activated"), site, clerk, old_reader)


DAY: tuple[Step, ...] = (
    Step("bank", "Bank counter: 周敏 activates her card with her ID card", ("386152", "386152"),
         lambda site, connect, clerk: bank_activate(connect("not-activated-zhou"), site, "330303196811052226", clerk),
         ("SS01",)),
    Step("desk", "Clinic desk: 李娜's first registration (outpatient, 内科)", ("123456",),
         lambda site, connect, clerk: register(connect("not-activated"), site, "outpatient", "内科", clerk),
         ("SS01", "2201")),
    Step("desk", "Clinic desk: 陈静, insured in Shenzhen (440300): cross-region", ("802613",),
         lambda site, connect, clerk: register(connect("other-region"), site, "outpatient", "急诊科", clerk),
         ("2201",)),
    Step("desk", "Clinic desk: 张伟 is admitted (hospitalisation, 外科)", ("246810",),
         lambda site, connect, clerk: register(connect("adult"), site, "hospitalisation", "外科", clerk),
         ("2401",)),
    Step("pharmacy", "Pharmacy: 李娜's dual-card insert (old card in reader 1, new card in reader 2)", ("123456",),
         _dual_card, ("SS02",)),
    Step("pharmacy", "Pharmacy: 李娜 buys 2 x 阿莫西林胶囊 (12.50) and 1 x 布洛芬缓释胶囊 (15.80)", ("123456",),
         lambda site, connect, clerk: purchase(
             connect("not-activated"), site, "T20260301-0001",
             [Item("阿莫西林胶囊", 2, Fen(1250)), Item("布洛芬缓释胶囊", 1, Fen(1580))], clerk),
         ("2102",)),
)


@contextmanager
def open_site(folder: Path, place: str) -> Iterator[Site]:
    """The site of a place of the day: its queue in ``folder`` and the bundled TEST keys."""
    name, station = PLACES[place]
    with Outbox(folder / name, station) as outbox:
        yield Site(outbox, SoftwareKeyStore.bundled_test_keys())


def run_step(step: Step, folder: Path, out: TextIO, connect: Connect = _sim) -> object:
    """Run one step of the day with its own clerk; the step's refusal or fault propagates."""
    print(f"\n== {step.title}", file=out)
    with open_site(folder, step.place) as site:
        return step.act(site, connect, DemoClerk(out, list(step.pins)))


def upload_all(folder: Path, url: str, out: TextIO) -> list[str]:
    """Upload every queue of the day to the service at ``url``; the msgids queued, oldest first."""
    msgids: list[str] = []
    for name in sorted({name for name, _ in PLACES.values()}):
        with Outbox(folder / name, create=False) as outbox, Uploader(outbox, url) as uploader:
            report = uploader.drain()
            print(f"    {name}: {report.sent} sent, {report.dead} refused, {report.pending} waiting", file=out)
            msgids += [record.msgid for record in reversed(outbox.records())]
    return msgids


def run_day(folder: Path, out: TextIO) -> dict[str, Any]:
    """Walk the day (module docstring); return what the central service holds, by msgid."""
    for step in DAY:
        run_step(step, folder, out)
    with CentralService(folder / "central.sqlite") as central:
        print(f"\n== Upload to the central service at {central.url}", file=out)
        return {msgid: central.ledger.message(msgid) for msgid in upload_all(folder, central.url, out)}


def describe(message: dict[str, Any]) -> str:
    """One line for a message the service holds: code, institution, regions, the essentials."""
    data = message["input"].get("data", {})
    cross = "  CROSS-REGION" if message["insuplc_admdvs"] != message["mdtrtarea_admvs"] else ""
    what = {"SS01": f"activation ({data.get('actv_way')})", "SS02": f"account moved {data.get('acct_balc')} yuan",
            "2201": f"registration {data.get('dept_name')}", "2401": f"admission {data.get('dept_name')}",
            "2102": f"purchase {data.get('acct_pay')} yuan, balance {data.get('balc')} yuan"}.get(message["infno"], "")
    return (f"{message['msgid']}  {message['infno']}  {message['fixmedins_name']}  "
            f"insured {message['insuplc_admdvs']} / treated {message['mdtrtarea_admvs']}  {what}{cross}")


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo day in ``--dir`` (a fresh temporary folder by default) and print the service's holdings."""
    parser = argparse.ArgumentParser(prog="sscard demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="keep the queue and service files here")
    parser.add_argument("--json", action="store_true", help="print what the service holds as JSON")
    args = parser.parse_args(argv)
    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="sscard-demo-") as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        held = run_day(folder, out if not args.json else sys.stderr)
    if args.json:
        print(json.dumps(held, ensure_ascii=False, indent=2), file=out)
        return 0
    print(f"\n== The central service holds {len(held)} messages", file=out)
    for message in held.values():
        print(f"    {describe(message)}", file=out)
    total = sum(parse_yuan(m["input"]["data"]["acct_pay"]) for m in held.values() if m["infno"] == "2102")
    print(f"    paid from personal accounts today: {yuan(total)} yuan", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
