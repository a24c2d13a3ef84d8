"""Crash safety: processes SIGKILLed at random points of enqueue and upload, again and again.

One driver process imports everything once, then forks a worker per round (no threads, so forking is
safe): the worker queues records and uploads small batches to the reference service on 127.0.0.1 in a
loop, and the driver SIGKILLs it. A worker reports a msgid on a pipe only after ``Outbox.add``
returned, so every reported record must be in the file. It also writes a marker once a claim has
committed (``CLAIMED``), once the service has answered (``ANSWERED``) and once the batch is settled
(``SETTLED``). The rounds take turns: a kill after a random delay (anywhere: in ``add``, in a claim,
in flight, in a settle), a kill of a worker paused right after its claim committed (the batch is
'sending', nothing sent), and a kill of a worker paused after the service answered and before the
settle (the lost answer: the service holds the batch, the queue does not know). The paused rounds
make every such round a kill mid-batch by construction, not by timing luck. Afterwards every record
is either still unconfirmed in the queue or at the service exactly once, and one more upload (its
clock past every lease and backoff) leaves the queue and the service's ledger holding the same msgids.
"""
from __future__ import annotations

import collections
import datetime as dt
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from queueing import STATION, central  # noqa: F401

from sscard.terminal.queue import Outbox, now_cst
from sscard.terminal.upload import Uploader

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 60
MARKERS = ("CLAIMED", "ANSWERED", "SETTLED")

DRIVER = textwrap.dedent(
    """
    import os, random, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from queueing import registration
    from sscard.terminal.queue import Outbox
    import httpx
    from sscard.terminal.upload import CentralError, Uploader

    path, url, rounds, rng = sys.argv[2], sys.argv[3], int(sys.argv[4]), random.Random(int(sys.argv[5]))
    http = httpx.Client(timeout=5)  # made once: each worker inherits it unused and opens its own connections
    PAUSE = {1: "CLAIMED", 2: "ANSWERED"}  # round % 3 -> where the worker waits to be killed (0: nowhere)

    class Marked(Outbox):
        \"\"\"The worker's outbox: markers on the pipe after a claim commits, before and after a settle.\"\"\"

        def mark(self, marker):
            os.write(write, (marker + "\\n").encode())
            if PAUSE.get(mode) == marker:
                os.read(hold, 1)  # nothing is ever written there: wait for the SIGKILL

        def claim(self, *args, **kwargs):
            records = super().claim(*args, **kwargs)
            if records:
                self.mark("CLAIMED")
            return records

        def settle(self, outcomes):
            self.mark("ANSWERED")
            done = super().settle(outcomes)
            self.mark("SETTLED")
            return done

        def retry_later(self, schedule, error):
            super().retry_later(schedule, error)
            self.mark("SETTLED")

    kills = mid_batch = 0
    for round_no in range(rounds):
        mode = round_no % 3
        read, write = os.pipe()
        hold, never = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: queue, and upload every third record, until killed
            os.close(read)
            try:
                with Marked(path) as box, Uploader(box, url, batch_size=4, client=http) as uploader:
                    for n in range(1, 10**9):
                        os.write(write, (registration(box).msgid + "\\n").encode())  # add() returned: saved
                        if n % 3 == 0:
                            try:
                                uploader.upload_batch()
                            except CentralError:
                                pass
            finally:
                os._exit(1)  # only reached on an error: the round then counts no kill
        os.close(write)
        lines = os.fdopen(read)
        seen = []
        if mode:  # wait until the worker is paused where this round kills it
            while (line := lines.readline()) and line.strip() != PAUSE[mode]:
                seen.append(line.strip())
            seen.append(line.strip())
        else:
            time.sleep(rng.uniform(0.01, 0.2))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        kills += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        seen += lines.read().split()
        lines.close()
        os.close(hold)
        os.close(never)
        markers = [m for m in seen if m in ("CLAIMED", "ANSWERED", "SETTLED")]
        mid_batch += bool(markers) and markers[-1] != "SETTLED"  # killed between a claim and its settle
        sys.stdout.write("".join(m + "\\n" for m in seen if m))
    print("MID_BATCH", mid_batch)
    print("KILLS", kills)
    """
)


def test_killing_enqueuers_and_uploaders_at_random_points_loses_and_doubles_nothing(tmp_path, central):
    path = tmp_path / "queue.sqlite"
    Outbox(path, STATION).close()
    seed = random.randrange(10**6)
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(Path(__file__).parent), str(path), central.url, str(ROUNDS), str(seed)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert driver.returncode == 0, driver.stderr
    words = driver.stdout.split()
    reported = {w for w in words[:-4] if w not in MARKERS}
    assert words[-2:] == ["KILLS", str(ROUNDS)], f"seed {seed}: {driver.stdout[-200:]}"
    # every paused round (two in three) was killed between a committed claim and its settle
    assert words[-4] == "MID_BATCH" and int(words[-3]) >= 2 * ROUNDS // 3, f"seed {seed}: {words[-4:]}"
    assert words.count("CLAIMED") >= 2 * ROUNDS // 3 and words.count("SETTLED") > 0, f"seed {seed}"

    def at_service() -> set[str]:
        rows = central.ledger.conn.execute("SELECT msgid FROM messages WHERE infno != '9001'").fetchall()
        return {m for (m,) in rows}

    with Outbox(path) as box:
        assert box.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        records = {r.msgid: r for r in box.records()}
        assert reported <= set(records), f"seed {seed}: a record add() returned is gone"
        served = at_service()
        assert served <= set(records), f"seed {seed}: the service holds a message the queue never had"
        assert {r.state for r in records.values()} <= {"pending", "sending", "sent"}
        assert all(m in served for m, r in records.items() if r.state == "sent"), f"seed {seed}"
        states = collections.Counter(r.state for r in records.values())
        assert states["sent"] > 0 and len(records) > ROUNDS, f"seed {seed}: {states}"
        # the last round's kill left its batch claimed; each earlier one was taken back by the next worker
        assert states["sending"] > 0 or ROUNDS % 3 == 1, f"seed {seed}: {states}"

    later = lambda: now_cst() + dt.timedelta(days=1)  # noqa: E731 - past every lease and backoff
    with Outbox(path, clock=later) as box, Uploader(box, central.url, batch_size=500) as uploader:
        report = uploader.drain()
        assert report.error is None and report.pending == 0, report
        assert box.counts() == {"pending": 0, "sending": 0, "sent": len(records), "dead": 0}
    assert at_service() == set(records)
    assert central.ledger.repeats > 0, f"seed {seed}: no lost answer was resent"  # the ANSWERED kills
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(DISTINCT msgid), count(*) FROM records").fetchone() == (len(records),) * 2
