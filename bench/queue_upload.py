"""Bench: how fast the desk can queue records, and how fast a backlog drains to the central service.

    /tmp/v/bin/python bench/queue_upload.py [--records N] [--dir PATH]

Real files (WAL, synchronous=FULL: every add is an fsync) and the real reference service on
127.0.0.1. ``--dir`` puts the files on the disk you want to measure (default: a temporary directory).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terminal.central import CentralService  # noqa: E402
from terminal.envelope import Fen, Operator, Station  # noqa: E402
from terminal.queue import Outbox  # noqa: E402
from terminal.upload import Uploader  # noqa: E402

STATION = Station("H11010500001", "基准测试医院", "110105", 1, Operator("B001", "基准"))
BODY = {"data": {"psn_no": "P0001", "med_type": "41", "medfee_sumamt": Fen(2350), "acct_pay": Fen(2350)}}


def fill(outbox: Outbox, count: int) -> list[float]:
    """Queue ``count`` pharmacy settlements; the latency of each add in milliseconds."""
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        outbox.add("2102", BODY, insured_region="310101" if i % 5 == 0 else "110105", card_sn=f"CARD{i % 50:04d}")
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        with Outbox(root / "queue.sqlite", STATION) as outbox:
            start = time.perf_counter()
            latencies = sorted(fill(outbox, args.records))
            elapsed = time.perf_counter() - start
            print(f"queue add: {args.records} records in {elapsed:.2f} s = {args.records / elapsed:.0f} records/s; "
                  f"latency p50 {statistics.median(latencies):.2f} ms, p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms")
            start = time.perf_counter()
            for _ in range(100):
                outbox.for_card("CARD0007")
            print(f"kiosk lookup (for_card, {args.records} records): {(time.perf_counter() - start) * 10:.2f} ms")

        for batch in (1, 10, 100, 500):
            path = root / f"queue-{batch}.sqlite"
            count = min(args.records, 200 * batch)
            with Outbox(path, STATION) as outbox:
                fill(outbox, count)
            with CentralService(root / f"central-{batch}.sqlite") as service, Outbox(path) as outbox, \
                    Uploader(outbox, service.url, batch_size=batch) as uploader:
                start = time.perf_counter()
                report = uploader.drain()
                elapsed = time.perf_counter() - start
            if report.sent != count:
                raise SystemExit(f"bench failed: {report}")
            print(f"drain backlog of {count} with batches of {batch:>3}: {elapsed:.2f} s = {count / elapsed:.0f} records/s")


if __name__ == "__main__":
    main()
