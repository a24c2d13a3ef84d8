"""Bench: durable enqueues per second, ours vs persist-queue, and a 10,000-record upload on loopback.

    /tmp/v/bin/pip install -e '.[bench]'          # persist-queue, the peer
    /tmp/v/bin/python bench/outbox.py [--records 2000] [--upload 10000] [--dir PATH]

1. Durable enqueue (issue 5): one record per transaction, WAL with ``synchronous=FULL`` (an fsync per
   commit), real files. Ours: ``Outbox.add`` (msgid allocation + envelope encoding + insert). Peer:
   persist-queue's ``SQLiteAckQueue.put`` with ``auto_commit=True`` on a WAL connection set to
   ``synchronous=FULL`` (the same durability), fed the same wire envelope. All run in this process, in
   rounds (``--rounds``, 11 by default); within each round the sides run in a random order (seeded:
   ``--seed``, printed), so neither always goes first onto a fresh page cache or a busy disk. The
   ratio is the median of the per-round paired ratios (each round's sides ran seconds apart, under
   the same disk noise), not the ratio of two medians taken separately. Target: ours/peer >= 1.0.
2. Upload: ``--upload`` records queued, then drained in batches of 500 to the reference service
   (``sscard central serve`` in its own process on 127.0.0.1): seconds and records/s.

``--dir`` puts the files on the disk you want to measure (default: a temporary directory).
``--breakdown`` also runs both sides with ``synchronous=OFF`` (the work inside a transaction, without
the fsync) and counts WAL frames (pages written) per record.

Both sides' connection settings are read back from the connections that did the writing and printed
(journal mode, synchronous, busy timeout, page size, autocheckpoint), with the bytes each stores per
record, so a reader can check that the comparison is like for like.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402

from sscard.message.envelope import Operator, Station  # noqa: E402
from sscard.terminal.queue import Outbox  # noqa: E402
from sscard.terminal.upload import Uploader  # noqa: E402

STATION = Station("H11010500001", "基准测试医院", "110105", 1, Operator("B001", "基准"))
#: an outpatient registration queued while the platform is unreachable (a person of fixtures/platform,
#: insured in Beijing, 110105), the kind of record that waits in the queue
BODY = {"data": {"psn_no": "1101000000000009", "insutype": "310", "med_type": "11", "begntime": "2026-03-01 09:30:00",
                 "dept_name": "内科", "ipt_otp_no": "MZ0001"}}
#: the queue's write path is measured without its pacing (past 100 records a second one terminal's
#: msgids would run more than MAX_AHEAD seconds ahead of the clock and a record would wait for it;
#: no counter makes 100 records a second)
UNPACED = {"max_ahead": None}


PRAGMAS = ("journal_mode", "synchronous", "busy_timeout", "page_size", "wal_autocheckpoint")
#: what each side's connection reported, and bytes stored per record (filled by the runs)
SEEN: dict[str, dict[str, object]] = {}


#: the bytes a record's content takes in each side's table (the peer stores a pickled blob)
CONTENT = {
    "records": "length(CAST(msgid || infno || created_at || coalesce(card_sn, '') || insured_region"
               " || treatment_region || envelope AS BLOB))",
    "ack_queue": "length(data)",
}


def settings(conn, side: str, table: str, count: int) -> None:
    """Read back the connection's durability settings and the stored bytes per record."""
    seen = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}
    content = CONTENT["records" if table == "records" else "ack_queue"]  # the peer names its table ack_queue_NAME
    seen["bytes/record"] = round(conn.execute(f"SELECT sum({content}) FROM {table}").fetchone()[0] / count)
    SEEN[side] = seen


@contextlib.contextmanager
def wal_frames(conn, count: int, frames: dict[str, float], side: str):
    """Counts the WAL frames (pages) the ``count`` records write: checkpoints off meanwhile."""
    if not frames.get("on"):
        yield
        return
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    yield
    wal = Path(conn.execute("PRAGMA database_list").fetchone()[2] + "-wal")
    frames[side] = (wal.stat().st_size - 32) / (conn.execute("PRAGMA page_size").fetchone()[0] + 24) / count
    conn.execute("PRAGMA wal_autocheckpoint=1000")


