"""The local outbox on real SQLite files: envelopes, msgids, durability, concurrency, states."""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from queueing import (  # noqa: F401
    CARD,
    OTHER_CARD,
    PERSONS,
    STATION,
    Clock,
    as_unprivileged,
    central,
    clock,
    outbox,
    purchase,
    read_only,
    registration,
)

from sscard.central import REQUIRED
from sscard.message.envelope import CST, Envelope, Fen, MessageError, Operator, Station, msgid_time, parse_yuan, yuan
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.errors import ConfigError
from sscard.terminal.queue import SCHEMA_VERSION, Outbox, Outcome, QueueError, RecordError

ROOT = Path(__file__).resolve().parents[1]


# --- the envelope as queued ---------------------------------------------------------------------

def test_a_queued_record_is_its_final_envelope_with_a_30_character_msgid(outbox, clock):
    record = registration(outbox)
    message = json.loads(record.envelope)
    assert set(REQUIRED) <= set(message)
    assert record.msgid == message["msgid"] == "H11010500001" + "20260301093000" + "0700"
    assert len(record.msgid) == 30
    assert message["inf_time"] == "2026-03-01 09:30:00"
    assert message["mdtrtarea_admvs"] == message["insuplc_admdvs"] == "110105"
    assert message["fixmedins_name"] == "北京测试医院" and message["opter_name"] == "王医生"
    assert message["sign_no"] == ""
    assert record.state == "pending" and record.attempts == 0 and not record.cross_region


def test_a_card_from_another_region_is_flagged_cross_region(outbox):
    record = registration(outbox, insured_region="310101")
    assert record.cross_region
    assert json.loads(record.envelope)["insuplc_admdvs"] == "310101"
    assert record.summary()["cross_region"] is True


def test_times_are_beijing_time_whatever_zone_the_clock_reports(tmp_path):
    utc = Clock(dt.datetime(2026, 3, 1, 1, 30, 0, tzinfo=dt.UTC))
    with Outbox(tmp_path / "q.sqlite", STATION, clock=utc) as box:
        record = registration(box)
    assert record.msgid[12:26] == "20260301093000"
    assert json.loads(record.envelope)["inf_time"] == "2026-03-01 09:30:00"
    assert record.created_at == dt.datetime(2026, 3, 1, 9, 30, tzinfo=CST)


def test_amounts_are_fen_inside_and_yuan_with_two_decimals_on_the_wire(outbox):
    record = purchase(outbox, total=Fen(2350))
    assert record.input["data"]["medfee_sumamt"] == "23.50"
    assert parse_yuan(record.input["data"]["medfee_sumamt"]) == 2350
    transfer = outbox.add("SS02", {"data": {"acct_balc": Fen(5)}}, insured_region="110105")
    assert transfer.input["data"]["acct_balc"] == "0.05"


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_yuan_round_trips_every_amount(fen):
    text = yuan(fen)
    assert text.rsplit(".", 1)[1].isdigit() and len(text.rsplit(".", 1)[1]) == 2
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["12.3", "12", "12.345", "1e3", " 1.00", "", None, 12.34, "-.50"])
def test_parse_yuan_refuses_anything_but_two_decimals(text):
    with pytest.raises(MessageError):
        parse_yuan(text)


@pytest.mark.parametrize(
    "infno, body, region",
    [
        ("9999", {}, "110105"),                         # not a transaction the terminal sends
        ("2201", {"data": {}}, "11010"),                # insured region not 6 digits
        ("2201", ["not", "an", "object"], "110105"),    # input must be an object
        ("SS02", {"data": {"acct_balc": 23.5}}, "110105"),  # a float amount
        ("2102", {"data": {"medfee_sumamt": Fen(2350)}}, "110105"),  # a settlement is an online call
        ("2201", {"data": {"when": object()}}, "110105"),       # not JSON
    ],
)
def test_an_invalid_record_is_refused_and_nothing_is_queued(outbox, infno, body, region):
    with pytest.raises(RecordError):
        outbox.add(infno, body, insured_region=region)
    assert outbox.counts()["pending"] == 0
    assert registration(outbox).msgid.endswith("0700")  # rolled back: no msgid was used up
    assert outbox.counts()["pending"] == 1


