"""The money path under concurrency and crashes, with real processes and the virtual platform in its own
process (``sscard central serve``), each terminal process with its own SQLite journal.

- Two processes paying one sale number at the same instant, 50 tries, at one terminal (one journal)
  and at two terminals: each sale is settled once, and the account debited once.
- Two purchases on one card at the same instant, 50 tries, more than the balance holds: the balance
  never goes negative, and the account pays exactly what it held.
- A terminal SIGKILLed while it pays, at >= 50 points (right after the intent is journaled, while the
  platform holds the call, right after the answer arrived and before it is journaled, at random): after
  the next command's resolution every sale is settled once or not at all at the platform, and the
  journal agrees with it.

The figures are printed for the closing notes: ``pytest -s``.
"""
from __future__ import annotations

import collections
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from onlineworker import open_site, race
from queueing import free_port, wait_for_platform

from sscard.central.ledger import Ledger

HERE = Path(__file__).resolve().parent
ZHANGWEI = "3303000000000001"


def sscard(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args]


@pytest.fixture
def platform_process(tmp_path):
    """The virtual platform in its own process (fault switches on); yields (url, ledger path)."""
    port = free_port()
    db = tmp_path / "platform.sqlite"
    Ledger(db).close()  # seeded now, so the tests may adjust it before it serves
    proc = subprocess.Popen(sscard("central", "serve", "--db", str(db), "--port", str(port), "--faults"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_platform(url, proc, seconds=20)
    try:
        yield url, db
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def ledger_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def balance(db: Path, psn_no: str = ZHANGWEI) -> int:
    return ledger_rows(db, "SELECT balc FROM accounts WHERE psn_no = ?", (psn_no,))[0][0]


def run_race(url: str, journals: list[Path], terminals: list[int], card: str, sales: list[list[str]], fen: int):
    """Two processes, each buying its list of sales in step with the other; their outcomes."""
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=race, args=(str(journals[i]), url, terminals[i], card, sales[i], fen, barrier,
                                                  results)) for i in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(sum(len(s) for s in sales))]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return outcomes


@pytest.mark.parametrize("terminals", [(1, 1), (1, 2)], ids=["one-terminal", "two-terminals"])
def test_two_processes_paying_one_sale_at_once_settle_it_once(platform_process, tmp_path, terminals):
    url, db = platform_process
    tries = 50
    journals = [tmp_path / f"journal-{t}.sqlite" for t in terminals]
    before = balance(db)
    sales = [f"RACE{n:03d}" for n in range(tries)]
    outcomes = run_race(url, journals, list(terminals), "adult", [sales, sales], 100)
    by_sale = collections.defaultdict(list)
    for _terminal, outcome in outcomes:
        by_sale[outcome["sale"]].append(outcome)
    settled = collections.Counter(row[0] for row in ledger_rows(
        db, "SELECT chrg_bchno FROM settlements WHERE state = 'settled'"))
    doubles = [sale for sale in sales if settled[sale] != 1]
    kinds = collections.Counter(
        "paid" if "setl_id" in o and not o["already"] else "already paid" if "setl_id" in o else f"{o['error']} {o['exit']}"
        for _t, o in outcomes)
    where = "one terminal" if terminals[0] == terminals[1] else "two terminals"
    print(f"\n{tries} tries of two processes paying one sale at once ({where}"
          f"): settled twice {len(doubles)}, outcomes {dict(kinds)}")
    assert doubles == []
    for sale in sales:  # exactly one process paid it; the other was told it is paid, or refused
        assert [("setl_id" in o and not o["already"]) for o in by_sale[sale]].count(True) == 1, by_sale[sale]
        refusals = [o for o in by_sale[sale] if "error" in o]
        assert all(o["exit"] == 16 for o in refusals), refusals
    assert balance(db) == before - 100 * tries  # one debit per sale


def test_two_purchases_on_one_card_at_once_never_overdraw_it(platform_process, tmp_path):
    url, db = platform_process
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE accounts SET balc = 30000 WHERE psn_no = ?", (ZHANGWEI,))
        conn.commit()
    tries = 50
    sales = [[f"A{n:03d}" for n in range(tries)], [f"B{n:03d}" for n in range(tries)]]
    outcomes = run_race(url, [tmp_path / "one.sqlite", tmp_path / "two.sqlite"], [1, 2], "adult", sales, 700)
    paid = [o for _t, o in outcomes if "setl_id" in o]
    rows = ledger_rows(db, "SELECT medfee, fund, acct, cash, balc FROM settlements WHERE state = 'settled'")
    print(f"\n{tries} tries of two purchases on one card at once: {len(paid)} paid, balance {balance(db)}, "
          f"lowest balance answered {min(r[4] for r in rows)}, paid from the account {sum(r[2] for r in rows)} fen")
    assert len(paid) == len(rows) == 2 * tries
    assert all(r[0] == r[1] + r[2] + r[3] and min(r) >= 0 for r in rows)
    assert sum(r[2] for r in rows) == 30000 and balance(db) == 0  # the account paid exactly what it held
    assert sum(o["account"] for o in paid) == 30000


