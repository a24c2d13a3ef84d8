"""Bench: the identity read through ``sscard serve`` (HTTP and WebSocket) beside the same read in-process.

    .venv/bin/python bench/service.py [--rounds 100] [--per-round 50] [--clients 4] [--duration 6] [--seed N]
    .venv/bin/python bench/service.py --only per-call --profile      # with cProfile tables (service, client)

The service is ``sscard serve --reader sim:adult`` in its own process on 127.0.0.1 (as a counter PC runs
it: uvicorn, the card work on a worker thread, one card session at a time per reader), started with a
fresh ``XDG_CONFIG_HOME`` (its token made there, read back with ``sscard serve --print-token``) and no
terminal configuration (bundled TEST keys, terminal number 00, no device number). The card is the
virtual ``sim:adult`` (in memory): no PC/SC, so what is left beside the card's own work is the service.

One call is the whole of iReadCardBas as the service does it (terminal/service.py, ``_identity`` and
``card_bas``): open the connection, SELECT, the genuine-card check (internal authentication with the
bundled test keys), read the identity (EF05 + EF06), the 11 ``pOutInfo`` fields; and the caller checks
the answer is exactly the expected ``pOutInfo`` (the in-process read's fields, ``00`` and an empty device).

1. Per-call cost, one client (issue: ms added per call <= 2 ms). Three sides, the same work:
   ``in-process``: the read above in this process (``open_connection``, ``SocialSecurityCard.select``,
   ``check_genuine``, ``read_identity``, ``card_bas``); ``http``: ``POST /api/convention {"function":
   "iReadCardBas", "iType": 3}`` with ``Authorization: Bearer TOKEN`` on one keep-alive
   ``httpx.Client``; ``ws``: the same JSON as a message on one open WebSocket ``/ws``
   (``websockets.sync.client``, the token in ``additional_headers``, permessage-deflate as negotiated
   by default, as browsers do; ``--ws-compression none`` to turn it off). In rounds (``--rounds``),
   each side makes ``--per-round`` calls back to back per round, the three in a random order per round
   (seeded: ``--seed``, printed). Reported: each side's median ms per call over all its calls; the ms
   added per call by HTTP and by WebSocket (the median over rounds of round median(side) - round
   median(in-process): the sides ran a fraction of a second apart, under the same machine noise) and
   the ratios (likewise, median of per-round ratios). The split line says where a call's time goes:
   this process's CPU per call (the client: httpx or websockets, JSON; in-process: the card work
   itself), the service process's CPU per call (from /proc/PID/task/*/schedstat: its event loop
   thread, which runs uvicorn, the guard, Starlette and JSON, and its other threads, which do the card
   work), and the rest of the mean wall time (neither process on a CPU: loopback wake-ups, thread
   hand-offs; negative when the two overlap).
2. ``--clients`` (4) concurrent clients on the one reader, each its own process and connection,
   calling back to back for ``--duration`` seconds; per transport (``--transports``, the first gives
   the headline figures): calls/s (all clients), latency p50/p99/max as each client sees it, the calls
   per client (fairness), the service's CPU per call and the share of one core it used. The service
   serialises card sessions per reader: concurrency must show as queueing (latency ~ clients x the
   service's time per call), never as a wrong answer; every answer is checked (success, code 0, the
   complete expected ``pOutInfo``) and one wrong or failed answer fails the bench (exit 1).
   With 2 cores, 4 client processes and the service share them: the service's CPU per call bounds
   the rate at 1000 / (its ms per call) per second whatever the clients do (its threads share a GIL).

``--profile``: one more short run per transport, the service under cProfile (its event loop thread,
and the card work ``ReaderService._run`` on the worker thread; CPU time of the thread, so the loop's
idle waits are not counted), and this process's client calls under cProfile (its main thread, wall
time: for WebSocket, not the client's background reader thread).

How to read it: ``added`` is what a counter program pays per read for going through the service
rather than linking the card code in; the ratio is large because the virtual card is fast (a card
behind PC/SC takes far longer per read, bench/read_card.py), the added ms is what carries over.
The in-process side is the card work run hot, back to back in one thread; in the service the same
work runs between the event loop and the other process, with colder caches, and takes a little more
CPU (the split line shows it: "card work" above the in-process figure). That is part of what the
service adds, as it would be for any program that does something between two reads.

The script ends with one line per figure: ``figure NAME VALUE UNIT`` (the headline ones:
service_http_added_ms, service_ws_added_ms, service_http_ratio, service_ws_ratio, inprocess_read_ms,
service_4_clients_calls_per_s, service_4_clients_p99_ms; and the medians and p50 beside them).
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect as ws_connect

from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import check_genuine
from sscard.terminal.convention import card_bas
from sscard.terminal.keystore import KeyStore, SoftwareKeyStore
from sscard.terminal.readers import open_connection

ROOT = Path(__file__).resolve().parents[1]

READER = "sim:adult"
#: the call every side makes
READ = {"function": "iReadCardBas", "iType": 3}
#: what ``sscard serve`` with no terminal configuration reports as terminal number and device
TERMINAL_NO, DEVICE = 0, ""
SIDES = ("in-process", "http", "ws")
TRANSPORTS = ("http", "ws")
#: ``sscard`` as a process (the console script's entry point, on this interpreter)
CLI = "from sscard.terminal.cli import main; main(prog_name='sscard')"
#: ``sscard serve`` under cProfile: argv[1] the output prefix, the rest the CLI's arguments. The event
#: loop runs on the main thread; the card work (``ReaderService._run``) on anyio's worker threads, one
#: at a time per reader, so one more profiler enabled around each call there.
PROFILED_SERVICE = r"""
import cProfile, sys, time
import sscard.terminal.service as service
out = sys.argv[1]
loop, work = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
run = service.ReaderService._run
def profiled(self, request, spec):
    work.enable()
    try:
        return run(self, request, spec)
    finally:
        work.disable()