@pytest.mark.parametrize(
    "infno, data, wrong",
    [
        ("2102", {"medfee_sumamt": "23.5"}, "medfee_sumamt"),                 # text the platform refuses
        ("2102", {"medfee_sumamt": "23.50"}, "medfee_sumamt"),                # even well-formed text
        ("2207", {"medfee_sumamt": 2350}, "medfee_sumamt"),                   # a plain int: fen or yuan?
        ("2102", {}, "medfee_sumamt"),                                        # missing
        ("2101", {"medfee_sumamt": None}, "medfee_sumamt"),
        ("2101", {"medfee_sumamt": Fen(10**15)}, "medfee_sumamt"),            # past 13 digits of yuan
        ("3201", {"medfee_sumamt": Fen(1), "fund_pay_sumamt": Fen(0)}, "acct_pay"),
        ("2101", "23.50", "input.data"),
    ],
)
def test_a_settlement_without_its_amounts_as_fen_is_refused_before_it_is_journaled(outbox, infno, data, wrong):
    with pytest.raises(RecordError) as err:
        outbox.begin_call(infno, {"data": data}, insured_region="110105")
    assert wrong in str(err.value) and exit_code(err.value) == 13
    assert outbox.records() == []
    assert registration(outbox).msgid.endswith("0700")  # nothing was kept, no msgid used up


def test_the_largest_amounts_the_wire_carries_are_journaled_and_parsed_back(outbox):
    from sscard.message.envelope import MAX_FEN

    record = purchase(outbox, total=Fen(MAX_FEN))
    assert record.input["data"]["medfee_sumamt"] == "9999999999999.99"
    assert parse_yuan(record.input["data"]["medfee_sumamt"]) == MAX_FEN
    outbox.add("2201", {"data": {"medfee_sumamt": "not a settlement"}}, insured_region="110105")  # others pass


@pytest.mark.parametrize(
    "change", [{"fixmedins_code": "H1101"}, {"region": "北京"}, {"terminal_no": 100}, {"terminal_no": -1}]
)
def test_invalid_station_settings_are_refused(change):
    with pytest.raises(MessageError):  # terminal.config turns it into a ConfigError (exit 12)
        replace(STATION, **change)


# --- msgids -------------------------------------------------------------------------------------

def test_more_than_100_records_in_one_second_borrow_the_next_second_and_stay_unique(outbox):
    ids = [registration(outbox).msgid for _ in range(250)]
    assert len(set(ids)) == 250
    assert ids == sorted(ids)
    assert {i[26:28] for i in ids} == {"07"}  # the terminal number
    stamps = [i[12:26] for i in ids]
    assert stamps.count("20260301093000") == 100
    assert stamps.count("20260301093001") == 100
    assert stamps[-1] == "20260301093002"


def test_a_clock_set_back_never_reuses_a_msgid(outbox, clock):
    first = registration(outbox).msgid
    clock.tick(-3600)
    second = registration(outbox).msgid
    assert second > first
    assert msgid_time(second) == msgid_time(first)
    clock.tick(7200)
    assert msgid_time(registration(outbox).msgid) == dt.datetime(2026, 3, 1, 10, 30, tzinfo=CST)


def test_two_terminals_of_one_institution_never_share_a_msgid(tmp_path, clock):
    other = Station(STATION.fixmedins_code, STATION.fixmedins_name, STATION.region, 8, STATION.operator)
    with Outbox(tmp_path / "a.sqlite", STATION, clock=clock) as a, Outbox(tmp_path / "b.sqlite", other, clock=clock) as b:
        ids_a = {registration(a).msgid for _ in range(50)}
        ids_b = {registration(b).msgid for _ in range(50)}
    assert len(ids_a | ids_b) == 100


