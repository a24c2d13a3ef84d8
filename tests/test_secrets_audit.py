"""Secrets audit over the demo's whole day: every flow (bank activation, first registration,
cross-region registration, admission, dual-card insert, purchases, a refund, a lost answer reversed,
the uploads, the reconciliation), online with the virtual platform, with APDU tracing at DEBUG.
Nothing captured (every log record, the trace, the clerk's screen, error messages) and no database
column other than the ones meant for it holds a PIN, a key, a full ID number or the pieces that
rebuild it beside the masked one (its birth date; its address code and birth date).

The columns meant to hold the ID number are the journal's envelope (``records.envelope``: the platform
needs it), the platform's copy (``messages.envelope``/``response``) and the platform's own persons
(``persons.certno``, ``persons.brdy``); no PIN or key may be in those either. What is searched for:
tests/leakcheck.py.
"""
from __future__ import annotations

import io
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from leakcheck import forbidden, id_leaks, id_numbers, leaks

from sscard.terminal.demo import DAY, run_day

ROOT = Path(__file__).resolve().parents[1]

#: (table, column) that may hold the holder's ID number, because the central service must receive it
MEANT_FOR_ID = {("records", "envelope"), ("messages", "envelope"), ("messages", "response"), ("persons", "certno"),
               ("persons", "brdy")}


def columns(db_path: Path) -> dict[tuple[str, str], str]:
    """Every column of every table of a SQLite file, its values joined as text."""
    out = {}
    with closing(sqlite3.connect(db_path)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            names = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            for name in names:
                values = db.execute(f"SELECT {name} FROM {table}").fetchall()
                out[(table, name)] = "\n".join(str(v[0]) for v in values)
    return out


def test_the_day_at_debug_leaks_no_pin_key_or_id_number(tmp_path, caplog):
    pins = sorted({pin for step in DAY for pin in step.pins})
    ids = id_numbers()
    assert len(ids) >= 5 and len(pins) >= 4 and len(forbidden(pins)) > 50  # the audit has something to find
    screen = io.StringIO()
    with caplog.at_level(logging.DEBUG):
        run_day(tmp_path, screen)
    text = caplog.text + "\n" + screen.getvalue()
    assert "sscard.apdu" in caplog.text and " > 00 A4 04 00" in caplog.text  # the trace was on
    assert leaks(text, pins) == []
    assert id_leaks(text, ids) == []

    databases = sorted(tmp_path.glob("*.sqlite"))
    assert len(databases) == 4  # the bank's, the desk's and the pharmacy's journals, the platform's ledger
    checked = 0
    for db_path in databases:
        for (table, column), values in columns(db_path).items():
            assert leaks(values, pins) == [], f"{db_path.name} {table}.{column}"
            if (table, column) not in MEANT_FOR_ID:
                assert id_leaks(values, ids) == [], f"{db_path.name} {table}.{column} holds an ID number or its pieces"
            checked += 1
    held_ids = "".join(columns(tmp_path / "clinic-queue.sqlite")[("records", "envelope")])
    assert "ID number" in id_leaks(held_ids, ids)  # the envelope does carry them: the search works on this data
    print(f"\nsecrets audit: {len(caplog.records)} log records, {checked} database columns, "
          f"{len(forbidden(pins))} PIN/key forms and {len(ids)} ID numbers searched: 0 found")
