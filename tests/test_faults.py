"""Faults injected across a full day of flows (the demo's day, terminal/demo.py).

- The card pulled out at every command of every step, one fault per attempt, each attempt on a copy
  of the journals and of the virtual platform's ledger as they were before the step: a step that
  fails has recorded nothing and moved nothing at the platform; a step that completes has recorded
  its messages exactly once.
- The upload of the day's queues while the central service and the uploader are SIGKILLed at random
  and restarted: the service ends with exactly the set of completed transactions, each once.
- pcscd killed and restarted while a desk registration waits for the PIN: a clear error, nothing
  recorded; the same registration then completes once.

The figures (fault runs, records lost, duplicates) are printed for the closing notes: ``pytest -s``.
"""
from __future__ import annotations

import collections
import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from queueing import free_port, wait_for_platform

from sscard.apdu.errors import SSCardError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.message.infno import REVERSIBLE
from sscard.terminal.demo import DAY, PLACES, PLATFORM_DB, Step, run_step

QUEUES = sorted({name for name, _ in PLACES.values()})
#: the states of records that wait for the uploader (the rest are the journal of online calls)
DELIVERY = ("pending", "sending", "sent", "dead", "held")


def queued(folder: Path) -> list[tuple[str, str, str]]:
    """(journal file, infno, state) of every record of the day so far, in order."""
    out = []
    for name in QUEUES:
        if (folder / name).exists():
            with closing(sqlite3.connect(folder / name)) as db:
                out += [(name, *row) for row in db.execute("SELECT infno, state FROM records ORDER BY rowid")]
    return out


def moved(folder: Path) -> list[tuple[str, str]]:
    """What the virtual platform has done so far that the journal records: money moved, visits, the old
    card's account (accepted messages of the journaled transactions; not queries, sign-ins, the visit's
    information and fee details, which a retry clears and uploads again)."""
    path = folder / PLATFORM_DB
    if not path.exists():
        return []
    marks = ", ".join("?" * len(REVERSIBLE))
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT msgid, infno FROM messages WHERE infcode = 0 AND infno IN ({marks}) ORDER BY msgid",
                          sorted(REVERSIBLE)).fetchall()


class PullPlan:
    """Pull the card out at the ``at``-th command (0-based) the step sends, over all its cards."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.sent = 0
        self.pulled = False

    def connect(self, name: str) -> MemoryConnection:
        card = load_card(name)
        plan = self

        class Pulled(MemoryConnection):
            def _exchange(self, apdu: bytes) -> bytes:
                if plan.sent == plan.at:
                    plan.pulled = True
                    self.remove()
                plan.sent += 1
                return super()._exchange(apdu)

        return Pulled(card, name=f"sim:{name}")


def run_with_pull(step: Step, folder: Path, at: int) -> tuple[PullPlan, SSCardError | None]:
    plan = PullPlan(at)
    try:
        run_step(step, folder, io.StringIO(), plan.connect)
    except SSCardError as err:
        return plan, err
    return plan, None


def test_card_pulled_at_every_command_of_every_step_records_nothing_or_once(tmp_path):
    day = tmp_path / "day"
    day.mkdir()
    faults = completed_after_pull = 0
    for step in DAY:
        if not step.cards:  # nothing to pull: the step just moves the day on
            run_step(step, day, io.StringIO())
            continue
        before, platform_before = queued(day), moved(day)
        at = 0
        while True:
            attempt = tmp_path / f"attempt-{at}"
            shutil.rmtree(attempt, ignore_errors=True)
            shutil.copytree(day, attempt)
            plan, err = run_with_pull(step, attempt, at)
            after = queued(attempt)
            if err is not None:
                assert plan.pulled, f"{step.title}: failed without a fault: {err}"
                assert after == before, f"{step.title}: card pulled at command {at}: a half transaction was recorded"
                assert moved(attempt) == platform_before, f"{step.title}: card pulled at command {at}: the platform moved"
                faults += 1
                at += 1
                continue
            # completed: its messages are recorded once, whether or not a pull came after the card work
            assert after == before + [(PLACES[step.place][0], *record) for record in step.records], step.title
            assert len(moved(attempt)) - len(platform_before) == sum(state == "answered" for _, state in step.records)
            completed_after_pull += plan.pulled
            if not plan.pulled:
                break
            at += 1
        shutil.rmtree(day)
        shutil.copytree(attempt, day)
        assert at > 5, f"{step.title}: only {at} commands?"
    expected = [(PLACES[s.place][0], *record) for s in DAY for record in s.records]
    assert queued(day) == expected
    print(f"\ncard pulled at every command: {faults} fault runs over {len(DAY)} steps, "
          f"{completed_after_pull} completed despite a late pull, records lost 0, duplicates 0")


# --- the upload under fire -----------------------------------------------------------------------

def sscard(*args: str) -> list[str]:
    return [sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args]


def start_service(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(sscard("central", "serve", "--db", str(db), "--port", str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_platform(f"http://127.0.0.1:{port}", proc, seconds=20)
    return proc


def run_the_day(folder: Path) -> None:
    for step in DAY:
        run_step(step, folder, io.StringIO())


def more_admissions(folder: Path, n: int) -> None:
    """The desk keeps working while uploads crash: ``n`` more admissions like the day's."""
    from sscard.terminal.queue import Outbox

    name, station = PLACES["desk"]
    with Outbox(folder / name, station) as outbox:
        model = next(r for r in outbox.records() if r.infno == "2401")
        for _ in range(n):
            outbox.add("2401", model.input, insured_region=model.insured_region, card_sn=model.card_sn)


