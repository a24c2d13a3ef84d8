"""Shared parts for the queue, uploader and central tests: a station, a settable clock, real files.

Test modules import the fixtures from here (``from queueing import outbox, central``).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sscard.central import CentralService
from sscard.message.envelope import CST, Fen, Operator, Station, gateway_headers
from sscard.terminal.gateway import test_credentials
from sscard.terminal.queue import Outbox

STATION = Station("H11010500001", "北京测试医院", "110105", 7, Operator("D001", "王医生"))
CARD = "110105D156000005001234567890ABCD"
OTHER_CARD = "310101D15600000500FEDCBA0987654"


def free_port() -> int:
    """A loopback port nothing listens on (for an unreachable service, or one started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Clock:
    """A settable clock (Beijing time); ``tick`` moves it on."""

    def __init__(self, start: dt.datetime = dt.datetime(2026, 3, 1, 9, 30, 0, tzinfo=CST)) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, seconds: float = 1) -> None:
        self.now += dt.timedelta(seconds=seconds)


#: a person of fixtures/platform/persons.json insured in each region the tests use
PERSONS = {"110105": "1101000000000009", "310101": "3101000000000010"}
#: the TEST gateway credentials of STATION's institution (fixtures/platform/institutions.json)
CREDENTIALS = test_credentials(STATION.fixmedins_code)


def signed(credentials=CREDENTIALS) -> dict[str, str]:
    """Gateway headers for one raw request (a fresh nonce each time)."""
    return gateway_headers(credentials)


def central_client(url: str, **options):
    """A :class:`terminal.upload.CentralClient` signing as STATION's institution."""
    from sscard.terminal.upload import CentralClient

    return CentralClient(url, credentials=CREDENTIALS, **options)


def registration(outbox: Outbox, insured_region: str = "110105", card_sn: str | None = CARD, **extra):
    """An outpatient registration (2201) as the desk queues it while the platform is unreachable, for a
    person the virtual platform knows (insured in ``insured_region``)."""
    body = {"data": {"psn_no": PERSONS.get(insured_region, "P0001"), "insutype": "310", "med_type": "11",
                     "begntime": "2026-03-01 09:30:00", **extra}}
    return outbox.add("2201", body, insured_region=insured_region, card_sn=card_sn)


def purchase(outbox: Outbox, total: object = Fen(2350)):
    """A pharmacy settlement (2102) journaled as an online call (state ``calling``): never uploaded."""
    body = {"data": {"psn_no": PERSONS["110105"], "med_type": "41", "medfee_sumamt": total, "chrg_bchno": "T1"}}
    return outbox.begin_call("2102", body, insured_region="110105", card_sn=CARD)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path, clock):
    with Outbox(tmp_path / "queue.sqlite", STATION, clock=clock) as box:
        yield box


@pytest.fixture
def central(tmp_path):
    """The virtual platform on a loopback port, its fault switches on."""
    with CentralService(tmp_path / "central.sqlite", faults=True) as service:
        yield service


def as_unprivileged() -> None:
    """``preexec_fn`` so a child run by root obeys file modes as anyone else does (a read-only file
    is then read-only to it): drops CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the
    bounding set before exec (prctl PR_CAPBSET_DROP). A no-op for a non-root user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # linux/capability.h
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` and its folder read-only (0444 / 0555) for the duration."""
    file_mode, dir_mode = path.stat().st_mode, path.parent.stat().st_mode
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        yield path
    finally:
        path.parent.chmod(dir_mode)
        path.chmod(file_mode)


def http_reply(body: object, status: str = "200 OK") -> bytes:
    """A whole HTTP/1.1 response carrying ``body`` (JSON unless bytes), closing the connection."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + data


class ScriptedService:
    """A real HTTP server on 127.0.0.1 (raw sockets, one thread per connection) whose every answer is
    ``answer(path, request_body)``: whole response bytes, sent ``per_byte`` seconds apart (a service
    trickling its reply, status line and headers included) or at once. ``requests`` counts them."""

    def __init__(self, answer: Callable[[str, bytes], bytes], per_byte: float = 0.0) -> None:
        self.answer, self.per_byte = answer, per_byte
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> ScriptedService:
        self.threads.append(threading.Thread(target=self._accept, daemon=True))
        self.threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.sock.close()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)  # to see stopping
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, body = data.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                               if k.strip().lower() == "content-length"), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1
                reply = self.answer(lines[0].split()[1], body)
                if not self.per_byte:
                    conn.sendall(reply)
                    return
                for i in range(len(reply)):
                    if self.stopping.wait(self.per_byte):
                        return
                    conn.sendall(reply[i:i + 1])
            except OSError:  # the client gave up and hung up: that is what some tests want
                return


def reseal(outbox: Outbox, msgid: str) -> None:
    """Seal a row a test has edited in SQLite, as if the terminal had written it so (terminal/seal.py):
    the test is about what the platform or the uploader does with such a record, not about the seal."""
    from sscard.terminal.seal import SEALED

    row = outbox.db.execute(f"SELECT {', '.join(SEALED)} FROM records WHERE msgid = ?", [msgid]).fetchone()
    outbox.db.execute("UPDATE records SET mac = ? WHERE msgid = ?", [outbox.seal.record(row), msgid])


def wait_for_platform(url: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    """Return once the virtual platform that ``proc`` runs answers at ``url`` (``GET /_stats``); if the
    process ends or ``seconds`` pass first, kill it and fail the test with what it said on stderr."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/_stats", timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                said = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"the platform did not start: {said}")
            time.sleep(0.05)