ADDER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from queueing import STATION, registration
    from sscard.terminal.queue import Outbox
    box = Outbox(sys.argv[1], STATION)
    for _ in range(int(sys.argv[3])):
        record = registration(box)
    print(record.msgid, flush=True)
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no clean exit: a power cut as far as SQLite knows
    """
)


def run_adder(path: Path, count: int, how: str = "close", **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ADDER, str(path), str(Path(__file__).parent), str(count), how],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, **options,
    )


def test_a_record_add_returned_survives_the_process_being_killed(tmp_path):
    path = tmp_path / "q.sqlite"
    adder = run_adder(path, 3, "kill")
    last, _ = adder.communicate(timeout=60)
    assert adder.returncode == -9
    with Outbox(path) as box:
        assert box.get(last.strip()).state == "pending"
        assert box.counts()["pending"] == 3


def test_two_processes_adding_at_once_get_distinct_msgids_and_lose_nothing(tmp_path):
    path = tmp_path / "q.sqlite"
    Outbox(path, STATION).close()
    adders = [run_adder(path, 200, stderr=subprocess.PIPE) for _ in range(2)]
    for adder in adders:
        _, errors = adder.communicate(timeout=60)
        assert adder.returncode == 0 and "locked" not in errors, errors
    with Outbox(path) as box:
        ids = [r.msgid for r in box.pending()]
    assert len(ids) == len(set(ids)) == 400


# --- files ----------------------------------------------------------------------------------------

def test_the_station_is_saved_in_the_queue_for_later_openers(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    Outbox(path, STATION, clock=clock).close()
    with Outbox(path, clock=clock) as box:
        assert box.station == STATION
        assert registration(box).msgid.startswith(STATION.fixmedins_code)


def test_a_queue_without_station_cannot_queue(tmp_path):
    with Outbox(tmp_path / "q.sqlite") as box, pytest.raises(ConfigError):
        registration(box)


def test_inspection_refuses_a_missing_queue_file(tmp_path):
    with pytest.raises(QueueError, match="No record queue"):
        Outbox(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_a_damaged_file_is_a_queue_error_naming_it(tmp_path):
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueError, match=str(path)) as caught:
        Outbox(path, STATION)
    assert exit_code(caught.value) == 13


def test_a_queue_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "q.sqlite"
    Outbox(path, STATION).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(QueueError, match="newer version"):
        Outbox(path)


def test_every_connection_is_set_up_explicitly(outbox):
    conn = outbox.db
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.isolation_level is None  # no implicit transactions: every write is our BEGIN IMMEDIATE
    registration(outbox)
    assert not conn.in_transaction
    with Outbox(outbox.path, busy_timeout_ms=250) as other:
        assert other.db.execute("PRAGMA busy_timeout").fetchone()[0] == 250


def test_a_write_waits_for_another_processs_write_lock_then_goes_through(tmp_path):
    path = tmp_path / "q.sqlite"
    Outbox(path, STATION).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another desk window in the middle of its write
    with Outbox(path, busy_timeout_ms=100) as impatient:
        with pytest.raises(QueueError, match="locked for too long") as caught:
            registration(impatient)
        assert "NOT saved" in str(caught.value)
        holder.execute("ROLLBACK")
        assert registration(impatient).state == "pending"
    holder.close()


#: the schema as version 1 of this module wrote it (kept here verbatim: the file an upgrade meets)
SCHEMA_V1 = """
CREATE TABLE records (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'rejected')),
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT);
CREATE INDEX records_status ON records (status);
CREATE INDEX records_card ON records (card_sn);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


def test_a_version_1_queue_is_migrated_and_keeps_every_record(tmp_path, clock):
    path = tmp_path / "old.sqlite"
    with Outbox(tmp_path / "donor.sqlite", STATION, clock=clock) as donor:  # real envelopes for the rows
        envelopes = [registration(donor) for _ in range(3)]
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    for record, status in zip(envelopes, ["pending", "sent", "rejected"]):
        conn.execute(
            "INSERT INTO records (msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,"
            " status, attempts, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 2, ?)",
            [record.msgid, "2201", record.created_at.isoformat(), CARD, "110105", "110105", record.envelope, status,
             "bad insutype" if status == "rejected" else None],
        )
    conn.execute("INSERT INTO meta VALUES ('station', ?)", [STATION.to_json()])
    conn.execute("INSERT INTO meta VALUES ('msgid_last', '20260301093000/2')")
    conn.commit()
    conn.close()

    with Outbox(path, clock=clock) as box:
        assert box.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        old = [box.get(r.msgid) for r in envelopes]
        assert [(r.state, r.attempts) for r in old] == [("pending", 2), ("sent", 2), ("dead", 2)]
        assert old[2].last_error == "bad insutype"
        assert [r.msgid for r in box.claim(10, lease=60)] == [envelopes[0].msgid]  # due at once
        assert registration(box).msgid.endswith("0703")  # the msgid counter carried over
        assert box.retry_dead() == 1
    with Outbox(path, clock=clock) as again:  # opening a current file migrates nothing
        assert again.counts() == {"pending": 2, "sending": 1, "sent": 1, "dead": 0}