def all_msgids(folder: Path) -> list[str]:
    """The msgids of every record of the day that waits for the uploader (not the online calls)."""
    msgids = []
    marks = ", ".join("?" * len(DELIVERY))
    for name in QUEUES:
        with closing(sqlite3.connect(folder / name)) as db:
            msgids += [row[0] for row in db.execute(f"SELECT msgid FROM records WHERE state IN ({marks})", DELIVERY)]
    return msgids


#: kill rounds: which process dies in each (the pattern repeats), and how many rounds
VICTIMS, ROUNDS = ("service", "uploader", "none"), 15


def held_by_service(url: str) -> int:
    """Messages the central service has stored so far (its ``/_stats``)."""
    return httpx.get(f"{url}/_stats", timeout=5).json()["messages"]


def kill_mid_upload(victim: subprocess.Popen, uploader: subprocess.Popen, url: str, after: int) -> bool:
    """SIGKILL ``victim`` once the service holds ``after`` more messages than now, i.e. inside the
    uploader's batches rather than at a guessed moment; False when the uploader finished first."""
    target = held_by_service(url) + after
    deadline = time.monotonic() + 30
    while uploader.poll() is None and time.monotonic() < deadline:
        if held_by_service(url) >= target:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            return True
        time.sleep(0.005)
    return False


