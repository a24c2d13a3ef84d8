"""Bench: a pharmacy settlement online, ours vs raw httpx; the platform under 8 terminals; a 100k reconciliation.

    .venv/bin/python bench/settle.py [--rounds 15] [--per-round 20] [--duration 4] [--records 100000]
    .venv/bin/python bench/settle.py --only settle --profile      # one bench, with cProfile tables

Every platform here is ``sscard central serve`` in its own process on 127.0.0.1 (uvicorn, the ledger on
its own thread, WAL with ``synchronous=FULL`` as :class:`central.ledger.Ledger` sets it), on a fresh
ledger file seeded from fixtures/platform whose test person (张伟, employee insurance 310, card
A01234567) is given an account of 10^11 yuan, so every settlement is paid from the account (79.30
yuan, three drug lines; pharmacy purchases are outside the fund). A
settlement is a pharmacy purchase as terminal/flows/pharmacy.py makes it, card and PIN aside: 1101
(person by card), 2101 (pre-settlement), 2102 (settlement), each sale with a fresh sale number.

1. Per-settlement cost (issue: ours/raw <= 1.3). Ours: ``Platform.query("1101")``,
   ``Platform.query("2101")``, ``Platform.transact("2102")`` on a real SQLite journal (terminal/queue.py's
   Outbox, FULL), as one terminal. Raw: the same three envelopes (built by message/envelope.py, same
   JSON fields, same gateway signature headers, the same ``sign_no``) posted with a plain
   ``httpx.Client``, msgids counted in memory, no journal. In rounds (``--rounds``), each side does
   ``--per-round`` settlements per round, the two sides in a random order per round (seeded:
   ``--seed``, printed). Reported: each side's median ms per settlement over all its settlements, and
   the median of the per-round ratios (each round's median ours / median raw: the two ran seconds
   apart, under the same machine noise). One settlement of each is captured beforehand to check the
   bodies and headers are like for like. The breakdown line (medians of more settlements) splits
   ours into its three calls (``CentralClient.call``: encode, sign, HTTP, JSON) and the rest (the
   journal's four commits: two msgid floors not waiting for the disk, begin_call and answer_call
   FULL; envelopes, answer checks), and raw likewise. Ours' journal runs with
   its msgid pacing off (``Outbox(max_ahead=None)``, when the Outbox has it): one terminal settling
   back to back makes ~450 msgids a second, past the 100 a second its msgid counter holds, and the
   pacing would then put one-second waits for the clock into what is meant to be a cost.
2. Platform throughput (issue: >= 500 settlements/s, p99 < 50 ms, with 8 terminals). ``--terminals``
   terminals of one institution (H33030200001), terminal numbers 1..N, each its own journal file and
   sign-in, settle as fast as they can for ``--duration`` seconds against ONE platform process (a fresh
   ledger per mode). Modes (``--modes``; the first gives the headline figures):
   ``ours-processes``: each terminal a process running our Platform (1101 + 2101 + 2102, journaled);
   ``ours-processes:2102``: the same, each settlement the 2102 alone (the "at least 2102" reading);
   ``ours-threads``: our terminals as threads of one process (their CPU under one GIL);
   ``raw-processes`` (and, not by default, ``raw-threads``): terminals posting the three envelopes with
   plain httpx, no journal: the least client work. Reported per mode: settlements/s (2102s answered
   per second, all terminals), p50/p99/max ms of the 2102 HTTP call (encode, request, answer read, as
   the terminal sees it) and p50/p99 of the whole settlement; the platform process's CPU per
   settlement (its event loop thread, and its ledger thread with any other) and the share of one core
   it got, read from /proc over the window; the terminals' own CPU per settlement. On a 2-core machine
   the terminals and the platform share the same two cores: platform CPU + terminal CPU per
   settlement bounds the rate at 2000 / (their sum in ms) per second, whatever the platform does.
   The terminals keep their msgid pacing: a msgid carries a 2-digit counter per terminal and second,
   so 8 terminals sustain at most 800 msgids a second (267 full settlements, 800 2102s alone); the
   Outbox lets them run a few seconds ahead of the clock first, which a short window does not exhaust.
   With ``--profile``, one more short run of the first mode with the platform under cProfile (its
   event loop and its ledger thread; wall time, so a COMMIT's fsync shows in ``execute``).
3. Reconciliation of a ``--records`` (100,000) record journal: a journal file whose rows are answered
   2102s exactly as ``Platform.transact`` stores them (envelope, reply with ``setlinfo``), inserted with
   SQL in one transaction (100 a second from terminal 1, ending a minute ago), and a ledger holding
   the matching settlements; then
   ``terminal.reconcile.reconcile`` end to end (nine 3201 queries; the sign-in made before), and
   ``journal_settlements`` alone: median seconds of ``--reconcile-runs`` runs each. The result must be
   balanced, with every record counted.

The script ends with one line per headline figure: ``figure NAME VALUE UNIT``.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import inspect
import io
import json
import multiprocessing as mp
import os
import pstats
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402

from sscard.central.ledger import Ledger  # noqa: E402
from sscard.message.envelope import (  # noqa: E402
    CST,
    INF_TIME,
    MSGID_TIME,
    Credentials,
    Envelope,
    Fen,
    Operator,
    Station,
    encode,
    gateway_headers,
    yuan,
)
from sscard.terminal.gateway import test_credentials  # noqa: E402
from sscard.terminal.online import Platform  # noqa: E402
from sscard.terminal.queue import Outbox  # noqa: E402
from sscard.terminal.reconcile import journal_settlements, reconcile  # noqa: E402

INSTITUTION = "H33030200001"
INSTITUTION_NAME = "温州市鹿城区示范诊所"
REGION = "330300"
#: the test person of fixtures/platform/persons.json and their card (fixtures/cards: adult)
PSN_NO = "3303000000000001"
CARD_NO = "A01234567"
CARD_SN = "330300D15600000501234567FFFFFFFF"
CERTNO = "330302198506151239"
NAME = "张伟"
#: the account the ledger is given (fen): never the limit, whatever the run
BALANCE = 10**13
#: the sale's lines (name, quantity, unit price in fen): 79.30 yuan
ITEMS = (("阿莫西林胶囊", 2, 1250), ("布洛芬缓释胶囊", 1, 1830), ("复方甘草片", 3, 1000))
TOTAL = sum(q * p for _, q, p in ITEMS)
#: the platform bench's modes run by default (``:2102``: each settlement is the 2102 alone), and all there are
MODES = ("ours-processes", "ours-processes:2102", "ours-threads", "raw-processes")
ALL_MODES = tuple(f"{kind}-{how}{calls}" for calls in ("", ":2102") for kind in ("ours", "raw")
                  for how in ("processes", "threads"))


def station(terminal_no: int) -> Station:
    return Station(INSTITUTION, INSTITUTION_NAME, REGION, terminal_no, Operator(f"C{terminal_no:03d}", "基准收费"))


def credentials() -> Credentials:
    return test_credentials(INSTITUTION)


def now_text() -> str:
    return dt.datetime.now(CST).strftime(INF_TIME)


def person_body(begntime: str) -> dict[str, Any]:
    """1101 by the social security card (terminal/flows/common.py, ``look_up``)."""
    return {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD_NO, "card_sn": CARD_SN, "psn_cert_type": "01",
                     "certno": CERTNO, "psn_name": NAME, "begntime": begntime}}


def sale_body(psn_no: str, sale: str, begntime: str) -> dict[str, Any]:
    """2101/2102 of a pharmacy purchase (terminal/flows/pharmacy.py, ``purchase``)."""
    return {"data": {"psn_no": psn_no, "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD_NO, "card_sn": CARD_SN,
                     "psn_cert_type": "01", "certno": CERTNO, "psn_name": NAME, "med_type": "41",
                     "medfee_sumamt": Fen(TOTAL), "psn_setlway": "01", "chrg_bchno": sale, "insutype": "310",
                     "acct_used_flag": "1", "begntime": begntime},
            "drugdetail": [{"feedetl_sn": f"{n:04d}", "med_list_name": name, "cnt": cnt, "pric": Fen(price),
                            "det_item_fee_sumamt": Fen(cnt * price)} for n, (name, cnt, price) in enumerate(ITEMS, 1)]}


# --- the two terminals --------------------------------------------------------------------------------

#: whether this Outbox paces msgids (``max_ahead``: at most 100 a second per terminal, and then only so
#: far ahead of the clock before a new record waits for it); older Outboxes have no such parameter
PACING = "max_ahead" in inspect.signature(Outbox).parameters
#: how many seconds ahead of the clock its msgids may run by default (None: no pacing)
AHEAD: float | None = inspect.signature(Outbox).parameters["max_ahead"].default if PACING else None


class Ours:
    """Our terminal: a journal file (Outbox) and a Platform session on it. ``pace``: the Outbox's own
    msgid pacing (off: ``max_ahead=None``, when the Outbox has it)."""

    def __init__(self, path: Path, url: str, terminal_no: int, *, pace: bool = True) -> None:
        options: dict[str, Any] = {} if pace or not PACING else {"max_ahead": None}
        self.outbox = Outbox(path, station(terminal_no), **options)
        self.platform = Platform(self.outbox, url, credentials(), timeout=10.0)
        #: seconds of each 2102 HTTP call, when timed (:meth:`time_calls`)
        self.calls: list[float] | None = None

    def time_calls(self, every: bool = False) -> list[float]:
        """From now on, time the 2102 HTTP call (``every``: all three calls) into the list returned."""
        central = self.platform.central
        inner = central.call
        sink: list[float] = []

        def timed(message: dict[str, Any] | str) -> dict[str, Any]:
            start = time.perf_counter()
            answer = inner(message)
            infno = message.get("infno") if isinstance(message, dict) else json.loads(message).get("infno")
            if every or infno == "2102":
                sink.append(time.perf_counter() - start)
            return answer

        setattr(central, "call", timed)  # noqa: B010  (an instance attribute over the method)
        self.calls = sink
        return sink

    def settle(self, sale: str) -> None:
        begntime = now_text()
        output = self.platform.query("1101", person_body(begntime), insured_region=REGION)
        body = sale_body(output["baseinfo"]["psn_no"], sale, begntime)
        self.platform.query("2101", body, insured_region=REGION)
        self.platform.transact("2102", body, insured_region=REGION, card_sn=CARD_SN)

    def settle_only(self, sale: str) -> None:
        """The 2102 alone (the person's psn_no known), journaled."""
        self.platform.transact("2102", sale_body(PSN_NO, sale, now_text()), insured_region=REGION, card_sn=CARD_SN)

    def close(self) -> None:
        self.platform.close()
        self.outbox.close()


class MsgIds:
    """msgids counted in memory (no journal): institution + yyyyMMddHHmmss + terminal + counter, past
    counter 99 into the following seconds, as the Outbox allocates them."""

    def __init__(self, st: Station) -> None:
        self.station = st
        self.last = 0

    def next(self) -> str:
        term = self.station.terminal_no
        own = int(dt.datetime.now(CST).strftime(MSGID_TIME)) * 10_000 + term * 100
        if own <= self.last:
            if self.last % 100 < 99:
                own = self.last + 1
            else:
                following = dt.datetime.strptime(str(self.last // 10_000), MSGID_TIME) + dt.timedelta(seconds=1)
                own = int(following.strftime(MSGID_TIME)) * 10_000 + term * 100
        self.last = own
        return f"{self.station.fixmedins_code}{own}"


class Raw:
    """The peer: the same envelopes posted with a plain httpx.Client; no journal, msgids in memory."""

    def __init__(self, url: str, terminal_no: int, sign_no: str | None = None) -> None:
        self.url = url + "/api/call"
        self.station = station(terminal_no)
        self.credentials = credentials()
        self.ids = MsgIds(self.station)
        self.http = httpx.Client(timeout=10.0)
        #: seconds of each 2102 HTTP call (``every``: all calls), when timed (:meth:`time_calls`)
        self.calls: list[float] | None = None
        self.every = False
        self.sign_no = sign_no if sign_no is not None else self.sign_in()

    def time_calls(self, every: bool = False) -> list[float]:
        self.calls = []
        self.every = every
        return self.calls

    def post(self, infno: str, body: dict[str, Any], sign_no: str) -> dict[str, Any]:
        st = self.station
        envelope = Envelope(infno, self.ids.next(), st, st.operator, REGION, dt.datetime.now(CST), body,
                            sign_no=sign_no)
        start = time.perf_counter()  # as CentralClient.call is timed for ours: encoding, signing, HTTP, JSON
        content = encode(envelope.to_dict()).encode()
        answer = self.http.post(self.url, content=content,
                                headers={"Content-Type": "application/json", **gateway_headers(self.credentials)})
        reply = json.loads(answer.content)
        if self.calls is not None and (self.every or infno == "2102"):
            self.calls.append(time.perf_counter() - start)
        if answer.status_code != 200 or not isinstance(reply, dict) or reply.get("infcode") != 0 \
                or not isinstance(reply.get("output"), dict):
            raise RuntimeError(f"raw {infno}: HTTP {answer.status_code} {answer.content[:300]!r}")
        output: dict[str, Any] = reply["output"]
        return output

    def sign_in(self) -> str:
        op = self.station.operator
        output = self.post("9001", {"signIn": {"opter_no": op.opter, "mac": "", "ip": "127.0.0.1"}}, "")
        return str(output["signinoutb"]["sign_no"])

    def settle(self, sale: str) -> None:
        begntime = now_text()
        output = self.post("1101", person_body(begntime), self.sign_no)
        body = sale_body(output["baseinfo"]["psn_no"], sale, begntime)
        self.post("2101", body, self.sign_no)
        self.post("2102", body, self.sign_no)

    def settle_only(self, sale: str) -> None:
        """The 2102 alone (the person's psn_no known)."""
        self.post("2102", sale_body(PSN_NO, sale, now_text()), self.sign_no)

    def close(self) -> None:
        self.http.close()


# --- the platform process ------------------------------------------------------------------------------

#: a platform process with cProfile on its event loop (main thread) and on its ledger thread
PROFILED_SERVER = r"""
import cProfile, sys
from sscard.central import CentralService
db, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
service = CentralService(db, "127.0.0.1", port)
loop, ledger = cProfile.Profile(), cProfile.Profile()
service.executor.submit(ledger.enable).result()
loop.enable()
try:
    service.server.run(sockets=[service.socket])
finally:
    loop.disable()
    service.executor.submit(ledger.disable).result()
    loop.dump_stats(out + ".loop")
    ledger.dump_stats(out + ".ledger")
    service.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ledger(path: Path) -> None:
    """A fresh ledger (seeded from fixtures/platform) whose test person's account is never the limit."""
    ledger = Ledger(path)
    try:
        ledger.conn.execute("UPDATE accounts SET balc = ? WHERE psn_no = ?", [BALANCE, PSN_NO])
    finally:
        ledger.close()


@contextlib.contextmanager
def platform_process(db: Path, profile: Path | None = None) -> Iterator[tuple[str, int]]:
    """``sscard central serve --db DB`` in its own process (or the profiled twin); yields its URL and
    process id, and stops it with SIGTERM."""
    port = free_port()
    if profile is None:
        args = [sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')", "central", "serve",
                "--port", str(port), "--db", str(db)]
    else:
        args = [sys.executable, "-c", PROFILED_SERVER, str(db), str(port), str(profile)]
    log = open(db.with_suffix(".log"), "wb")
    service = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=log, env=os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/_stats")
                break
            except httpx.TransportError:
                if service.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench: the platform did not start:\n"
                                     + db.with_suffix(".log").read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)
        yield url, service.pid
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        log.close()


def top(stats_source: cProfile.Profile | str, title: str, lines: int = 18, key: str = "tottime") -> None:
    """The functions that took the most time (``tottime``: in themselves; ``cumulative``: with callees)."""
    out = io.StringIO()
    stats = pstats.Stats(stats_source, stream=out)
    stats.strip_dirs().sort_stats(key).print_stats(lines)
    text = out.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    print(f"  --- cProfile: {title} (sorted by {key}) ---")
    for line in body.rstrip().splitlines():
        print("  " + line)


# --- 1. per-settlement cost ------------------------------------------------------------------------------

def breakdown(totals: list[float], calls: list[float]) -> tuple[float, float, float]:
    """Medians (ms) of a settlement's time, of its three calls' time, and of the rest: ``calls`` holds
    three call times per settlement of ``totals``, in order."""
    per = [sum(calls[3 * i:3 * i + 3]) for i in range(len(totals))]
    rest = [t - c for t, c in zip(totals, per, strict=True)]
    return (statistics.median(totals) * 1000, statistics.median(per) * 1000, statistics.median(rest) * 1000)


def capture(client: httpx.Client, sink: list[tuple[dict[str, Any], dict[str, str]]]) -> None:
    """Record each request's JSON body and headers (for the like-for-like check)."""
    def hook(request: httpx.Request) -> None:
        sink.append((json.loads(request.content), dict(request.headers)))
    client.event_hooks = {"request": [hook], "response": []}


def like_for_like(ours: list[tuple[dict[str, Any], dict[str, str]]],
                  raw: list[tuple[dict[str, Any], dict[str, str]]]) -> str:
    """Whether the two sides sent the same requests (same fields and order, same input but for the sale
    number and times, same sign_no and gateway headers); the reason when not."""
    if [b["infno"] for b, _ in ours] != [b["infno"] for b, _ in raw] or len(ours) != 3:
        return f"NO: ours sent {[b['infno'] for b, _ in ours]}, raw {[b['infno'] for b, _ in raw]}"
    for (a, ha), (b, hb) in zip(ours, raw, strict=True):
        if list(a) != list(b):
            return f"NO: {a['infno']} fields differ: {list(a)} vs {list(b)}"
        if a["sign_no"] != b["sign_no"]:
            return f"NO: {a['infno']} sign_no differs"
        for key in set(a) - {"msgid", "inf_time", "input", "opter", "sign_no"}:
            if a[key] != b[key]:
                return f"NO: {a['infno']} {key} differs: {a[key]!r} vs {b[key]!r}"
        ia, ib = json.loads(json.dumps(a["input"])), json.loads(json.dumps(b["input"]))
        for data in (ia.get("data", {}), ib.get("data", {})):
            data.pop("chrg_bchno", None)
            data.pop("begntime", None)
        if ia != ib:
            return f"NO: {a['infno']} input differs"
        gateway = sorted(k for k in ha if k.startswith("x-tif-"))
        if gateway != sorted(k for k in hb if k.startswith("x-tif-")) or len(gateway) != 4:
            return f"NO: gateway headers differ: {gateway}"
        if ha.get("content-type") != hb.get("content-type"):
            return "NO: content-type differs"
    sizes = "/".join(f"{len(encode(b))}" for b, _ in ours)
    return f"yes (1101, 2101, 2102: same fields in the same order, same sign_no, 4 x-tif-* headers; {sizes} bytes)"


def settle_bench(root: Path, rounds: int, per_round: int, seed: int, profile: bool) -> dict[str, float]:
    """Item 1 of the module docstring."""
    db = root / "settle-platform.sqlite"
    make_ledger(db)
    order = random.Random(seed)
    with platform_process(db) as (url, _pid):
        ours = Ours(root / "settle-journal.sqlite", url, 1, pace=False)
        try:
            raw = Raw(url, 2, sign_no=ours.platform.session.sign_in())  # the same session's sign_no
            try:
                sent_ours: list[tuple[dict[str, Any], dict[str, str]]] = []
                sent_raw: list[tuple[dict[str, Any], dict[str, str]]] = []
                capture(ours.platform.central.http, sent_ours)
                capture(raw.http, sent_raw)
                ours.settle("CHECK-O")
                raw.settle("CHECK-R")
                ours.platform.central.http.event_hooks = {"request": [], "response": []}
                raw.http.event_hooks = {"request": [], "response": []}
                check = like_for_like(sent_ours, sent_raw)
                sides: dict[str, Ours | Raw] = {"ours": ours, "raw": raw}
                for n in range(5):  # warm-up: connections, caches, the ledger's pages
                    ours.settle(f"WARM-O{n}")
                    raw.settle(f"WARM-R{n}")
                times: dict[str, list[list[float]]] = {"ours": [], "raw": []}
                firsts: list[str] = []
                for r in range(rounds):
                    names = list(sides)
                    order.shuffle(names)
                    firsts.append(names[0])
                    for name in names:
                        side = sides[name]
                        spent = []
                        for i in range(per_round):
                            sale = f"{name[0].upper()}{r:03d}-{i:05d}"
                            start = time.perf_counter()
                            side.settle(sale)
                            spent.append(time.perf_counter() - start)
                        times[name].append(spent)
                # where ours' time goes: the three calls vs the rest, and the same calls of raw
                calls = {"ours": ours.time_calls(every=True), "raw": raw.time_calls(every=True)}
                whole: dict[str, list[float]] = {"ours": [], "raw": []}
                for i in range(per_round * 2):
                    for name, side in sides.items():
                        start = time.perf_counter()
                        side.settle(f"B{name[0].upper()}-{i:05d}")
                        whole[name].append(time.perf_counter() - start)
                split = {name: breakdown(whole[name], list(calls[name])) for name in sides}
                if profile:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for i in range(per_round * 3):
                        ours.settle(f"P-{i:05d}")
                    profiler.disable()
            finally:
                raw.close()
        finally:
            ours.close()
    median_ours = statistics.median(t for rnd in times["ours"] for t in rnd) * 1000
    median_raw = statistics.median(t for rnd in times["raw"] for t in rnd) * 1000
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(times["ours"], times["raw"], strict=True)]
    ratio = statistics.median(ratios)

    def ms(values: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    pacing = "off (max_ahead=None)" if PACING else "not in this Outbox"
    print(f"1. per-settlement cost (1101 + 2101 + 2102) on loopback, one platform process, "
          f"{rounds} rounds x {per_round} settlements per side, order shuffled per round "
          f"(seed {seed}; first: {', '.join(firsts)}); the journal's msgid pacing {pacing}:")
    print(f"  like for like: {check}")
    print(f"  ours  Platform.query/query/transact, journal FULL  {median_ours:7.2f} ms/settlement (median; "
          f"round medians: {ms([statistics.median(r) * 1000 for r in times['ours']])})")
    print(f"  raw   httpx.Client.post x3, no journal            {median_raw:7.2f} ms/settlement (median; "
          f"round medians: {ms([statistics.median(r) * 1000 for r in times['raw']])})")
    print(f"  ratio ours/raw, median of rounds                  {ratio:7.3f}   (target <= 1.3; rounds: {ms(ratios)})")
    (t_ours, c_ours, r_ours), (t_raw, c_raw, r_raw) = split["ours"], split["raw"]
    print(f"  breakdown ({per_round * 2} more each, medians per settlement): ours {t_ours:.2f} ms = {c_ours:.2f} ms in "
          f"the three calls (CentralClient.call: encode, sign, HTTP, JSON) + {r_ours:.2f} ms journal and the rest "
          f"(2 msgid floors at NORMAL, begin_call and answer_call FULL); raw {t_raw:.2f} ms = {c_raw:.2f} ms in the "
          f"same (encode, sign, httpx.post, JSON) + {r_raw:.2f} ms building envelopes")
    if profile:
        top(profiler, f"ours, {per_round * 3} settlements, client side")
    return {"settle_ours_ms": median_ours, "settle_raw_ms": median_raw, "settle_ratio": ratio}


# --- 2. platform throughput ----------------------------------------------------------------------------------

@dataclass
class Load:
    """What one terminal did in the measured window."""

    terminal_no: int
    settled: int = 0
    #: CPU seconds this terminal's thread used in the window
    cpu: float = 0.0
    call_ms: list[float] = field(default_factory=list)
    settle_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    error: str | None = None


def terminal_run(kind: str, url: str, journal: Path, terminal_no: int, duration: float,
                 ready: Callable[[], object], only_2102: bool = False) -> Load:
    """One terminal (``kind`` ours or raw): set up, sign in, two warm-up settlements, wait for the others
    (``ready``), then settle (``only_2102``: the 2102 alone) until ``duration`` seconds have passed."""
    load = Load(terminal_no)
    side: Ours | Raw | None = None
    try:
        side = Ours(journal, url, terminal_no) if kind == "ours" else Raw(url, terminal_no)
        for n in range(2):
            side.settle(f"W{terminal_no:02d}-{n}")
        calls = side.time_calls()
    except Exception as err:
        load.error = f"terminal {terminal_no}: {type(err).__name__}: {err}"
        ready()
        return load
    ready()
    settle = side.settle_only if only_2102 else side.settle
    try:
        cpu = time.thread_time()
        start = time.perf_counter()
        end = start + duration
        n = 0
        now = start
        while now < end:
            settle(f"T{terminal_no:02d}-{n:08d}")
            done = time.perf_counter()
            load.settle_ms.append((done - now) * 1000)
            now = done
            n += 1
        load.cpu = time.thread_time() - cpu
        load.elapsed = now - start
        load.settled = n
        load.call_ms = [c * 1000 for c in calls]
    except Exception as err:
        load.error = f"terminal {terminal_no}: {type(err).__name__}: {err}"
    finally:
        side.close()
    return load


def _process_main(kind: str, url: str, journal: str, terminal_no: int, duration: float, only_2102: bool,
                  barrier: Any, results: Any) -> None:
    def ready() -> None:
        barrier.wait(timeout=120)
    results.put(terminal_run(kind, url, Path(journal), terminal_no, duration, ready, only_2102))


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) each thread of process ``pid`` has used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
                used[int(task)] = (int(fields[11]) + int(fields[12])) / tick
    return used


def platform_run(root: Path, mode: str, terminals: int, duration: float, only_2102: bool = False,
                 profile: Path | None = None) -> dict[str, Any]:
    """One run of ``mode`` against a fresh ledger: the terminals' loads, the totals, and the platform
    process's CPU over the window (read when the terminals start, and ``duration`` later)."""
    kind, how = mode.removesuffix(":2102").split("-")
    only_2102 = only_2102 or mode.endswith(":2102")
    run = root / f"{mode.replace(':', '-')}{'-profiled' if profile else ''}"
    run.mkdir()
    db = run / "platform.sqlite"
    make_ledger(db)
    cpu: list[dict[int, float]] = []
    with platform_process(db, profile) as (url, pid):
        journals = [run / f"journal-{t}.sqlite" for t in range(1, terminals + 1)]
        loads: list[Load] = []
        if how == "processes":
            ctx = mp.get_context("fork")  # no thread runs in this process here: forking is safe and quick
            barrier = ctx.Barrier(terminals + 1)
            results = ctx.Queue()
            procs = [ctx.Process(target=_process_main, args=(kind, url, str(j), t, duration, only_2102, barrier,
                                                                   results))
                     for t, j in enumerate(journals, 1)]
            for p in procs:
                p.start()
            barrier.wait(timeout=120)
            cpu.append(cpu_seconds(pid))
            time.sleep(duration)
            cpu.append(cpu_seconds(pid))
            loads = [results.get(timeout=duration + 180) for _ in procs]
            for p in procs:
                p.join(timeout=30)
        else:
            tbarrier = threading.Barrier(terminals + 1)
            lock = threading.Lock()

            def work(t: int, journal: Path) -> None:
                load = terminal_run(kind, url, journal, t, duration, lambda: tbarrier.wait(timeout=120), only_2102)
                with lock:
                    loads.append(load)

            threads = [threading.Thread(target=work, args=(t, j)) for t, j in enumerate(journals, 1)]
            for th in threads:
                th.start()
            tbarrier.wait(timeout=120)
            cpu.append(cpu_seconds(pid))
            time.sleep(duration)
            cpu.append(cpu_seconds(pid))
            for th in threads:
                th.join()
    errors = [load.error for load in loads if load.error]
    if errors:
        raise SystemExit("bench failed: " + "; ".join(errors))
    settled = sum(load.settled for load in loads)
    window = statistics.mean(load.elapsed for load in loads)
    calls = [c for load in loads for c in load.call_ms]
    settles = [s for load in loads for s in load.settle_ms]
    before, after = cpu
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    loop_cpu = spent.get(pid, 0.0)
    return {"mode": mode, "rate": settled / window, "settled": settled, "window": window,
            "cpu_ms": sum(spent.values()) / settled * 1000, "loop_ms": loop_cpu / settled * 1000,
            "other_ms": (sum(spent.values()) - loop_cpu) / settled * 1000,
            "cpu_share": sum(spent.values()) / window,
            "client_ms": sum(load.cpu for load in loads) / settled * 1000,
            "p50": percentile(calls, 50), "p99": percentile(calls, 99), "max": max(calls),
            "settle_p50": percentile(settles, 50), "settle_p99": percentile(settles, 99),
            "per_terminal": [load.settled for load in sorted(loads, key=lambda x: x.terminal_no)]}


def platform_bench(root: Path, modes: list[str], terminals: int, duration: float, profile: bool) -> dict[str, float]:
    """Item 2 of the module docstring."""
    print(f"2. the platform under {terminals} terminals of {INSTITUTION} (terminal numbers 1..{terminals}, one journal "
          f"each) settling (1101 + 2101 + 2102; ':2102': the 2102 alone), {duration:g} s each mode, one platform "
          f"process (ledger WAL, synchronous=FULL), {os.cpu_count()} CPUs shared by the platform and the terminals:")
    print(f"  (msgid ceiling: 100 msgids a second per terminal, 3 per settlement: {terminals} terminals sustain at "
          f"most {terminals * 100 / 3:.0f} settlements/s, {terminals * 100} with the 2102 alone, whatever the platform"
          f"{f'; the Outbox lets msgids run {AHEAD:g} s ahead of the clock first' if AHEAD else ''})")
    figures: dict[str, float] = {}
    for mode in modes:
        r = platform_run(root, mode, terminals, duration)
        print(f"  {mode:19s} {r['rate']:7.1f} settlements/s ({r['settled']} in {r['window']:.2f} s; per terminal "
              f"{r['per_terminal']}); 2102 call p50 {r['p50']:6.2f} ms, p99 {r['p99']:6.2f} ms, max "
              f"{r['max']:6.2f} ms; whole settlement p50 {r['settle_p50']:6.2f} ms, p99 {r['settle_p99']:6.2f} ms")
        print(f"  {'':19s} platform CPU {r['cpu_ms']:.2f} ms per settlement ({r['loop_ms']:.2f} ms event loop "
              f"thread, {r['other_ms']:.2f} ms ledger and other threads) = {r['cpu_share']:.2f} of one core; the "
              f"terminals' CPU {r['client_ms']:.2f} ms per settlement")
        if mode == modes[0]:
            figures = {"platform_settlements_per_s": r["rate"], "platform_p50_ms": r["p50"],
                       "platform_p99_ms": r["p99"]}
            print(f"  (headline figures: {mode}; targets >= 500 settlements/s and p99 < 50 ms)")
        elif mode == f"{modes[0]}:2102":
            figures |= {"platform_2102_only_per_s": r["rate"], "platform_2102_only_p99_ms": r["p99"]}
    if profile:
        out = root / "platform-profile"
        r = platform_run(root, modes[0], terminals, min(duration, 4.0), profile=out)
        print(f"  profiled platform (cProfile slows it): {r['rate']:.1f} settlements/s")
        top(str(out) + ".loop", "platform event loop thread (uvicorn, Starlette, gateway check, JSON out)")
        top(str(out) + ".ledger", "platform ledger thread (Ledger.process: SQLite, JSON, the transaction)")
    return figures


# --- 3. reconciliation of a 100k journal ---------------------------------------------------------------------

def _template(text: str, marks: dict[str, str]) -> str:
    """``text`` as a str.format template: braces doubled, each mark (a unique string) -> ``{name}``."""
    template = text.replace("{", "{{").replace("}", "}}")
    for name, mark in marks.items():
        if template.count(mark) < 1:
            raise AssertionError(f"mark {name} not in the template")
        template = template.replace(mark, "{" + name + "}")
    return template


def build_reconcile(root: Path, count: int, day: dt.date) -> tuple[Path, Path, int]:
    """A journal of ``count`` answered 2102s of ``day`` (rows as Platform.transact leaves them) and a
    ledger with the same settlements; returns (journal, ledger, total fen)."""
    st = station(1)
    journal = root / "reconcile-journal.sqlite"
    with Outbox(journal, st):  # the schema, migrated, with the station
        pass
    marks = {k: f"@@{k.upper()}@@" for k in ("msgid", "inf_time", "sale", "begntime", "fee")}
    body = sale_body(PSN_NO, marks["sale"], marks["begntime"])
    body["data"]["medfee_sumamt"] = marks["fee"]
    body["drugdetail"] = [{"feedetl_sn": "0001", "med_list_name": "阿莫西林胶囊", "cnt": 1, "pric": marks["fee"],
                           "det_item_fee_sumamt": marks["fee"]}]
    envelope_t = _template(encode({**Envelope("2102", marks["msgid"], st, st.operator, REGION, dt.datetime.now(CST),
                                              body).to_dict(), "inf_time": marks["inf_time"]}), marks)
    rmarks = {k: f"@@{k.upper()}@@" for k in ("msgid", "ref", "stamp", "setl_id", "sale", "setl_time", "fee",
                                               "acct", "cash", "balc")}
    reply_t = _template(json.dumps({
        "msgid": rmarks["msgid"], "infcode": 0, "inf_refmsgid": rmarks["ref"], "refmsg_time": rmarks["stamp"],
        "respond_time": rmarks["stamp"], "err_msg": "",
        "output": {"setlinfo": {
            "setl_id": rmarks["setl_id"], "mdtrt_id": "", "psn_no": PSN_NO, "psn_name": NAME, "insutype": "310",
            "med_type": "41", "chrg_bchno": rmarks["sale"], "setl_time": rmarks["setl_time"],
            "medfee_sumamt": rmarks["fee"], "fund_pay_sumamt": "0.00", "hifp_pay": "0.00", "acct_pay": rmarks["acct"],
            "psn_cash_pay": rmarks["cash"], "balc": rmarks["balc"], "insuplc_admdvs": REGION, "clr_type": "41"}}},
        ensure_ascii=False), rmarks)
    # the records end a minute ago (within the day: from midnight when the day is younger than they need)
    first = max(dt.datetime.now(CST) - dt.timedelta(seconds=count // 100 + 60),
                dt.datetime.combine(day, dt.time(0), CST))
    pid = os.getpid()
    rows, settlements = [], []
    balance, total_fen = BALANCE, 0
    seconds: dict[int, tuple[int, str, str]] = {}
    for i in range(count):
        second = i // 100
        if second not in seconds:
            at = first + dt.timedelta(seconds=second)
            seconds[second] = (int(at.strftime(MSGID_TIME)), at.strftime(INF_TIME), at.strftime("%Y-%m-%dT%H:%M:%S"))
        stamp, inf_time, iso = seconds[second]
        key = stamp * 10_000 + st.terminal_no * 100 + i % 100
        msgid = f"{INSTITUTION}{key}"
        fee = 500 + (i * 7919) % 30_000
        acct = 0 if i % 10 == 9 else fee  # one in ten paid in cash (acct_used_flag 0 at the till)
        balance -= acct
        total_fen += fee
        sale = f"S{i:08d}"
        setl_id = f"ST{day:%Y%m%d}{i + 1:010d}"
        created = f"{iso}.{(i * 9973) % 1_000_000:06d}+08:00"
        envelope = envelope_t.format(msgid=msgid, inf_time=inf_time, sale=sale, begntime=inf_time, fee=yuan(fee))
        reply = reply_t.format(msgid=msgid, ref=f"{REGION}{stamp}{i + 1:010d}", stamp=f"{stamp}000",
                               setl_id=setl_id, sale=sale, setl_time=inf_time, fee=yuan(fee), acct=yuan(acct),
                               cash=yuan(fee - acct), balc=yuan(balance))
        rows.append((key, msgid, "2102", created, CARD_SN, REGION, REGION, envelope, "answered", 1,
                     first.timestamp() + second + 30, None, created, 0, reply, pid))
        settlements.append((i + 1, setl_id, INSTITUTION, sale, sale.casefold(), "2102", msgid, PSN_NO, None, "310",
                            "41", "41", fee, 0, acct, fee - acct, 0, balance, inf_time, day.isoformat(), "settled"))
    # the first row is exactly what Envelope.to_wire writes (the template is right)
    sample = json.loads(rows[0][7])
    again = Envelope("2102", rows[0][1], st, st.operator, REGION, first,
                     {**sample["input"], "data": {**sample["input"]["data"], "medfee_sumamt": Fen(500)},
                      "drugdetail": [{**sample["input"]["drugdetail"][0], "pric": Fen(500),
                                      "det_item_fee_sumamt": Fen(500)}]}).to_wire()
    assert again == rows[0][7], "the journal template does not write what Envelope.to_wire writes"
    outbox = Outbox(journal)
    conn = outbox.db
    sealed = [(*row, outbox.seal.record(row[:8]), outbox.seal.answer(row[0], row[14], True)) for row in rows]
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO records (id, msgid, infno, created_at, card_sn, insured_region, treatment_region,"
                         " envelope, state, attempts, next_attempt_at, last_error, done_at, infcode, reply, owner, mac,"
                         " answer_mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", sealed)
        conn.execute("COMMIT")
    finally:
        conn.close()
    ledger_path = root / "reconcile-platform.sqlite"
    ledger = Ledger(ledger_path)
    try:
        ledger.conn.execute("BEGIN IMMEDIATE")
        ledger.conn.executemany(
            "INSERT INTO settlements (id, setl_id, fixmedins_code, chrg_bchno, chrg_key, infno, msgid, psn_no,"
            " mdtrt_id, insutype, med_type, clr_type, medfee, fund, acct, cash, deductible, balc, setl_time,"
            " setl_date, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", settlements)
        ledger.conn.execute("UPDATE accounts SET balc = ? WHERE psn_no = ?", [balance, PSN_NO])
        ledger.conn.execute("COMMIT")
    finally:
        ledger.close()
    return journal, ledger_path, total_fen


def reconcile_bench(root: Path, count: int, runs: int, profile: bool) -> dict[str, float]:
    """Item 3 of the module docstring."""
    day = dt.datetime.now(CST).date()
    start = time.perf_counter()
    journal, ledger_path, total_fen = build_reconcile(root, count, day)
    built = time.perf_counter() - start
    size = journal.stat().st_size
    alone: list[float] = []
    whole: list[float] = []
    with platform_process(ledger_path) as (url, _pid):
        outbox = Outbox(journal)
        platform = Platform(outbox, url, credentials(), timeout=60.0)
        try:
            platform.session.sign_in()
            for _ in range(runs):
                t = time.perf_counter()
                found = journal_settlements([outbox], day)
                alone.append(time.perf_counter() - t)
                if len(found) != count or sum(s.total for s in found) != total_fen:
                    raise SystemExit(f"bench failed: journal_settlements found {len(found)} of {count}")
                t = time.perf_counter()
                result = reconcile(platform, [outbox], day)
                whole.append(time.perf_counter() - t)
                counted = sum(line.totals.count for line in result.lines)
                if not result.balanced or counted != count or len(result.lines) != 9:
                    raise SystemExit(f"bench failed: reconciliation balanced={result.balanced}, {counted} counted, "
                                     f"{len(result.lines)} lines")
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                reconcile(platform, [outbox], day)
                profiler.disable()
        finally:
            platform.close()
            outbox.close()
    print(f"3. reconciliation of a {count:,}-record journal ({size / 1e6:.0f} MB, answered 2102s of {day}, built in "
          f"{built:.1f} s) against a ledger holding the same settlements, {runs} runs:")
    print(f"  reconcile() end to end (nine 3201 queries) {statistics.median(whole):6.2f} s (median; runs: "
          f"{', '.join(f'{x:.2f}' for x in whole)}); balanced, {count:,} settlements counted")
    print(f"  journal_settlements() alone                {statistics.median(alone):6.2f} s (median; runs: "
          f"{', '.join(f'{x:.2f}' for x in alone)}) = {statistics.median(alone) / count * 1e6:.1f} us/record")
    if profile:
        top(profiler, "reconcile(), client side")
    return {"reconcile_100k_s": statistics.median(whole)}


# --- main ----------------------------------------------------------------------------------------------------

UNITS = {"settle_ours_ms": "ms", "settle_raw_ms": "ms", "settle_ratio": "x", "platform_settlements_per_s": "1/s",
         "platform_p50_ms": "ms", "platform_p99_ms": "ms", "platform_2102_only_per_s": "1/s",
         "platform_2102_only_p99_ms": "ms", "reconcile_100k_s": "s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="settle,platform,reconcile",
                        help="benches to run, comma-separated: settle, platform, reconcile (default: all)")
    parser.add_argument("--rounds", type=int, default=15, help="settle: rounds, each side once per round (default 15)")
    parser.add_argument("--per-round", type=int, default=20, help="settle: settlements per side per round (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="settle: seed of the per-round order (default: random)")
    parser.add_argument("--terminals", type=int, default=8, help="platform: concurrent terminals (default 8)")
    parser.add_argument("--duration", type=float, default=4.0, help="platform: seconds per mode (default 4)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"platform: modes, the first gives the headline figures (default {','.join(MODES)}; "
                             f"also: {', '.join(sorted(set(ALL_MODES) - set(MODES)))})")
    parser.add_argument("--records", type=int, default=100_000, help="reconcile: journal records (default 100000)")
    parser.add_argument("--reconcile-runs", type=int, default=3, help="reconcile: timed runs (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary directory)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile tables (client, platform)")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - {"settle", "platform", "reconcile"}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown or not set(modes) <= set(ALL_MODES) or not modes:
        parser.error(f"unknown bench or mode: {sorted(unknown) or modes}")
    if args.terminals < 1 or args.terminals > 99:
        parser.error("--terminals is 1 to 99 (terminal numbers)")
    seed = random.randrange(10**6) if args.seed is None else args.seed
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs; anything else "
          "running shares them with the platform and the terminals)")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        if "settle" in only:
            figures |= settle_bench(root, args.rounds, args.per_round, seed, args.profile)
        if "platform" in only:
            figures |= platform_bench(root, modes, args.terminals, args.duration, args.profile)
        if "reconcile" in only:
            figures |= reconcile_bench(root, args.records, args.reconcile_runs, args.profile)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, value in figures.items():
        print(f"figure {name} {value:.3f} {UNITS[name]}")


if __name__ == "__main__":
    main()
