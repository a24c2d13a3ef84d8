"""Files that hold personal data are made for their owner only, and a damaged journal is refused, never
re-initialised (terminal/private.py, terminal/queue.py ``check_journal_file``; docs/security.md)."""
from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from queueing import STATION, registration

from sscard.central.ledger import Ledger
from sscard.terminal.cli import main
from sscard.terminal.queue import Outbox, QueueError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_journal_is_0600_in_folders_made_0700_whatever_the_umask(tmp_path, umask_022):
    path = tmp_path / "site" / "data" / "queue.sqlite"
    with Outbox(path, STATION) as outbox:
        registration(outbox)
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        assert wal.exists() and shm.exists()
        assert (mode(path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    assert mode(path.parent) == mode(path.parent.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir() if "new" in p.name) == []  # no temporary left


def test_the_ledger_is_0600_and_an_existing_open_journal_is_warned_about(tmp_path, umask_022, caplog):
    Ledger(tmp_path / "platform" / "ledger.sqlite").conn.close()
    assert mode(tmp_path / "platform" / "ledger.sqlite") == 0o600 and mode(tmp_path / "platform") == 0o700
    path = tmp_path / "queue.sqlite"
    Outbox(path, STATION).close()
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        Outbox(path, STATION).close()
    assert f"can be read by other users of this computer (mode 0644): run 'chmod 600 {path}'" in caplog.text


def _open(path: str, start, results) -> None:
    start.wait()
    try:
        with Outbox(path, STATION) as outbox:
            registration(outbox)
        results.put("ok")
    except Exception as err:  # reported to the test
        results.put(repr(err))


def test_windows_opening_a_new_journal_at_once_make_one_journal(tmp_path):
    path = str(tmp_path / "queue.sqlite")
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_open, args=(path, start, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join()
    assert outcomes == ["ok"] * 6
    with Outbox(path, STATION) as outbox:
        assert len(outbox.records(limit=50)) == 6


def _journal_with_records(path: Path, count: int = 7) -> None:
    with Outbox(path, STATION) as outbox:
        for _ in range(count):
            registration(outbox)
    with sqlite3.connect(path) as conn:  # everything in the main file, as after a clean close
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize(("damage", "words"), [
    ("empty", "is empty (0 bytes)"),
    ("half", "is truncated"),
    ("header", "does not begin as a record queue does"),
    ("no tables", "has no record tables"),
])
def test_a_damaged_journal_is_refused_and_named_never_re_initialised(tmp_path, damage, words):
    path = tmp_path / "queue.sqlite"
    _journal_with_records(path)
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "half":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "header":
        path.write_bytes(b"\x00" * 16 + raw[16:])
    else:
        path.unlink()
        with sqlite3.connect(path) as conn:  # a valid database of schema 0: not a journal
            conn.execute("CREATE TABLE notes (x)")
    before = path.read_bytes()
    with pytest.raises(QueueError) as refused:
        Outbox(path, STATION)
    assert words in str(refused.value) and str(path) in str(refused.value) and "not re-initialised" in str(refused.value)
    assert path.read_bytes() == before  # left as it was found
    result = CliRunner().invoke(main, ["queue", "list", "--queue", str(path)])
    assert result.exit_code == 13 and words in result.stderr and "Traceback" not in result.output