def test_upload_with_service_and_uploader_killed_at_random_ends_with_exactly_the_day(tmp_path):
    run_the_day(tmp_path)
    rng = random.Random(20261125)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    central_db = tmp_path / "central.sqlite"
    service = start_service(central_db, port)
    kills = {"service": 0, "uploader": 0}
    clinic = PLACES["desk"][0]  # where the admissions pile up: an uploader there has batches to be cut off in
    try:
        for round_no in range(ROUNDS):
            more_admissions(tmp_path, 60)
            victim = VICTIMS[round_no % len(VICTIMS)]
            queue = clinic if victim != "none" else QUEUES[round_no % len(QUEUES)]
            uploader = subprocess.Popen(
                sscard("queue", "upload", "-q", str(tmp_path / queue), "--central", url,
                       "--batch-size", "1", "--now", "--no-progress"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if victim != "none":  # after a random number (1 to 40) of the round's 60 batches have landed
                process = uploader if victim == "uploader" else service
                kills[victim] += kill_mid_upload(process, uploader, url, rng.randint(1, 40))
            try:
                uploader.wait(timeout=30)
            except subprocess.TimeoutExpired:
                uploader.kill()
                uploader.wait()
            if service.poll() is not None:
                service = start_service(central_db, port)
        orphans = sum(_states(tmp_path / name)["sending"] for name in QUEUES)  # batches cut off by a kill
        for name in QUEUES:  # the network is back: everything goes, orphans at once (no lease to wait for)
            final = subprocess.run(sscard("queue", "upload", "-q", str(tmp_path / name), "--central", url, "--now"),
                                   capture_output=True, text=True, timeout=120)
            assert final.returncode == 0, final.stderr
            waiting = {state for state in _states(tmp_path / name) if state in DELIVERY}
            assert waiting <= {"sent"}, (name, _states(tmp_path / name), final.stdout)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=10)
    msgids = all_msgids(tmp_path)
    with closing(sqlite3.connect(central_db)) as db:
        held = [row[0] for row in db.execute("SELECT msgid FROM messages WHERE infno != '9001'")]  # not sign-ins
    lost = set(msgids) - set(held)
    extra = set(held) - set(msgids)
    duplicates = len(held) - len(set(held))
    print(f"\nupload under fire: {len(msgids)} records, service killed {kills['service']} times, uploader "
          f"{kills['uploader']} times ({orphans} records left sending); records lost {len(lost)}, duplicates {duplicates}, unknown {len(extra)}")
    assert kills["service"] == kills["uploader"] == ROUNDS // len(VICTIMS), kills  # every kill round killed mid-upload
    assert not lost and not extra and duplicates == 0


def _states(path: Path) -> dict[str, int]:
    """Records per state in one queue file (states with none left out)."""
    with closing(sqlite3.connect(path)) as db:
        return collections.defaultdict(int, db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall())


# --- pcscd killed and restarted mid-flow -------------------------------------------------------

@pytest.mark.pcsc
def test_pcscd_restarted_while_a_registration_waits_for_the_pin(pcscd, vpcd_card, tmp_path):
    if not pcscd.started_here:
        pytest.skip("pcscd was already running: the tests restart only their own")
    from flowing import write_config

    config = write_config(tmp_path)
    env = {**os.environ, "SSCARD_CONFIG": str(config)}
    args = sscard("desk", "register", "-r", "Virtual PCD 00 00", "--type", "outpatient", "--department", "内科",
                  "--pin-stdin")
    vpcd_card("adult", slot=0, process=True)
    desk = subprocess.Popen(args, env={**env, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = _read_until(desk, "genuine")  # checked and read: the desk now waits for the PIN on stdin
    pcscd.restart()
    out, err = desk.communicate("246810\n", timeout=60)
    assert desk.returncode in (3, 4), said + out + err
    assert "Error: " in err and "Traceback" not in err
    print(f"\npcscd restarted mid-registration: exit {desk.returncode}, {err.strip().splitlines()[-1]}")
    assert _records(tmp_path) == []
    # the same registration, now that pcscd is back and the card is seen again
    from pcscd import wait_card

    wait_card("Virtual PCD 00 00", True, timeout=15)
    again = subprocess.run(args, env=env, input="246810\n", capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert _records(tmp_path) == ["2201"]


def _records(folder: Path) -> list[str]:
    path = folder / "queue.sqlite"
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT infno FROM records")]


def _read_until(proc: subprocess.Popen, word: str, timeout: float = 30) -> str:
    """What ``proc`` printed on stdout up to the line holding ``word``."""
    import select

    seen = ""
    deadline = time.monotonic() + timeout
    while word not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"never said {word!r}: {seen!r} {proc.stderr.read() if proc.poll() is not None else ''}")
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += proc.stdout.readline()
    return seen
