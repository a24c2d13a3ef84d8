"""The bank activation in two phases (terminal/flows/bank.py): the SS01 record is queued *held* before
the card is changed and released after, so a card is never activated without its record and a record
is never sent for a card that was not changed. Real SQLite files, virtual cards in memory."""
from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner
from flowing import STATION, clerk, platform, site, write_config  # noqa: F401  (fixtures)
from queueing import Clock, central  # noqa: F401  (fixture)

from sscard.drivers.errors import CardRemovedError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.drivers.simulator.base import WrappedCard
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.flows.bank import bank_activate
from sscard.terminal.flows.common import Site
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.queue import MIGRATIONS, SCHEMA_VERSION, Outbox, QueueError
from sscard.terminal.upload import Uploader

ID_NUMBER = "330302199203081020"  # not-activated.json's holder
PIN = "135792"
UNBLOCK, RELOAD = 0x18, 0x5E  # INS of APPLICATION UNBLOCK (84 18) and RELOAD PIN (80 5E)


class Watched(WrappedCard):
    """A virtual chip that runs ``hook`` right after it has executed the command with INS ``ins``
    (the card changed, its answer not yet back at the terminal)."""

    def __init__(self, inner, ins: int, hook) -> None:
        super().__init__(inner)
        self.ins, self.hook = ins, hook

    def execute(self, apdu: bytes) -> bytes:
        answer = self.inner.execute(apdu)
        if len(apdu) > 1 and apdu[1] == self.ins:
            self.hook()
        return answer


class Killed(BaseException):
    """The process dies here (nothing of the flow's own clean-up may run)."""


class KilledAtRelease(Outbox):
    """An outbox whose process is killed the moment the flow releases the held record."""

    def release(self, msgid):
        raise Killed()


def ss01(outbox: Outbox) -> list:
    return [r for r in outbox.records() if r.infno == "SS01"]


def active(card) -> bool:
    return SocialSecurityCard(MemoryConnection(card)).select()


def test_the_record_is_held_while_the_card_changes_and_pending_after(site):
    seen = {}

    def during_unblock():
        seen["states"] = [r.state for r in site.outbox.records()]
        seen["claimed"] = site.outbox.claim(10, lease=60, ignore_schedule=True)

    card = Watched(load_card("not-activated"), UNBLOCK, during_unblock)
    result = bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN))
    assert seen == {"states": ["held"], "claimed": []}  # queued before the change; no uploader took it
    assert result.record.state == "pending" and [r.state for r in ss01(site.outbox)] == ["pending"]
    assert result.record.next_attempt_at <= site.outbox.now() and not result.resumed
    assert active(card.inner)


def test_a_queue_that_cannot_take_the_record_stops_the_flow_before_the_card_changes(site):
    pages = site.outbox.db.execute("PRAGMA page_count").fetchone()[0]
    site.outbox.db.execute(f"PRAGMA max_page_count={pages}")  # a full disk (tests/test_queue.py)
    card = load_card("not-activated")
    for size in (3000, 1000, 300, 100, 30):  # fill the free room of the last pages with registrations
        with pytest.raises(QueueError, match="disk is full"):
            for _ in range(200):
                site.outbox.add("2201", {"data": {"note": "x" * size}}, insured_region="330300")
    with pytest.raises(QueueError, match="disk is full") as full:
        bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN))
    assert exit_code(full.value) == 13
    assert not active(card) and ss01(site.outbox) == []  # the card is untouched: nothing to record
    site.outbox.db.execute("PRAGMA max_page_count=1073741823")
    bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN))
    assert active(card) and len(ss01(site.outbox)) == 1


def test_queue_failure_after_the_card_change_then_retry_records_exactly_one_activation(tmp_path):
    path = tmp_path / "queue.sqlite"
    with Outbox(path, STATION, clock=Clock(), busy_timeout_ms=200) as outbox:
        locker = sqlite3.connect(path, isolation_level=None)  # once the journal exists: a 0-byte file is refused
        site = Site(outbox, SoftwareKeyStore.bundled_test_keys())
        # another program holds the queue's write lock from the moment the card took the UNBLOCK
        card = Watched(load_card("not-activated"), UNBLOCK, lambda: locker.execute("BEGIN IMMEDIATE"))
        with pytest.raises(QueueError) as failed:
            bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN))
        locker.execute("ROLLBACK")
        message = str(failed.value)
        assert exit_code(failed.value) == 13 and "locked" in message
        (held,) = outbox.held()
        assert "The card IS activated" in message and held.msgid in message and "sscard bank activate" in message
        assert ID_NUMBER not in message and PIN not in message
        assert active(card.inner)
        # the clerk runs it again with the card: the activation is recorded, once
        said = clerk()
        again = bank_activate(MemoryConnection(card.inner), site, ID_NUMBER, said)
        assert again.resumed and again.record.msgid == held.msgid and again.record.state == "pending"
        assert [r.msgid for r in ss01(outbox)] == [held.msgid] and outbox.held() == []
        assert f"Activation recorded ({held.msgid})." in said.said
        assert again.to_dict()["resumed_interrupted_activation"] is True
    locker.close()