#: the schema as version 2 of this module wrote it: msgid the text primary key, the counter in meta
SCHEMA_V2 = """
CREATE TABLE records (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, created_at TEXT NOT NULL, card_sn TEXT,
    insured_region TEXT NOT NULL, treatment_region TEXT NOT NULL, envelope TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT, done_at TEXT, infcode INTEGER, reply TEXT);
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_card ON records (card_sn);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=2;
"""


def test_a_version_2_queue_is_migrated_keeps_every_record_and_never_reuses_a_msgid(tmp_path, clock):
    path = tmp_path / "old.sqlite"
    with Outbox(tmp_path / "donor.sqlite", STATION, clock=clock) as donor:
        made = [registration(donor) for _ in range(3)]  # ...0700, 0701, 0702
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V2)
    for record, state in zip(made, ["sent", "dead", "pending"]):
        conn.execute(
            "INSERT INTO records (msgid, infno, created_at, card_sn, insured_region, treatment_region, envelope,"
            " state, attempts, next_attempt_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, 0, ?)",
            [record.msgid, "2201", record.created_at.isoformat(), CARD, "110105", "110105", record.envelope, state,
             "bad insutype" if state == "dead" else None],
        )
    conn.execute("INSERT INTO meta VALUES ('station', ?)", [STATION.to_json()])
    # the last msgid issued was a sign-in (0705) after the last record (0702): it must stay used
    conn.execute("INSERT INTO meta VALUES ('msgid_last', '20260301093000/5')")
    conn.commit()
    conn.close()

    with Outbox(path, clock=clock) as box:
        assert box.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert [box.get(r.msgid).envelope for r in made] == [r.envelope for r in made]
        assert [r.state for r in box.records()] == ["pending", "dead", "sent"]  # newest first, as before
        assert box.get(made[1].msgid).last_error == "bad insutype"
        assert box.db.execute("SELECT key FROM meta WHERE key = 'msgid_last'").fetchone() is None
        assert registration(box).msgid.endswith("0706")  # above the sign-in's msgid, not just the records'
        assert [r.msgid for r in box.claim(10, lease=60)][0] == made[2].msgid  # the old one first
        assert box.retry_dead([made[1].msgid]) == 1
        assert box.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert box.db.execute("SELECT count(*) FROM records WHERE id != CAST(substr(msgid, 13) AS INTEGER)"
                              ).fetchone()[0] == 0
    with Outbox(path, clock=clock) as again:
        assert again.counts() == {"pending": 1, "sending": 2, "sent": 1, "dead": 0}


def test_the_table_key_refuses_a_msgid_that_does_not_match_it(outbox):
    registration(outbox)
    with pytest.raises(sqlite3.IntegrityError):  # a second row with the same digits cannot exist
        outbox.db.execute("INSERT INTO records (id, msgid, infno, created_at, insured_region,"
                               " treatment_region, envelope) SELECT id, 'X' || substr(msgid, 2), infno,"
                               " created_at, insured_region, treatment_region, envelope FROM records")
    with pytest.raises(sqlite3.IntegrityError):  # nor a msgid whose digits are not its id
        outbox.db.execute("INSERT INTO records (id, msgid, infno, created_at, insured_region,"
                               " treatment_region, envelope) VALUES (1, 'H11010500001202603010930000799',"
                               " '2201', '', '110105', '110105', '{}')")


def test_connections_taking_turns_never_reuse_a_msgid_nor_go_backwards(tmp_path, clock):
    """Each connection remembers its last id; another one's record or sign-in in between is seen."""
    path = tmp_path / "q.sqlite"
    with Outbox(path, STATION, clock=clock) as a, Outbox(path, clock=clock) as b:
        issued = []
        for turn in range(120):
            box = (a, b, b, a)[turn % 4]
            issued.append(box.next_msgid() if turn % 7 == 3 else registration(box).msgid)
            if turn % 50 == 49:
                clock.tick(-30)  # a clock set back: stamps reuse the last second
        stored = [r.msgid for r in a.records()][::-1]
    assert issued == sorted(issued) and len(set(issued)) == len(issued)
    assert stored == [m for m in issued if m in set(stored)]
    assert len(stored) == 120 - len([t for t in range(120) if t % 7 == 3])