def ours(path: Path, count: int, sync: str = "FULL", frames: dict | None = None) -> float:
    """Records per second through ``Outbox.add`` (each its own transaction, FULL unless ``sync``)."""
    with Outbox(path, STATION, **UNPACED) as outbox:
        conn = outbox.db
        if sync != "FULL":
            conn.execute(f"PRAGMA synchronous={sync}")
        with wal_frames(conn, count, frames or {}, "ours"):
            start = time.perf_counter()
            for i in range(count):
                outbox.add("2201", BODY, insured_region="310101" if i % 5 == 0 else "110105",
                           card_sn=f"CARD{i % 50:04d}")
            elapsed = time.perf_counter() - start
        if sync == "FULL":
            settings(conn, "ours", "records", count)
        return count / elapsed


def peer(path: Path, count: int, envelope: str | None, sync: str = "FULL", frames: dict | None = None) -> float:
    """Records per second through persist-queue's SQLiteAckQueue at the same durability: ``envelope``
    pre-built, or (None) each record's envelope built as ``Outbox.add`` builds it (msgid kept in memory)."""
    from persistqueue import SQLiteAckQueue

    from sscard.message.envelope import Envelope, msgid
    from sscard.terminal.queue import now_cst

    queue = SQLiteAckQueue(str(path), auto_commit=True, multithreading=False)
    conn = queue._putter
    conn.execute(f"PRAGMA synchronous={sync}")  # its connection is WAL; make the sync level explicit
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    try:
        with wal_frames(conn, count, frames or {}, "peer"):
            start = time.perf_counter()
            for i in range(count):
                if envelope is None:
                    now = now_cst()
                    built = Envelope("2201", msgid(STATION, now, i % 100), STATION, STATION.operator,
                                     "310101" if i % 5 == 0 else "110105", now, BODY).to_wire()
                    queue.put(built)
                else:
                    queue.put(envelope)
            elapsed = time.perf_counter() - start
        if sync == "FULL":
            settings(conn, "peer" if envelope else "peer (built)", queue._table_name, count)
        return count / elapsed
    finally:
        queue.close()


