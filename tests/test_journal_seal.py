"""Each journal record sealed with the terminal's journal key (terminal/seal.py): an edited amount, a
forged row or a flipped bit is refused and named, the rest of the journal goes on working, and a
damaged record is never uploaded."""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat

import pytest
from click.testing import CliRunner
from queueing import CARD, STATION, Clock, central, purchase, registration  # noqa: F401  (fixture)

from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.queue import MIGRATIONS, DamagedRecordError, Outbox, QueueError
from sscard.terminal.seal import JournalKeyError, Seal
from sscard.terminal.upload import Uploader


def _journal(path, count: int = 3) -> list:
    with Outbox(path, STATION, clock=Clock()) as outbox:
        made = [registration(outbox, card_sn=f"{CARD[:-2]}{n:02d}") for n in range(count)]
        made.append(purchase(outbox))
    return made


def _edit(path, sql: str, params: list) -> None:
    with sqlite3.connect(path) as conn:  # as anyone with the file but not the key would
        conn.execute(sql, params)


def test_an_edited_amount_is_refused_and_named_and_the_rest_reads(tmp_path):
    path = tmp_path / "queue.sqlite"
    made = _journal(path)
    sale = made[-1]
    assert '"medfee_sumamt":"23.50"' in sale.envelope
    _edit(path, "UPDATE records SET envelope = replace(envelope, '23.50', '93.50') WHERE msgid = ?", [sale.msgid])
    with Outbox(path) as outbox:
        with pytest.raises(DamagedRecordError) as refused:
            outbox.get(sale.msgid)
        assert refused.value.msgids == [sale.msgid] and "fail their integrity check" in str(refused.value)
        with pytest.raises(DamagedRecordError):
            outbox.for_card(CARD)  # the card whose records hold it: refused, not summed
        assert outbox.get(made[0].msgid).envelope == made[0].envelope  # the others read as written
        listed = outbox.records(damaged=True)
        assert [r.msgid for r in listed if r.damaged] == [sale.msgid]
    result = CliRunner().invoke(main, ["queue", "list", "-q", str(path)])
    assert result.exit_code == 0 and f"{sale.msgid}  2102" in result.stdout and "DAMAGED" in result.stdout
    kiosk = CliRunner().invoke(main, ["queue", "list", "-q", str(path), "--json"])
    assert [row.get("damaged", False) for row in json.loads(kiosk.stdout)] == [True, False, False, False]


@pytest.mark.parametrize("forgery", ["forged row", "seal removed", "answer edited"])
def test_forged_rows_and_removed_seals_are_refused(tmp_path, forgery):
    path = tmp_path / "queue.sqlite"
    made = _journal(path)
    first = made[0]
    if forgery == "forged row":
        forged = first.msgid[:-4] + "0999"
        _edit(path, "INSERT INTO records (id, msgid, infno, created_at, card_sn, insured_region, treatment_region, "
                    "envelope, state) SELECT ?, ?, infno, created_at, card_sn, insured_region, treatment_region, "
                    "replace(envelope, msgid, ?), 'sent' FROM records WHERE msgid = ?",
              [int(forged[12:]), forged, forged, first.msgid])
        victim = forged
    elif forgery == "seal removed":
        _edit(path, "UPDATE records SET mac = NULL WHERE msgid = ?", [first.msgid])
        victim = first.msgid
    else:
        _edit(path, "UPDATE records SET reply = '{\"infcode\": 0}' WHERE msgid = ?", [first.msgid])
        victim = first.msgid
    with Outbox(path) as outbox:
        with pytest.raises(DamagedRecordError) as refused:
            outbox.records()
        assert refused.value.msgids == [victim]