def test_the_queued_envelope_is_exactly_what_the_envelope_class_writes(outbox, clock):
    record = purchase(outbox)
    message = json.loads(record.envelope)
    again = Envelope(
        message["infno"], record.msgid, STATION, STATION.operator, message["insuplc_admdvs"], clock(),
        {"data": {"psn_no": PERSONS["110105"], "med_type": "41", "medfee_sumamt": Fen(2350), "chrg_bchno": "T1"}},
    )
    assert record.envelope == again.to_wire()
    other = Operator("D002", "李医生\"@m@\"@@t@@")  # quotes, and the marks the template would use
    record = outbox.add("2201", {"data": {"名": "张三"}}, insured_region="310101", operator=other)
    assert record.envelope == Envelope("2201", record.msgid, STATION, other, "310101", clock(),
                                       {"data": {"名": "张三"}}).to_wire()


def test_a_full_disk_is_a_clear_error_and_the_record_is_not_saved(outbox):
    """A full disk, simulated with SQLite's ``PRAGMA max_page_count`` on the queue's own connection:
    the database cannot grow past its current pages, exactly as when the disk has no room left."""
    saved = [registration(outbox).msgid]
    pages = outbox.db.execute("PRAGMA page_count").fetchone()[0]
    outbox.db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(QueueError) as caught:
        for _ in range(200):
            saved.append(registration(outbox, note="x" * 3000).msgid)  # add() returned: saved
    assert "disk is full" in str(caught.value) and "NOT saved" in str(caught.value)
    assert exit_code(caught.value) == 13 and CARD not in str(caught.value)
    outbox.db.execute("PRAGMA max_page_count=1073741823")
    assert [r.msgid for r in outbox.pending()] == saved
    following = registration(outbox).msgid
    assert int(following[-2:]) == int(saved[-1][-2:]) + 1  # the failed add used up no msgid