def test_a_kill_between_the_card_change_and_the_release_is_finished_by_the_next_run(tmp_path):
    path = tmp_path / "queue.sqlite"
    card = load_card("not-activated")
    with KilledAtRelease(path, STATION, clock=Clock()) as doomed:
        with pytest.raises(Killed):
            bank_activate(MemoryConnection(card), Site(doomed, SoftwareKeyStore.bundled_test_keys()), ID_NUMBER,
                          clerk(PIN, PIN))
    assert active(card)
    with Outbox(path, clock=Clock()) as outbox:  # the terminal after a restart
        (held,) = outbox.held()
        assert outbox.counts()["held"] == 1 and outbox.claim(10, lease=60, ignore_schedule=True) == []
        site = Site(outbox, SoftwareKeyStore.bundled_test_keys())
        # not yet recorded: the card is not active at this terminal for the desk or the kiosk
        assert outbox.for_card(held.card_sn) == []
        listed = CliRunner().invoke(main, ["queue", "list", "-q", str(path), "--state", "held", "--json"])
        assert listed.exit_code == 0, listed.output
        assert [r["msgid"] for r in json.loads(listed.stdout)] == [held.msgid]
        again = bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk())
        assert again.resumed and [(r.msgid, r.state) for r in ss01(outbox)] == [(held.msgid, "pending")]
        with pytest.raises(Exception, match="already activated"):  # and only once
            bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk())
        assert len(ss01(outbox)) == 1


def test_a_kill_before_the_card_change_is_withdrawn_by_the_next_run(site):
    card = load_card("not-activated")

    def die(held):
        raise Killed()

    with pytest.raises(Killed):
        bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN), before_change=die)
    (stale,) = site.outbox.held()
    assert not active(card)
    said = clerk(PIN, PIN)
    result = bank_activate(MemoryConnection(card), site, ID_NUMBER, said)
    assert any("interrupted before the card was changed" in line for line in said.said)
    assert [r.msgid for r in ss01(site.outbox)] == [result.record.msgid] != [stale.msgid]
    assert site.outbox.held() == [] and active(card) and result.record.msgid > stale.msgid


def test_the_card_pulled_mid_change_leaves_nothing_held_or_pending(site):
    probe = MemoryConnection(load_card("not-activated"))
    bank_activate(probe, site, ID_NUMBER, clerk(PIN, PIN))
    total = probe.apdu_count
    site.outbox.db.execute("DELETE FROM records")
    pulled_in_change = 0
    for n in range(total):
        card = load_card("not-activated")
        connection = MemoryConnection(card, remove_after=n)
        with pytest.raises(CardRemovedError):
            bank_activate(connection, site, ID_NUMBER, clerk(PIN, PIN))
        assert site.outbox.counts() == {"pending": 0, "sending": 0, "sent": 0, "dead": 0}, n  # no "held" either
        assert not active(card), n
        pulled_in_change += n >= total - 4  # GET CHALLENGE + RELOAD, GET CHALLENGE + UNBLOCK
        # the card back in: activated, one record
        result = bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk(PIN, PIN))
        assert [r.msgid for r in ss01(site.outbox)] == [result.record.msgid]
        site.outbox.db.execute("DELETE FROM records")
    assert pulled_in_change == 4


def test_the_uploader_never_sends_a_held_record(site, central):
    card = load_card("not-activated")
    with pytest.raises(Killed):
        bank_activate(MemoryConnection(card), Site(_killed_at_release(site), site.keys), ID_NUMBER, clerk(PIN, PIN))
    (held,) = site.outbox.held()
    other = site.outbox.add("2201", {"data": {"psn_no": "3303000000000002", "insutype": "310", "dept_name": "内科"}},
                            insured_region="330300")
    with Uploader(site.outbox, central.url) as uploader:
        report = uploader.drain()
    assert report.sent == 1 and central.ledger.message(other.msgid) is not None
    assert central.ledger.message(held.msgid) is None and site.outbox.get(held.msgid).state == "held"
    # `sscard queue upload --now` (claim ignoring retry times) leaves it too; `queue status` counts it
    result = CliRunner().invoke(main, ["queue", "upload", "-q", str(site.outbox.path), "--central", central.url,
                                       "--now"])
    assert result.exit_code == 0, result.output
    assert central.ledger.message(held.msgid) is None and site.outbox.get(held.msgid).state == "held"
    status = CliRunner().invoke(main, ["queue", "status", "-q", str(site.outbox.path), "--json"])
    assert json.loads(status.stdout)["held"] == 1
    # released by the next run with the card: then it goes
    bank_activate(MemoryConnection(card), site, ID_NUMBER, clerk())
    with Uploader(site.outbox, central.url) as uploader:
        assert uploader.drain().sent == 1
    assert central.ledger.message(held.msgid) is not None and site.outbox.get(held.msgid).state == "sent"