def test_a_damaged_record_is_never_uploaded_and_the_others_are(tmp_path, central):
    path = tmp_path / "queue.sqlite"
    made = _journal(path)
    _edit(path, "UPDATE records SET envelope = replace(envelope, '\"insutype\":\"310\"', '\"insutype\":\"390\"') "
                "WHERE msgid = ?", [made[1].msgid])
    with Outbox(path, clock=Clock()) as outbox, Uploader(outbox, central.url) as uploader:
        report = uploader.drain()
        assert report.sent == 2
        assert central.ledger.message(made[1].msgid) is None  # never reached the platform
        assert {r.msgid: r.state for r in outbox.records(damaged=True) if r.infno == "2201"} == {
            made[0].msgid: "sent", made[1].msgid: "dead", made[2].msgid: "sent"}
        assert "integrity check failed" in outbox.db.execute(
            "SELECT last_error FROM records WHERE msgid = ?", [made[1].msgid]).fetchone()[0]


def test_a_record_edited_to_sent_is_named_by_the_check_reconciliation_makes(tmp_path, central):
    path = tmp_path / "queue.sqlite"
    made = _journal(path)
    with Outbox(path, clock=Clock()) as outbox, Uploader(outbox, central.url) as uploader:
        assert uploader.drain().sent == 3 and outbox.verify() == []  # uploaded: each stands on the platform's answer
    forged = _journal(tmp_path / "other.sqlite", count=1)[0]  # never uploaded
    with Outbox(tmp_path / "other.sqlite") as other:
        assert other.verify() == []
        other.db.execute("UPDATE records SET state = 'sent' WHERE msgid = ?", [forged.msgid])  # so it never goes
        assert other.verify() == [forged.msgid]
        with pytest.raises(DamagedRecordError):
            other.get(forged.msgid)
    with Outbox(path) as outbox:  # a dead record's refusal made to look like an acceptance
        outbox.db.execute("UPDATE records SET state = 'sent' WHERE msgid = ?", [made[-1].msgid])  # the unanswered call
        assert outbox.verify() == [made[-1].msgid]


def _as_schema_5(conn: sqlite3.Connection, donor) -> None:
    """The tables of schema 5 (before seals) on ``conn``, holding the records and settings of ``donor``."""
    for script in MIGRATIONS[:5]:
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=5")
    conn.execute("ATTACH ? AS donor", [str(donor)])
    conn.execute("INSERT INTO records SELECT id, msgid, infno, created_at, card_sn, insured_region, treatment_region,"
                 " envelope, state, attempts, next_attempt_at, last_error, done_at, infcode, reply, owner"
                 " FROM donor.records")
    conn.execute("INSERT INTO meta SELECT * FROM donor.meta")
    conn.execute("DETACH donor")


def test_a_journal_from_before_seals_is_sealed_when_migrated(tmp_path):
    path = tmp_path / "v5.sqlite"
    made = _journal(tmp_path / "donor.sqlite")
    with sqlite3.connect(path, isolation_level=None) as conn:
        _as_schema_5(conn, tmp_path / "donor.sqlite")
    with Outbox(path) as outbox:
        assert [r.msgid for r in outbox.records()][::-1] == [r.msgid for r in made]
    _edit(path, "UPDATE records SET insured_region = '110106' WHERE msgid = ?", [made[0].msgid])
    with Outbox(path) as outbox, pytest.raises(DamagedRecordError):
        outbox.get(made[0].msgid)


def test_random_byte_flips_end_in_a_named_refusal_or_a_good_read_never_a_crash(tmp_path):
    """Flipped bytes anywhere in the file (seeded, 60 copies): every queue command ends with exit 0 or
    13, without a traceback."""
    original = tmp_path / "queue.sqlite"
    _journal(original, count=6)
    raw = original.read_bytes()
    chance = random.Random(20261203)
    outcomes = {}
    for n in range(60):
        copy = tmp_path / f"flip{n}.sqlite"
        flipped = bytearray(raw)
        at = chance.randrange(100, len(raw))  # past the header, which has its own checks
        flipped[at] ^= 1 << chance.randrange(8)
        copy.write_bytes(bytes(flipped))
        copy.chmod(0o600)
        for command in (["queue", "list", "--json"], ["queue", "status", "--json"]):
            result = CliRunner().invoke(main, [*command, "-q", str(copy)])
            assert result.exit_code in (0, 13) and "Traceback" not in result.output, (n, at, result.output)
            outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
    assert outcomes.get(0) and outcomes.get(13), outcomes  # most flips land in free space; some are refused