# --- SIGKILL between the call and its answer -------------------------------------------------------

POINTS = ("intent", "in-flight", "answer", "random")


def test_a_terminal_killed_while_it_pays_leaves_every_sale_settled_once_or_not_at_all(platform_process, tmp_path):
    url, db = platform_process
    journal = tmp_path / "journal.sqlite"
    rng = random.Random(20261202)
    rounds, killed = 60, collections.Counter()
    # the platform holds each settlement a moment before answering: the call is in flight meanwhile
    httpx.post(f"{url}/_control", json={"mode": "stall", "seconds": 0.15, "infno": "2102"},
               headers=signed_headers()).raise_for_status()
    sales = [f"K{n:03d}" for n in range(rounds)]
    for n, sale in enumerate(sales):
        point = POINTS[n % len(POINTS)]
        worker = subprocess.Popen([sys.executable, str(HERE / "onlineworker.py"), str(journal), url, sale],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill_at(worker, point, sale, rng):
            killed[point] += 1
        worker.wait(timeout=30)
        if worker.returncode != -signal.SIGKILL:  # it ran to its end: cleanly
            assert worker.returncode == 0 and "Traceback" not in (worker.stderr.read() if worker.stderr else "")
        if n % 10 == 9:
            resolve_with_a_new_process(journal, url)  # `sscard queue resolve`
        else:
            resolve_in_process(journal, url)  # what the next command does first
    assert sum(killed.values()) >= 50 and all(killed[p] >= 10 for p in POINTS), killed

    settled = collections.Counter(row[0] for row in ledger_rows(
        db, "SELECT chrg_bchno FROM settlements WHERE state = 'settled'"))
    site = open_site(str(journal), url, 1)
    try:
        entries = [r for r in site.outbox.records() if r.infno == "2102"]
        assert site.outbox.unknown_calls() == [] and not [r for r in entries if r.state == "calling"]
    finally:
        site.platform.close()
        site.outbox.close()
    journal_says = collections.defaultdict(list)
    for record in entries:
        journal_says[json.loads(record.envelope)["input"]["data"]["chrg_bchno"]].append(record.state)
    disagree = [sale for sale in sales
                if settled[sale] > 1 or (settled[sale] == 1) != ("answered" in journal_says[sale])]
    print(f"\nterminal SIGKILLed while paying: {sum(killed.values())} kills {dict(killed)} over {rounds} sales; "
          f"settled {sum(settled.values())}, reversed {sum(s.count('reversed') for s in journal_says.values())}, "
          f"settled twice {sum(1 for s in sales if settled[s] > 1)}, journal and platform disagree {len(disagree)}")
    assert disagree == []
    assert balance(db) == 235000 - 100 * sum(settled.values())


def signed_headers() -> dict[str, str]:
    from sscard.message.envelope import gateway_headers
    from sscard.terminal.gateway import test_credentials

    return gateway_headers(test_credentials("H33030200001"))


def kill_at(worker: subprocess.Popen, point: str, sale: str, rng: random.Random) -> bool:
    """SIGKILL ``worker`` at ``point`` of paying ``sale``; False when it finished first."""
    if point == "random":
        time.sleep(rng.uniform(0.2, 1.0))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            return True
        return False
    mark = {"intent": "INTENT", "in-flight": "INTENT", "answer": "ANSWER"}[point]
    assert worker.stdout is not None
    for line in worker.stdout:
        if line.startswith(f"{mark} {sale}"):
            if point == "in-flight":
                time.sleep(rng.uniform(0.03, 0.12))  # inside the platform's 0.15 s hold
            worker.send_signal(signal.SIGKILL)
            return True
        if line.startswith("DONE"):
            return False
    return False


def resolve_in_process(journal: Path, url: str) -> None:
    """The next command's first step (terminal/cli/counter.py, resolve_unknown)."""
    if not journal.exists():
        return
    site = open_site(str(journal), url, 1)
    try:
        site.platform.resolve()
    finally:
        site.platform.close()
        site.outbox.close()


def resolve_with_a_new_process(journal: Path, url: str) -> None:
    """`sscard queue resolve` as the next command would: the dead process's call is reversed."""
    env = {**os.environ, "SSCARD_CONFIG": "/nonexistent"}
    result = subprocess.run(sscard("queue", "resolve", "-q", str(journal), "--central", url), capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