ENQUEUE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from queueing import registration
    from sscard.terminal.cli.exits import exit_code
    from sscard.terminal.queue import Outbox, QueueError
    try:
        with Outbox(sys.argv[1]) as box:
            print("saved", registration(box).msgid)
    except QueueError as err:
        print(err, file=sys.stderr)
        sys.exit(exit_code(err))
    """
)


def test_a_read_only_queue_is_a_clear_error_and_the_record_is_not_saved(outbox):
    registration(outbox)
    outbox.close()
    with read_only(outbox.path):
        attempt = subprocess.run(
            [sys.executable, "-c", ENQUEUE, str(outbox.path), str(Path(__file__).parent)],
            capture_output=True, text=True, cwd=ROOT, preexec_fn=as_unprivileged, timeout=60,
        )
    assert attempt.returncode == 13, attempt.stderr
    assert "saved" not in attempt.stdout
    assert str(outbox.path) in attempt.stderr and "read-only" in attempt.stderr
    assert "Traceback" not in attempt.stderr
    with Outbox(outbox.path) as box:
        assert box.counts()["pending"] == 1


# --- states ---------------------------------------------------------------------------------------

def test_answers_settle_records_once_and_failures_keep_them_pending(outbox, clock):
    a, b, c = (registration(outbox) for _ in range(3))
    claimed = outbox.claim(10, lease=60)
    assert [r.msgid for r in claimed] == [a.msgid, b.msgid, c.msgid]
    assert {(r.state, r.attempts) for r in claimed} == {("sending", 1)}
    assert outbox.claim(10, lease=60) == []  # leased: no second uploader takes them
    outbox.retry_later([(a.msgid, clock().timestamp()), (b.msgid, clock().timestamp()),
                        (c.msgid, clock().timestamp() + 30)], "connection refused")
    clock.tick(60)
    assert outbox.settle([Outcome(a.msgid, 0, "", {"infcode": 0}), Outcome(b.msgid, -1, "bad insutype")]) == (1, 1)
    assert outbox.settle([Outcome(a.msgid, -1, "late"), Outcome(b.msgid, 0)]) == (0, 0)  # final states stay

    sent, dead, pending = outbox.get(a.msgid), outbox.get(b.msgid), outbox.get(c.msgid)
    assert (sent.state, sent.attempts, sent.reply, sent.last_error) == ("sent", 1, {"infcode": 0}, None)
    assert sent.done_at == dt.datetime(2026, 3, 1, 9, 31, tzinfo=CST)
    assert (dead.state, dead.infcode, dead.last_error) == ("dead", -1, "bad insutype")
    assert (pending.state, pending.attempts, pending.last_error) == ("pending", 1, "connection refused")
    assert pending.next_attempt == dt.datetime(2026, 3, 1, 9, 30, 30, tzinfo=CST)
    assert outbox.counts() == {"pending": 1, "sending": 0, "sent": 1, "dead": 1}
    assert [r.msgid for r in outbox.pending()] == [c.msgid]


def test_a_record_is_not_due_before_its_next_attempt_time_and_the_time_survives_reopening(outbox, clock):
    record = registration(outbox)
    outbox.claim(1, lease=60)
    outbox.retry_later([(record.msgid, clock().timestamp() + 120)], "HTTP 503")
    with Outbox(outbox.path, clock=clock) as reopened:  # a restarted uploader
        assert reopened.claim(10, lease=60) == []
        assert reopened.next_due() == clock().timestamp() + 120
        assert [r.msgid for r in reopened.claim(10, lease=60, ignore_schedule=True)] == [record.msgid]
    outbox.retry_later([(record.msgid, clock().timestamp() + 120)], "HTTP 503")
    clock.tick(119)
    assert outbox.claim(10, lease=60) == []
    clock.tick(1)
    assert [r.attempts for r in outbox.claim(10, lease=60)] == [3]


def test_a_batch_whose_uploader_died_is_taken_again_when_its_lease_ends(outbox, clock):
    ids = [registration(outbox).msgid for _ in range(3)]
    assert len(outbox.claim(10, lease=90)) == 3  # and the uploader is killed here
    assert outbox.counts()["sending"] == 3 and outbox.oldest_pending() is not None
    clock.tick(89)
    assert outbox.claim(10, lease=90) == []
    clock.tick(1)
    assert [r.msgid for r in outbox.claim(10, lease=90)] == ids


def test_a_batch_whose_uploader_process_is_gone_is_taken_back_at_once_by_the_next_uploader(outbox, clock):
    ids = [registration(outbox).msgid for _ in range(3)]
    with Outbox(outbox.path, clock=clock) as dying:
        assert dying.join_uploaders() == 0  # nothing to take back yet
        assert len(dying.claim(2, lease=90)) == 2
    # closing released its flock, as the kernel does for a process killed with SIGKILL
    with Outbox(outbox.path, clock=clock) as next_one:
        assert next_one.join_uploaders() == 2  # no uploader is alive: no lease to wait for
        assert next_one.counts() == {"pending": 3, "sending": 0, "sent": 0, "dead": 0}
        assert next_one.get(ids[0]).last_error == "the previous upload stopped mid-batch"
        assert next_one.get(ids[2]).last_error is None
        taken = next_one.claim(10, lease=90)  # due now, not in 90 s
        assert [r.msgid for r in taken] == ids and [r.attempts for r in taken] == [2, 2, 1]


def test_a_batch_of_an_uploader_still_alive_is_left_to_its_lease(outbox, clock):
    registration(outbox)
    with Outbox(outbox.path, clock=clock) as alive:
        alive.join_uploaders()
        assert len(alive.claim(10, lease=90)) == 1
        with Outbox(outbox.path, clock=clock) as other:
            assert other.join_uploaders() == 0  # a shared lock is held: the batch is alive's own
            assert other.counts()["sending"] == 1 and other.claim(10, lease=90) == []


def test_retry_dead_revives_all_or_the_named_records_only(outbox, clock):
    a, b, c = (registration(outbox) for _ in range(3))
    outbox.claim(3, lease=60)
    outbox.settle([Outcome(a.msgid, -1, "bad"), Outcome(b.msgid, -1, "bad"), Outcome(c.msgid, 0)])
    with pytest.raises(QueueError, match=c.msgid):  # sent, not dead: nothing changes
        outbox.retry_dead([a.msgid, c.msgid])
    assert outbox.counts()["dead"] == 2
    assert outbox.retry_dead([a.msgid]) == 1
    revived = outbox.get(a.msgid)
    assert (revived.state, revived.attempts, revived.infcode, revived.last_error) == ("pending", 0, None, "bad")
    assert outbox.retry_dead() == 1
    assert outbox.retry_dead() == 0
    assert [r.msgid for r in outbox.claim(10, lease=60)] == [a.msgid, b.msgid]


def test_pending_is_oldest_first_and_lists_newest_first(outbox, clock):
    ids = []
    for _ in range(5):
        ids.append(registration(outbox).msgid)
        clock.tick()
    assert [r.msgid for r in outbox.pending(limit=3)] == ids[:3]
    assert [r.msgid for r in outbox.records(limit=2)] == ids[:-3:-1]
    assert outbox.oldest_pending() == dt.datetime(2026, 3, 1, 9, 30, tzinfo=CST)
    with pytest.raises(QueueError):
        outbox.records(state="gone")


def test_the_kiosk_sees_only_the_records_of_the_card_inserted(outbox):
    mine = [registration(outbox).msgid, purchase(outbox).msgid]
    registration(outbox, card_sn=OTHER_CARD)
    registration(outbox, card_sn=None)
    found = outbox.for_card(CARD)
    assert [r.msgid for r in found] == mine[::-1]
    summary = found[0].summary()
    assert summary["card_sn"] != CARD and summary["card_sn"].startswith(CARD[:6]) and summary["card_sn"].endswith(CARD[-4:])
    assert "P0001" not in json.dumps(summary)


def test_an_unknown_msgid_is_a_queue_error(outbox):
    with pytest.raises(QueueError, match="No record"):
        outbox.get("H110105000012026030109300007" + "99")


def test_the_queue_file_can_be_opened_while_another_outbox_writes(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    with Outbox(path, STATION, clock=clock) as writer, Outbox(path, clock=clock) as reader:
        registration(writer)
        assert reader.counts()["pending"] == 1
        registration(reader)
        assert {r.msgid[-4:] for r in writer.pending()} == {"0700", "0701"}
    assert os.path.getsize(path) > 0


def test_records_filter_by_state_and_card_together(outbox):
    mine = registration(outbox)
    registration(outbox, card_sn=OTHER_CARD)
    outbox.claim(1, lease=60)
    outbox.settle([Outcome(mine.msgid, 0)])
    assert [r.msgid for r in outbox.records("sent", card_sn=CARD)] == [mine.msgid]
    assert outbox.records("pending", card_sn=CARD) == []
    assert len(outbox.records("pending")) == 1


def test_a_burst_of_records_never_runs_msgids_more_than_a_few_seconds_ahead_of_the_clock(tmp_path):
    """100 msgids a second per terminal: past MAX_AHEAD seconds of borrowing, a record waits for the clock."""
    from sscard.terminal.queue import MAX_AHEAD

    with Outbox(tmp_path / "burst.sqlite", STATION) as box:  # the real clock
        made = [registration(box) for _ in range(int(MAX_AHEAD + 3) * 100)]  # needs the clock 2 s on
    ahead = [(msgid_time(r.msgid) - r.created_at.replace(microsecond=0)).total_seconds() for r in made]
    assert max(ahead) <= MAX_AHEAD and len({r.msgid for r in made}) == len(made)
    assert made[-1].created_at - made[0].created_at > dt.timedelta(seconds=1)  # the burst waited for the clock


def test_without_a_limit_a_burst_borrows_the_seconds_it_needs(tmp_path, clock):
    with Outbox(tmp_path / "burst.sqlite", STATION, clock=clock, max_ahead=None) as box:
        made = [registration(box).msgid for _ in range(1000)]
    assert (msgid_time(made[-1]) - clock()).total_seconds() == 9 and len(set(made)) == 1000


def _open_fresh(path: str, barrier, results) -> None:
    barrier.wait(timeout=30)
    try:
        Outbox(path).close()
        results.put("opened")
    except QueueError as err:
        results.put(str(err))


def test_terminals_opening_a_fresh_journal_together_all_open_it(tmp_path):
    """Switching a new file to WAL needs it alone for an instant; SQLite says busy at once there, and
    one of three processes failed in about a third of the rounds before the switch was tried again."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failed = []
    for round_no in range(20):
        barrier, results = context.Barrier(3), context.Queue()
        path = str(tmp_path / f"fresh-{round_no}.sqlite")
        workers = [context.Process(target=_open_fresh, args=(path, barrier, results)) for _ in range(3)]
        for worker in workers:
            worker.start()
        failed += [answer for answer in (results.get(timeout=60) for _ in workers) if answer != "opened"]
        for worker in workers:
            worker.join(timeout=30)
    assert failed == []