def test_the_journal_key_is_private_and_a_shared_one_refused(tmp_path, journal_key):
    _journal(tmp_path / "queue.sqlite")
    assert stat.S_IMODE(os.stat(journal_key).st_mode) == 0o600 and len(journal_key.read_text().strip()) == 64
    journal_key.chmod(0o644)
    with pytest.raises(JournalKeyError, match="can be read or written by other users"):
        Outbox(tmp_path / "queue.sqlite")
    journal_key.chmod(0o600)
    other = tmp_path / "other.key"
    shutil.copyfile(journal_key, other)
    other.write_text("00" * 32 + "\n")
    other.chmod(0o600)
    with Outbox(tmp_path / "queue.sqlite", seal=Seal.of_journal(tmp_path / "queue.sqlite", path=other)) as elsewhere:
        with pytest.raises(QueueError, match="another journal key"):
            elsewhere.records()


def test_the_key_lives_beside_its_journal_and_a_missing_one_is_an_error_not_a_new_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SSCARD_JOURNAL_KEY")
    here, there = tmp_path / "window1.sqlite", tmp_path / "window2.sqlite"
    _journal(here)
    _journal(there)
    keys = (tmp_path / "window1.sqlite.key", tmp_path / "window2.sqlite.key")
    assert all(stat.S_IMODE(os.stat(k).st_mode) == 0o600 for k in keys) and keys[0].read_text() != keys[1].read_text()
    with Outbox(here) as one, Outbox(there) as two:  # another window's journal read with its own key
        assert one.verify() == [] and two.verify() == []
    keys[0].unlink()
    with pytest.raises(JournalKeyError, match="window1.sqlite.key of the record queue .* is missing") as missing:
        Outbox(here)
    assert exit_code(missing.value) == 12 and not keys[0].exists()  # no new key made behind the clerk's back
    result = CliRunner().invoke(main, ["queue", "status", "-q", str(here)])
    assert result.exit_code == 12 and "is missing" in result.stderr


def test_a_journal_an_older_version_left_with_its_wal_unmerged_is_opened_and_sealed(tmp_path, monkeypatch):
    monkeypatch.delenv("SSCARD_JOURNAL_KEY")
    path = tmp_path / "old.sqlite"
    made = _journal(tmp_path / "donor.sqlite")
    old = sqlite3.connect(path, isolation_level=None)  # as schema 5 made a journal: WAL first, then the tables
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("PRAGMA wal_autocheckpoint=0")
    _as_schema_5(old, tmp_path / "donor.sqlite")
    assert path.read_bytes()[60:64] == bytes(4)  # the main file's header still says schema 0: all is in the WAL
    with Outbox(path) as outbox:
        assert [r.msgid for r in outbox.records()][::-1] == [r.msgid for r in made]
    old.close()


def test_a_damaged_unknown_call_is_left_alone_and_a_damaged_record_is_not_resealed(tmp_path, caplog):
    path = tmp_path / "queue.sqlite"
    made = _journal(path)
    call = made[-1]  # the purchase: a calling record of this (living) process
    with Outbox(path, clock=Clock()) as outbox:
        outbox.db.execute("UPDATE records SET owner = -1, next_attempt_at = 0 WHERE msgid = ?", [call.msgid])
        assert [r.msgid for r in outbox.unknown_calls()] == [call.msgid]
        _edit(path, "UPDATE records SET envelope = replace(envelope, '23.50', '93.50') WHERE msgid = ?", [call.msgid])
        with caplog.at_level("WARNING"):
            assert outbox.unknown_calls() == []
        assert call.msgid in caplog.text
        _edit(path, "UPDATE records SET card_sn = 'X' WHERE msgid = ?", [made[0].msgid])
        with pytest.raises(DamagedRecordError):
            outbox.rekey(made[0].msgid, "msgid taken")