service.ReaderService._run = profiled
from sscard.terminal.cli import main
loop.enable()
try:
    main(sys.argv[2:], prog_name="sscard", standalone_mode=False)
finally:
    loop.disable()
    loop.dump_stats(out + ".loop")
    work.dump_stats(out + ".work")
"""


class BenchError(SystemExit):
    """The bench cannot go on (a wrong answer, a service that does not start): exit 1 with the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench failed: {message}")


# --- the in-process read and the answers -------------------------------------------------------------

def read_in_process(keys: KeyStore) -> str:
    """iReadCardBas's work in this process: the ``pOutInfo`` of the card in :data:`READER`."""
    with open_connection(READER) as connection:
        card = SocialSecurityCard(connection)
        card.select()
        check_genuine(card, keys)
        return card_bas(card.read_identity(), TERMINAL_NO, DEVICE)


def problem(answer: Any, expected: str) -> str | None:
    """Why ``answer`` is not a successful, complete iReadCardBas giving ``expected`` (None: it is)."""
    if not isinstance(answer, dict):
        return f"not a JSON object: {str(answer)[:120]}"
    if answer.get("function") != "iReadCardBas" or answer.get("success") is not True or answer.get("code") != 0:
        return (f"function {answer.get('function')!r}, success {answer.get('success')!r}, code {answer.get('code')!r}: "
                f"{str(answer.get('pOutInfo'))[:120]}")
    if answer.get("pOutInfo") != expected:
        return f"pOutInfo {str(answer.get('pOutInfo'))[:160]!r} is not {expected!r}"
    return None


def checked(answer: Any, expected: str) -> None:
    why = problem(answer, expected)
    if why is not None:
        raise BenchError(why)


# --- the service in its own process ------------------------------------------------------------------------

