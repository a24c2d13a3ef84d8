"""Terminal processes for the concurrency and crash tests of the money path (tests/test_online_crash.py).

Each function runs in a process of its own (multiprocessing, or ``python tests/onlineworker.py``): a
terminal with its own journal file, an in-memory virtual card and the virtual platform at ``url``
(TEST credentials), doing real purchases through the same code as ``sscard pharmacy purchase``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flowing import PINS, clerk, sim

from sscard.message.envelope import Fen, Operator, Station
from sscard.terminal.flows.common import Site
from sscard.terminal.gateway import test_credentials
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.online import Platform
from sscard.terminal.queue import Outbox


def station(terminal_no: int) -> Station:
    return Station("H33030200001", "温州市鹿城区示范诊所", "330300", terminal_no, Operator(f"C{terminal_no:03d}", "收费员"))


def open_site(journal: str, url: str, terminal_no: int, timeout: float = 5.0) -> Site:
    outbox = Outbox(journal, station(terminal_no))
    platform = Platform(outbox, url, test_credentials("H33030200001"), timeout=timeout)
    return Site(outbox, SoftwareKeyStore.bundled_test_keys(), platform)


def buy(site: Site, card: str, sale: str, fen: int) -> dict[str, Any]:
    """One purchase; its outcome as a small dict (``paid``, ``already``, or the error's class and exit code)."""
    from sscard.apdu.errors import SSCardError
    from sscard.terminal.cli.exits import exit_code
    from sscard.terminal.flows.pharmacy import Item, purchase

    try:
        result = purchase(sim(card), site, sale, [Item("测试药品", 1, Fen(fen))], clerk(PINS[card]))
    except SSCardError as err:
        return {"sale": sale, "error": type(err).__name__, "exit": exit_code(err), "text": str(err)}
    return {"sale": sale, "already": result.already_paid, "setl_id": result.split.setl_id,
            "account": int(result.split.account), "msgid": result.record.msgid}


def race(journal: str, url: str, terminal_no: int, card: str, sales: list[str], fen: int, barrier: Any,
         results: Any) -> None:
    """For each sale: wait for the other process at ``barrier``, then buy it at once."""
    site = open_site(journal, url, terminal_no)
    try:
        for sale in sales:
            barrier.wait(timeout=60)
            results.put((terminal_no, buy(site, card, sale, fen)))
    finally:
        site.platform.close()
        site.outbox.close()


def crashable(journal: str, url: str, sales: list[str]) -> None:
    """Buy each sale, saying on stdout where it is (``INTENT <sale>`` once the 2102's intent is on disk,
    ``ANSWER <sale>`` once its answer arrived, just before the answer is journaled, ``DONE <sale>``), so
    the test can SIGKILL it at a chosen point; a short pause at each mark widens the window."""
    site = open_site(journal, url, 1)
    outbox = site.outbox
    begin, answer = outbox.begin_call, outbox.answer_call

    def begin_call(infno: str, input: dict[str, Any], **kwargs: Any) -> Any:
        record = begin(infno, input, **kwargs)
        if infno == "2102":
            print(f"INTENT {input['data']['chrg_bchno']}", flush=True)
            time.sleep(0.02)
        return record

    def answer_call(msgid: str, response: dict[str, Any], *rest: Any) -> Any:
        if response.get("output", {}).get("setlinfo", {}).get("chrg_bchno"):
            print(f"ANSWER {response['output']['setlinfo']['chrg_bchno']}", flush=True)
            time.sleep(0.02)
        return answer(msgid, response, *rest)

    outbox.begin_call = begin_call  # type: ignore[method-assign]
    outbox.answer_call = answer_call  # type: ignore[method-assign]
    for sale in sales:
        outcome = buy(site, "adult", sale, 100)
        print(f"DONE {sale} {json.dumps(outcome)}", flush=True)


if __name__ == "__main__":
    journal, url, *sales = sys.argv[1:]
    crashable(journal, url, sales)