def _killed_at_release(site) -> Outbox:
    return KilledAtRelease(site.outbox.path, clock=site.outbox.clock)


def test_a_version_3_queue_is_migrated_to_admit_held_records(tmp_path):
    assert SCHEMA_VERSION == 6
    path = tmp_path / "v3.sqlite"
    with Outbox(tmp_path / "donor.sqlite", STATION, clock=Clock()) as donor:
        made = [donor.add("2201", {"data": {"n": i}}, insured_region="330300") for i in range(3)]
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:3]:
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=3")
    for record, state in zip(made, ["sent", "dead", "pending"]):
        conn.execute("INSERT INTO records (id, msgid, infno, created_at, card_sn, insured_region, treatment_region,"
                     " envelope, state) VALUES (?, ?, '2201', ?, NULL, '330300', '330300', ?, ?)",
                     [int(record.msgid[12:]), record.msgid, record.created_at.isoformat(), record.envelope, state])
    conn.execute("INSERT INTO meta VALUES ('station', ?)", [STATION.to_json()])
    with pytest.raises(sqlite3.IntegrityError):  # schema 3 refuses the new state
        conn.execute("UPDATE records SET state = 'held' WHERE msgid = ?", [made[2].msgid])
    conn.close()
    with Outbox(path, clock=Clock()) as box:
        assert box.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [(r.msgid, r.state, r.envelope) for r in box.records()][::-1] == [
            (r.msgid, s, r.envelope) for r, s in zip(made, ["sent", "dead", "pending"])]
        held = box.add("SS01", {"data": {}}, insured_region="330300", card_sn="X", held=True)
        assert box.get(held.msgid).state == "held" and box.counts()["held"] == 1
        assert box.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with pytest.raises(sqlite3.IntegrityError):
            box.db.execute("UPDATE records SET state = 'bogus'")
        assert box.withdraw(held.msgid) and box.held() == [] and not box.withdraw(held.msgid)
        assert box.add("2201", {"data": {}}, insured_region="330300").msgid > held.msgid  # msgid not reused


def test_a_card_stalling_in_the_change_leaves_the_record_held_and_says_how_to_finish(tmp_path, site):
    import subprocess
    import sys

    probe = MemoryConnection(load_card("not-activated"))
    bank_activate(probe, site, ID_NUMBER, clerk(PIN, PIN))
    config = write_config(tmp_path / "bank")
    # the card answers everything up to APPLICATION UNBLOCK (the last command), then stalls on it
    reader = f"sim:hostile:stall:not-activated:{probe.apdu_count - 1}"
    result = subprocess.run(
        [sys.executable, "-c", "from sscard.terminal.cli import main; main()", "--card-timeout", "1", "bank", "activate",
         "--reader", reader, "--pin-stdin", "--config", str(config)],
        input=f"{ID_NUMBER}\n{PIN}\n{PIN}\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 4, result.stderr
    assert "has not answered for" in result.stderr and "Traceback" not in result.stderr
    with Outbox(tmp_path / "bank" / "queue.sqlite") as outbox:
        (held,) = outbox.held()
        assert outbox.counts() == {"pending": 0, "sending": 0, "sent": 0, "dead": 0, "held": 1}
    assert f"its record {held.msgid} is held in the queue (not sent)" in result.stderr
    assert "run 'sscard bank activate' again" in result.stderr and PIN not in result.stderr
    status = CliRunner().invoke(main, ["queue", "status", "-q", str(tmp_path / "bank" / "queue.sqlite")])
    assert "held 1" in status.output


class LostAnswer(Watched):
    """A chip that executes APPLICATION UNBLOCK but whose answer to it is lost (6F00 comes back), once."""

    def __init__(self, inner) -> None:
        super().__init__(inner, UNBLOCK, lambda: None)
        self.lost = False

    def execute(self, apdu: bytes) -> bytes:
        answer = self.inner.execute(apdu)
        if len(apdu) > 1 and apdu[1] == UNBLOCK and not self.lost:
            self.lost = True
            return b"\x6f\x00"
        return answer


def test_a_change_whose_answer_was_lost_but_took_is_recorded(site):
    card = LostAnswer(load_card("not-activated"))
    said = clerk(PIN, PIN)
    result = bank_activate(MemoryConnection(card), site, ID_NUMBER, said)
    assert card.lost and active(card.inner)
    assert [(r.msgid, r.state) for r in ss01(site.outbox)] == [(result.record.msgid, "pending")]
    assert any("the card says it is activated now" in line for line in said.said)