@dataclass(frozen=True)
class Service:
    """A running ``sscard serve``: its URL, token and process id."""

    url: str
    token: str
    pid: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def service_process(root: Path, name: str, profile: Path | None = None) -> Iterator[Service]:
    """``sscard serve --port P --reader sim:adult`` in its own process (``profile``: under cProfile,
    the tables written to ``profile``.loop and .work), its config folder ``root/name``; stopped with
    SIGTERM."""
    home = root / name
    home.mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(home),
           "SSCARD_CONFIG": str(home / "no-terminal.toml")}  # no terminal configuration: test keys, 00, no device
    env.pop("SSCARD_READER", None)
    token = subprocess.run([sys.executable, "-c", CLI, "serve", "--print-token"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    port = free_port()
    serve = ["serve", "--port", str(port), "--reader", READER]
    args = [sys.executable, "-c", *((PROFILED_SERVICE, str(profile)) if profile else (CLI,)), *serve]
    log_path = home / "service.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
    service = Service(f"http://127.0.0.1:{port}", token, process.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(service.url + "/api/convention", json=READ, headers=service.headers, timeout=10,
                           trust_env=False)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("sscard serve did not start:\n"
                                     + log_path.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)
        yield service
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU of each thread of process ``pid`` so far (Linux /proc/PID/task/*/schedstat)."""
    used: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                used[int(task)] = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return used


def cpu_spent(before: dict[int, int], after: dict[int, int]) -> float:
    """Seconds on a CPU between two :func:`cpu_ns` readings (threads gone meanwhile: not counted)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


# --- the clients -------------------------------------------------------------------------------------------

class Client:
    """One client of the service: ``call()`` makes one iReadCardBas and returns the decoded answer."""

    def __init__(self, transport: str, service: Service, compression: str | None) -> None:
        self.transport = transport
        self.http: httpx.Client | None = None
        self.ws: ClientConnection | None = None
        self.url = service.url + "/api/convention"
        self.stack = contextlib.ExitStack()
        if transport == "http":
            self.http = self.stack.enter_context(httpx.Client(headers=service.headers, timeout=30, trust_env=False))
        elif transport == "ws":  # proxy=None: loopback, whatever the environment's proxy settings
            self.ws = self.stack.enter_context(ws_connect(service.ws_url, additional_headers=service.headers,
                                                          compression=compression, proxy=None, open_timeout=30))
        else:
            raise ValueError(f"unknown transport {transport!r}")

    def call(self) -> Any:
        if self.http is not None:
            return self.http.post(self.url, json=READ).json()
        assert self.ws is not None
        self.ws.send(json.dumps(READ))
        return json.loads(self.ws.recv(timeout=30))

    def close(self) -> None:
        self.stack.close()


# --- 1. per-call cost ----------------------------------------------------------------------------------------

def ms_list(values: list[float]) -> str:
    """Per-round values: all of them when few, else their spread (min, quartiles, max)."""
    if len(values) <= 20:
        return ", ".join(f"{x:.2f}" for x in values)
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"min {min(values):.2f}, quartiles {q1:.2f} {q2:.2f} {q3:.2f}, max {max(values):.2f}"


def top(source: cProfile.Profile | str, title: str, key: str = "tottime", lines: int = 16) -> None:
    """The functions that took the most time (``tottime``: in themselves; ``cumulative``: with callees)."""
    out = io.StringIO()
    stats = pstats.Stats(source, stream=out)
    stats.strip_dirs().sort_stats(key).print_stats(lines)
    text = out.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    total = getattr(stats, "total_tt", 0.0)
    print(f"  --- cProfile: {title} (sorted by {key}; {total:.3f} s in all) ---")
    for line in body.rstrip().splitlines():
        print("  " + line)


def per_call_bench(service: Service, keys: KeyStore, expected: str, rounds: int, per_round: int, seed: int,
                   compression: str | None) -> dict[str, float]:
    """Item 1 of the module docstring."""
    order = random.Random(seed)
    http = Client("http", service, compression)
    ws = Client("ws", service, compression)
    def in_process() -> None:
        out_info = read_in_process(keys)
        if out_info != expected:
            raise BenchError(f"the in-process read gave {out_info!r}, not {expected!r}")

    try:
        sides: dict[str, Callable[[], None]] = {
            "in-process": in_process,
            "http": lambda: checked(http.call(), expected),
            "ws": lambda: checked(ws.call(), expected),
        }
        for _ in range(20):  # warm-up: connections, imports, caches
            for side in sides.values():
                side()
        times: dict[str, list[list[float]]] = {name: [] for name in sides}
        client_cpu = dict.fromkeys(sides, 0.0)
        service_cpu = dict.fromkeys(sides, 0.0)
        loop_cpu = dict.fromkeys(sides, 0.0)  # the service's main thread: its event loop
        firsts: list[str] = []
        for _ in range(rounds):
            names = list(sides)
            order.shuffle(names)
            firsts.append(names[0])
            for name in names:
                side = sides[name]
                spent: list[float] = []
                cpu, before = time.process_time(), cpu_ns(service.pid)
                for _ in range(per_round):
                    start = time.perf_counter()
                    side()
                    spent.append(time.perf_counter() - start)
                client_cpu[name] += time.process_time() - cpu
                after = cpu_ns(service.pid)
                service_cpu[name] += cpu_spent(before, after)
                loop_cpu[name] += (after.get(service.pid, 0) - before.get(service.pid, 0)) / 1e9
                times[name].append([t * 1000 for t in spent])
    finally:
        http.close()
        ws.close()
    calls = rounds * per_round
    median = {name: statistics.median(t for rnd in times[name] for t in rnd) for name in sides}
    mean = {name: statistics.fmean(t for rnd in times[name] for t in rnd) for name in sides}
    round_medians = {name: [statistics.median(rnd) for rnd in times[name]] for name in sides}
    base = round_medians["in-process"]
    added = {name: [m - b for m, b in zip(round_medians[name], base, strict=True)] for name in TRANSPORTS}
    ratios = {name: [m / b for m, b in zip(round_medians[name], base, strict=True)] for name in TRANSPORTS}
    first = (", ".join(firsts) if rounds <= 20 else
             ", ".join(f"{name} {firsts.count(name)}x" for name in sides))
    print(f"1. per-call cost, one client: iReadCardBas on {READER}, {rounds} rounds x {per_round} calls per side, "
          f"order shuffled per round (seed {seed}; first: {first}); WebSocket compression "
          f"{compression or 'none'}; every answer checked against the in-process pOutInfo:")
    labels = {"in-process": "open, select, genuine check, read identity, card_bas",
              "http": "POST /api/convention, keep-alive httpx.Client",
              "ws": "one message on an open /ws (websockets sync client)"}
    for name in sides:
        print(f"  {name:10s} {labels[name]:54s} {median[name]:6.3f} ms/call (median; round medians: "
              f"{ms_list(round_medians[name])})")
    for name in TRANSPORTS:
        print(f"  {name:4s} added {statistics.median(added[name]):6.3f} ms/call, ratio {statistics.median(ratios[name]):5.2f} "
              f"(medians of the {rounds} rounds; added per round: {ms_list(added[name])}; target <= 2 ms)")
    print("  where a call's time goes (ms per call: mean wall = this process's CPU + the service's CPU + the rest: "
          "neither on a CPU, or when negative, both at once):")
    for name in sides:
        client, served = client_cpu[name] / calls * 1000, service_cpu[name] / calls * 1000
        loop = loop_cpu[name] / calls * 1000
        print(f"  {name:10s} {mean[name]:6.3f} = client {client:6.3f} + service {served:6.3f} (event loop {loop:.3f}, "
              f"card work and other threads {served - loop:.3f}) + rest {mean[name] - client - served:6.3f}")
    return {"service_http_added_ms": statistics.median(added["http"]),
            "service_ws_added_ms": statistics.median(added["ws"]),
            "service_http_ratio": statistics.median(ratios["http"]),
            "service_ws_ratio": statistics.median(ratios["ws"]),
            "inprocess_read_ms": median["in-process"],
            "service_http_ms": median["http"], "service_ws_ms": median["ws"]}


def profile_bench(root: Path, keys: KeyStore, expected: str, calls: int, compression: str | None) -> None:
    """``--profile``: per transport, a profiled service and ``calls`` profiled client calls."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        read_in_process(keys)
    profiler.disable()
    print(f"profiles ({calls} calls each; cProfile slows what it watches, read the shares, not the ms):")
    top(profiler, "in-process read, this process", "cumulative", 12)
    for transport in TRANSPORTS:
        out = root / f"profile-{transport}"
        with service_process(root, f"profiled-{transport}", out) as service:
            client = Client(transport, service, compression)
            try:
                for _ in range(20):
                    checked(client.call(), expected)
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(calls):
                    checked(client.call(), expected)
                profiler.disable()
            finally:
                client.close()
        top(str(out) + ".loop", f"{transport}: the service's event loop thread (uvicorn, Guard, Starlette, JSON)")
        top(str(out) + ".loop", f"{transport}: the service's event loop thread", "cumulative", 24)
        top(str(out) + ".work", f"{transport}: the service's card work (ReaderService._run on a worker thread)",
            "cumulative", 8)
        top(profiler, f"{transport}: the client, this process's main thread", "cumulative", 14)


# --- 2. concurrent clients ---------------------------------------------------------------------------------

@dataclass
class Load:
    """What one client did in the measured window."""

    client: int
    calls: int = 0
    latency_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    #: answers that were not a successful, complete iReadCardBas, and the first few reasons
    bad: int = 0
    reasons: list[str] = field(default_factory=list)
    error: str | None = None


def client_run(transport: str, service: Service, expected: str, client_no: int, duration: float,
               compression: str | None, ready: Callable[[], object]) -> Load:
    """One client: connect, two checked warm-up calls, wait for the others (``ready``), then call back
    to back for ``duration`` seconds, every answer timed and checked."""
    load = Load(client_no)
    waited = False
    try:
        client = Client(transport, service, compression)
    except Exception as err:
        load.error = f"client {client_no}: {type(err).__name__}: {err}"
        ready()
        return load
    try:
        for _ in range(2):
            checked(client.call(), expected)
        waited = True
        ready()
        start = time.perf_counter()
        end = start + duration
        now = start
        while now < end:
            answer = client.call()
            done = time.perf_counter()
            load.latency_ms.append((done - now) * 1000)
            now = done
            load.calls += 1
            why = problem(answer, expected)
            if why is not None:
                load.bad += 1
                if len(load.reasons) < 3:
                    load.reasons.append(why)
        load.elapsed = now - start
    except BaseException as err:
        load.error = f"client {client_no}: {type(err).__name__}: {err}"
        if not waited:
            ready()
    finally:
        client.close()
    return load


def _client_main(transport: str, service: Service, expected: str, client_no: int, duration: float,
                 compression: str | None, barrier: Any, results: Any) -> None:
    def ready() -> None:
        with contextlib.suppress(Exception):  # already passed (a failure after the start), or broken
            barrier.wait(timeout=60)

    results.put(client_run(transport, service, expected, client_no, duration, compression, ready))


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def clients_bench(service: Service, expected: str, transports: list[str], clients: int, duration: float,
                  compression: str | None, single_ms: dict[str, float]) -> dict[str, float]:
    """Item 2 of the module docstring."""
    print(f"2. {clients} concurrent clients on the one reader ({READER}), each its own process and connection, "
          f"calling back to back for {duration:g} s per transport; {os.cpu_count()} CPUs shared by the clients and "
          f"the service; every answer checked:")
    figures: dict[str, float] = {}
    failures: list[str] = []
    ctx = mp.get_context("fork")  # no thread runs in this process now (the clients of item 1 are closed)
    for transport in transports:
        barrier = ctx.Barrier(clients + 1)
        results = ctx.Queue()
        procs = [ctx.Process(target=_client_main, args=(transport, service, expected, n, duration, compression,
                                                         barrier, results))
                 for n in range(1, clients + 1)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        before = cpu_ns(service.pid)
        time.sleep(duration)
        after = cpu_ns(service.pid)
        loads = sorted((results.get(timeout=duration + 120) for _ in procs), key=lambda load: load.client)
        for p in procs:
            p.join(timeout=30)
        errors = [load.error for load in loads if load.error]
        if errors:
            raise BenchError("; ".join(errors))
        calls = sum(load.calls for load in loads)
        bad = sum(load.bad for load in loads)
        window = statistics.fmean(load.elapsed for load in loads)
        latency = [t for load in loads for t in load.latency_ms]
        rate = calls / window
        served = cpu_spent(before, after)
        service_ms = served / (rate * duration) * 1000  # the service's CPU over the sleep, per call made meanwhile
        p50, p99 = percentile(latency, 50), percentile(latency, 99)
        alone = f" (one client alone: {single_ms[transport]:.2f} ms)" if transport in single_ms else ""
        print(f"  {transport:4s} {rate:7.1f} calls/s ({calls} in {window:.2f} s; per client "
              f"{[load.calls for load in loads]}); latency p50 {p50:6.2f} ms, p99 {p99:6.2f} ms, max "
              f"{max(latency):6.2f} ms{alone}")
        reasons = list(dict.fromkeys(r for load in loads for r in load.reasons))
        print(f"  {'':4s} answers: {calls - bad} of {calls} a successful, complete iReadCardBas"
              f"{'' if not bad else '; WRONG: ' + ' | '.join(reasons)}")
        print(f"  {'':4s} the service's CPU {service_ms:.3f} ms per call = {served / duration:.2f} of one core "
              f"(bounds it at {1000 / service_ms:.0f} calls/s)")
        if bad:
            failures.append(f"{transport}: {bad} of {calls} answers wrong")
        if transport == transports[0]:
            figures |= {"service_4_clients_calls_per_s": rate, "service_4_clients_p50_ms": p50,
                        "service_4_clients_p99_ms": p99}
            print(f"  (headline figures: {transport}{'' if clients == 4 else f', with {clients} clients'})")
        else:
            figures |= {f"service_4_clients_{transport}_calls_per_s": rate, f"service_4_clients_{transport}_p99_ms": p99}
    if failures:
        raise BenchError("; ".join(failures))
    return figures


# --- main ----------------------------------------------------------------------------------------------------

UNITS = {"service_http_added_ms": "ms", "service_ws_added_ms": "ms", "service_http_ratio": "x",
         "service_ws_ratio": "x", "inprocess_read_ms": "ms", "service_http_ms": "ms", "service_ws_ms": "ms",
         "service_4_clients_calls_per_s": "1/s", "service_4_clients_p50_ms": "ms", "service_4_clients_p99_ms": "ms",
         "service_4_clients_http_calls_per_s": "1/s", "service_4_clients_http_p99_ms": "ms",
         "service_4_clients_ws_calls_per_s": "1/s", "service_4_clients_ws_p99_ms": "ms"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="per-call,clients",
                        help="benches to run, comma-separated: per-call, clients (default: both)")
    parser.add_argument("--rounds", type=int, default=100,
                        help="per-call: rounds, each side once per round (default 100)")
    parser.add_argument("--per-round", type=int, default=50, help="per-call: calls per side per round (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="per-call: seed of the per-round order (default: random)")
    parser.add_argument("--clients", type=int, default=4, help="clients: concurrent client processes (default 4)")
    parser.add_argument("--duration", type=float, default=6.0, help="clients: seconds per transport (default 6)")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help="clients: transports, the first gives the headline figures (default http,ws)")
    parser.add_argument("--ws-compression", choices=("deflate", "none"), default="deflate",
                        help="the WebSocket client's permessage-deflate offer (default deflate, as browsers)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile tables (service, client)")
    parser.add_argument("--profile-calls", type=int, default=500, help="calls per profiled run (default 500)")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary directory)")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not only or only - {"per-call", "clients"} or not transports or set(transports) - set(TRANSPORTS):
        parser.error(f"unknown bench or transport: {sorted(only)} {transports}")
    if args.rounds < 1 or args.per_round < 1 or args.clients < 1 or args.duration <= 0:
        parser.error("--rounds, --per-round, --clients and --duration must be positive")
    compression = None if args.ws_compression == "none" else args.ws_compression
    seed = random.randrange(10**6) if args.seed is None else args.seed
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs; anything else "
          "running shares them with the service and the clients)")
    keys = SoftwareKeyStore.bundled_test_keys()
    expected = read_in_process(keys)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        with service_process(root, "service") as service:
            with httpx.Client(headers=service.headers, trust_env=False) as probe:
                first = probe.post(service.url + "/api/convention", json=READ).json()
            if problem(first, expected) is not None:
                raise BenchError(f"the service's iReadCardBas is not the in-process read's: {problem(first, expected)}")
            print(f"service: {service.url} (pid {service.pid}), pOutInfo {expected!r} (the in-process read's)")
            if "per-call" in only:
                figures |= per_call_bench(service, keys, expected, args.rounds, args.per_round, seed, compression)
            if "clients" in only:
                single = {t: figures[f"service_{t}_ms"] for t in TRANSPORTS if f"service_{t}_ms" in figures}
                figures |= clients_bench(service, expected, transports, args.clients, args.duration, compression,
                                         single)
        if args.profile:
            profile_bench(root, keys, expected, args.profile_calls, compression)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, value in figures.items():
        print(f"figure {name} {value:.3f} {UNITS[name]}")


if __name__ == "__main__":
    main()