def enqueue_bench(root: Path, count: int, rounds: int, breakdown: bool = False, seed: int | None = None) -> None:
    """Each round runs ours, the peer and the peer building envelopes, in a random order; the ratios
    are medians of per-round pairs (docstring, item 1)."""
    seed = random.randrange(10**6) if seed is None else seed
    order = random.Random(seed)
    with Outbox(root / "sample.sqlite", STATION) as outbox:
        envelope = outbox.add("2201", BODY, insured_region="110105").envelope
    sides = {
        "ours": lambda n: ours(root / f"ours-{n}.sqlite", count),
        "peer": lambda n: peer(root / f"peer-{n}", count, envelope),
        "built": lambda n: peer(root / f"peer-built-{n}", count, None),
    }
    results: dict[str, list[float]] = {name: [] for name in sides}
    firsts: list[str] = []
    for n in range(rounds):
        names = list(sides)
        order.shuffle(names)
        firsts.append(names[0])
        for name in names:
            results[name].append(sides[name](n))
    mine, theirs, theirs_built = results["ours"], results["peer"], results["built"]
    a, b, c = statistics.median(mine), statistics.median(theirs), statistics.median(theirs_built)
    ratio = [x / y for x, y in zip(mine, theirs)]
    ratio_built = [x / y for x, y in zip(mine, theirs_built)]

    def runs(values: list[float], digits: int = 0) -> str:
        return ", ".join(f"{x:.{digits}f}" for x in values)

    print(f"durable enqueue, FULL, 1 record/transaction, {count} records x {rounds} rounds, "
          f"order shuffled per round (seed {seed}; first: {', '.join(firsts)}):")
    print(f"  ours  Outbox.add                         {a:8.0f} records/s   (median; rounds: {runs(mine)})")
    print(f"  peer  SQLiteAckQueue.put, blob ready     {b:8.0f} records/s   (median; rounds: {runs(theirs)})")
    print(f"  peer  SQLiteAckQueue.put, envelope built {c:8.0f} records/s   (median; rounds: {runs(theirs_built)})")
    print(f"  ratio ours/peer, median of rounds        {statistics.median(ratio):8.2f}   (target >= 1.0; "
          f"rounds: {runs(ratio, 2)})")
    print(f"  ratio ours/peer with the same envelope work {statistics.median(ratio_built):5.2f}   "
          f"(rounds: {runs(ratio_built, 2)})")
    print("  read back from the connections that wrote (synchronous 2 = FULL; bytes stored per record):")
    for side, seen in SEEN.items():
        print(f"    {side:13s}", "  ".join(f"{k}={v}" for k, v in seen.items()))
    if breakdown:
        off_mine, off_theirs = [], []
        for n in range(rounds):
            pair = [lambda n=n: off_mine.append(ours(root / f"ours-off-{n}.sqlite", count, "OFF")),
                    lambda n=n: off_theirs.append(peer(root / f"peer-off-{n}", count, envelope, "OFF"))]
            order.shuffle(pair)
            for run in pair:
                run()
        frames: dict = {"on": True}
        ours(root / "ours-frames.sqlite", count, "OFF", frames)
        peer(root / "peer-frames", count, envelope, "OFF", frames)
        for side, full, off in (("ours", a, statistics.median(off_mine)), ("peer", b, statistics.median(off_theirs))):
            print(f"  {side}: {1e6 / full:6.1f} us/record at FULL = {1e6 / off:6.1f} us of work (synchronous=OFF, "
                  f"{off:.0f}/s) + {1e6 / full - 1e6 / off:6.1f} us of sync; {frames[side]:.2f} WAL frames/record")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upload_bench(root: Path, count: int, batch: int) -> None:
    path = root / "upload.sqlite"
    with Outbox(path, STATION, **UNPACED) as outbox:
        with outbox.db:  # filling is not what is measured: keep it quick
            outbox.db.execute("PRAGMA synchronous=OFF")
        for _ in range(count):
            outbox.add("2201", BODY, insured_region="110105")
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')", "central", "serve",
         "--port", str(port), "--db", str(root / "central.sqlite")],
        cwd=ROOT, stderr=subprocess.DEVNULL, env=os.environ,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/_stats")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the central service did not start") from None
                time.sleep(0.05)
        with Outbox(path) as outbox, Uploader(outbox, url, batch_size=batch) as uploader:
            start = time.perf_counter()
            report = uploader.drain()
            elapsed = time.perf_counter() - start
        stored = httpx.get(url + "/_stats").json()["messages"]
    finally:
        service.terminate()
        service.wait(timeout=30)
    if report.sent != count or report.error or stored != count + 1:
        raise SystemExit(f"bench failed: {report}, service holds {stored}")
    print(f"upload {count} records in batches of {batch} to the reference service on loopback:")
    print(f"  {elapsed:.2f} s = {count / elapsed:.0f} records/s ({report.batches} batches; the service stores each, FULL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="records per enqueue round")
    parser.add_argument("--rounds", type=int, default=11, help="rounds, each side once per round (default 11)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the per-round order (default: random)")
    parser.add_argument("--upload", type=int, default=10_000, help="records in the upload bench")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--breakdown", action="store_true", help="also synchronous=OFF runs and WAL frames/record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        enqueue_bench(root, args.records, args.rounds, args.breakdown, args.seed)
        if args.upload:
            upload_bench(root, args.upload, args.batch)


if __name__ == "__main__":
    main()
