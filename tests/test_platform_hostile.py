"""The virtual platform against strangers and floods (issue 13; docs/platform.md, "Strangers and
oversize requests"): where it listens, what it reads before the gateway's check, each institution's
bounds (body size, requests a second, ledger bytes a minute), the bounded connections and request
heads, and fault switches that are refused whole when malformed.

Every test runs a real :class:`central.CentralService` on 127.0.0.1 (or ``sscard central serve`` in a
process of its own, for its memory) and talks HTTP to it; nothing is mocked. Figures the report
quotes are printed (``pytest -s``).
"""
from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from queueing import Clock, free_port, wait_for_platform
from test_platform import CLINIC, PHARMACY, TODAY, Terminal, new_msgid

from sscard.central import CentralService
from sscard.central.server import MAX_HEAD, MAX_SMALL_BODY, Bounds, HostRefused
from sscard.message.envelope import gateway_headers
from sscard.terminal.gateway import test_credentials as credentials_of

MB = 1024 * 1024
#: what a stranger (or a careless holder of credentials) sends: 15 MB, as in the issue
OVERSIZE = 15 * MB


# --- helpers -----------------------------------------------------------------------------------------------

@contextmanager
def running(path: Path, **bounds: Any) -> Iterator[CentralService]:
    """The virtual platform with these :class:`Bounds` (the defaults otherwise), fault switches on."""
    with CentralService(path, faults=True, clock=Clock(TODAY), bounds=Bounds(**bounds)) as service:
        yield service


@pytest.fixture
def platform(tmp_path):
    with running(tmp_path / "platform.sqlite") as service:
        yield service


def ledger_bytes(path: Path) -> int:
    """The ledger's size as SQLite sees it (pages x page size, its WAL included), read by a connection of
    our own."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
                   .fetchone()[0])
    finally:
        conn.close()


def signed(station=CLINIC) -> dict[str, str]:
    return {"content-type": "application/json", **gateway_headers(credentials_of(station.fixmedins_code))}


def sign_in(url: str, station=CLINIC, headers: dict[str, str] | None = None) -> httpx.Response:
    """A 9001 sign-in of ``station`` over /api/call (signed with fresh headers unless given)."""
    message = Terminal(None, station).sign_in_message()  # type: ignore[arg-type]  (no service needed to build it)
    return httpx.post(f"{url}/api/call", content=json.dumps(message), headers=headers or signed(station), timeout=10)


def padded_batch(count: int, pad: int) -> bytes:
    """A batch of ``count`` messages the ledger stores although it refuses them (9001 in a batch): each a
    fresh msgid of the clinic and ``pad`` bytes of text. What a credential holder would send to grow the
    ledger as fast as it can."""
    messages = [{"infno": "9001", "msgid": new_msgid(CLINIC), "pad": "x" * pad} for _ in range(count)]
    return json.dumps({"messages": messages}).encode()


def raw(url: str, head: str, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """One request over a socket of its own: ``head`` (request line and headers, without the blank line),
    then ``body``; whatever comes back until the service closes or ``timeout``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # closed with some of our bytes unread: what came before stands
            pass
        return answer


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def signed_head(path: str, extra: str = "") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in signed().items())]
    return "\r\n".join(lines + ([extra] if extra else []))


# === 1. where it listens ===================================================================================

@pytest.mark.parametrize("host", ["", " ", "0.0.0.0", "::", "192.0.2.1", "example.org"])
def test_an_address_beyond_loopback_is_refused_without_allow_remote_and_no_ledger_is_made(tmp_path, host):
    db = tmp_path / "platform.sqlite"
    with pytest.raises(HostRefused, match="empty host|not this computer's loopback"):
        CentralService(db, host)
    assert not db.exists()


def test_an_empty_host_is_refused_even_with_remote_use_allowed(tmp_path):
    with pytest.raises(HostRefused, match="every interface"):
        CentralService(tmp_path / "platform.sqlite", "", allow_remote=True)


def test_every_interface_is_served_only_when_named_and_allowed(tmp_path):
    with CentralService(tmp_path / "platform.sqlite", "0.0.0.0", allow_remote=True) as service:
        port = service.url.rsplit(":", 1)[1]
        assert service.url == f"http://0.0.0.0:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=5).json()["messages"] == 0


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::"])
def test_the_cli_refuses_a_host_beyond_loopback_as_a_usage_error(tmp_path, host):
    from sscard.terminal.cli import main

    db = tmp_path / "platform.sqlite"
    result = CliRunner().invoke(main, ["central", "serve", "--db", str(db), "--host", host, "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "--host" in result.output and ("--allow-remote" in result.output or "empty host" in result.output)
    assert "Traceback" not in result.output
    assert not db.exists()


def test_the_cli_serves_every_interface_with_allow_remote_and_says_so(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')",
                             "central", "serve", "--db", str(tmp_path / "platform.sqlite"), "--host", "0.0.0.0",
                             "--allow-remote", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_platform(f"http://127.0.0.1:{port}", proc)
        assert sign_in(f"http://127.0.0.1:{port}").json()["infcode"] == 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "warning: the virtual platform listens beyond this computer (0.0.0.0" in err


# === 2. strangers and oversize bodies, in a process of its own: its memory =================================

def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM, kB)."""
    status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status_lines if line.startswith("VmHWM:")))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the service's peak memory from /proc")
def test_strangers_and_oversize_bodies_cost_the_service_no_memory_and_the_ledger_nothing(tmp_path):
    db, port = tmp_path / "platform.sqlite", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main(prog_name='sscard')",
                             "central", "serve", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_platform(url, proc)
        assert sign_in(url).json()["infcode"] == 0  # every code path warm before the baseline
        assert httpx.post(f"{url}/api/call", content=b"{}", timeout=5).status_code == 403
        baseline, ledger_before = peak_rss_kb(proc.pid), ledger_bytes(db)
        oversize = b"[" * OVERSIZE

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must cut it off as it streams
            for _ in range(OVERSIZE // 65536):
                yield b"[" * 65536

        def post(kind: str) -> tuple[int, str]:
            headers = {} if kind.startswith("stranger") else signed()
            content = chunks() if kind.endswith("streamed") else oversize
            answer = httpx.post(f"{url}/api/batch", content=content, headers=headers, timeout=30)
            return answer.status_code, answer.json()["err_msg"]

        kinds = [k for k in ("stranger", "stranger streamed", "signed", "signed streamed") for _ in range(6)]
        results: dict[int, tuple[int, str]] = {}
        threads = [threading.Thread(target=lambda i=i, k=k: results.__setitem__(i, post(k)))
                   for i, k in enumerate(kinds)]
        for t in threads:
            t.start()
        bomb = head_bomb(url)
        for t in threads:
            t.join(60)
        peak = peak_rss_kb(proc.pid)
        for i, kind in enumerate(kinds):
            code, message = results[i]
            if kind.startswith("stranger"):
                assert code == 403 and "x-tif" in message
            else:
                assert code == 413 and "at most 2097152 bytes" in message
        assert bomb < 8 * MB  # the service stopped reading long before 30 MB of header lines
        # the service still works, and holds nothing more than before
        assert sign_in(url).json()["infcode"] == 0
        assert httpx.get(f"{url}/_stats", timeout=5).json()["messages"] == 2
        grown = ledger_bytes(db) - ledger_before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    growth_mb = (peak - baseline) / 1024
    print(f"\nfigure platform_peak_rss_growth {growth_mb:.1f} MB (baseline {baseline / 1024:.1f} MB, peak "
          f"{peak / 1024:.1f} MB) under 12 stranger and 12 signed 15 MB bodies and a 30 MB head; ledger +{grown} bytes")
    assert growth_mb < 64
    assert grown <= 2 * 4096  # the two sign-ins and the signed requests' nonces: a page or two


def head_bomb(url: str) -> int:
    """A stranger's request whose header lines never end (30 MB of them): the bytes it got to send."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/call HTTP/1.1\r\nHost: x\r\n")
        lines = b"X-Junk: y\r\n" * 6000
        try:
            while sent < 30 * MB:
                sock.sendall(lines)
                sent += len(lines)
        except OSError:  # the service closed the connection
            pass
    return sent


# === 3. the head and the body, bounded ===================================================================

def test_a_head_past_its_bound_is_answered_431_and_the_service_keeps_working(platform):
    lines = "\r\n".join(f"X-Junk-{i}: {'y' * 1000}" for i in range(MAX_HEAD // 1000 + 2))
    answer = raw(platform.url, f"POST /api/call HTTP/1.1\r\nHost: x\r\n{lines}")
    assert status(answer) == 431 and b"at most 16384 bytes" in answer
    many = "\r\n".join(f"X-{i}: y" for i in range(70))
    answer = raw(platform.url, f"POST /api/call HTTP/1.1\r\nHost: x\r\n{many}")
    assert status(answer) == 431 and b"at most 64 header lines" in answer
    assert sign_in(platform.url).json()["infcode"] == 0


def test_a_silent_or_dribbling_client_is_cut_off_after_head_seconds(tmp_path):
    with running(tmp_path / "platform.sqlite", head_seconds=0.5) as service:
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5) as silent:
            assert silent.recv(100) == b""  # closed, nothing said: it asked nothing
        with socket.create_connection((host, int(port)), timeout=5) as dribbling:
            dribbling.sendall(b"POST /api/call HTTP/1.1\r\nHost: x\r\n")
            answer = dribbling.recv(1000)
        assert status(answer) == 408 and b"within 0.5 s" in answer
        assert time.monotonic() - start < 3
        assert sign_in(service.url).json()["infcode"] == 0


def test_a_body_that_does_not_arrive_in_time_is_408_and_its_headers_are_used_up(tmp_path):
    with running(tmp_path / "platform.sqlite", body_seconds=0.5) as service:
        message = json.dumps(Terminal(service, CLINIC).sign_in_message()).encode()
        headers = signed()
        head = "\r\n".join(["POST /api/call HTTP/1.1", "Host: x", f"Content-Length: {len(message)}",
                            *(f"{k}: {v}" for k, v in headers.items())])
        answer = raw(service.url, head, message[:10])  # and then nothing
        assert status(answer) == 408 and b"within 0.5 s" in answer
        replay = sign_in(service.url, headers=headers)
        assert replay.status_code == 403 and "nonce" in replay.json()["err_msg"]
        assert service.ledger.count() == 0


def test_a_declared_oversize_body_is_refused_before_any_of_it_is_read(platform):
    # the headers alone: the service answers without waiting for a byte of the 3 MiB announced
    answer = raw(platform.url, signed_head("/api/batch", f"Content-Length: {3 * MB}"), timeout=5)
    assert status(answer) == 413 and b"connection: close" in answer.lower()
    small = raw(platform.url, signed_head("/api/ec/query", f"Content-Length: {MAX_SMALL_BODY + 1}"), timeout=5)
    assert status(small) == 413 and f"at most {MAX_SMALL_BODY} bytes".encode() in small
    assert platform.ledger.count() == 0 and sign_in(platform.url).json()["infcode"] == 0


def test_a_stranger_is_refused_from_the_headers_and_the_connection_closed(platform):
    answer = raw(platform.url, f"POST /api/batch HTTP/1.1\r\nHost: x\r\nContent-Length: {OVERSIZE}", timeout=5)
    assert status(answer) == 403 and b"connection: close" in answer.lower() and b"x-tif" in answer


# === 4. each institution's bounds ==========================================================================

def test_past_its_requests_a_second_an_institution_gets_429_and_others_do_not(tmp_path):
    with running(tmp_path / "platform.sqlite", requests_per_second=5, request_burst=5) as service:
        for _ in range(5):
            assert sign_in(service.url).json()["infcode"] == 0
        headers = signed()
        refused = sign_in(service.url, headers=headers)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "H33030200001 sends more than its 5 requests a second" in refused.json()["err_msg"]
        assert refused.headers["connection"] == "close"
        assert sign_in(service.url, PHARMACY).json()["infcode"] == 0  # another institution's own bounds
        time.sleep(1.1)
        again = sign_in(service.url, headers=headers)  # the refused request's headers are used up
        assert again.status_code == 403 and "nonce" in again.json()["err_msg"]
        assert sign_in(service.url).json()["infcode"] == 0
        assert service.ledger.count() == 7


def test_past_its_ledger_bytes_an_institution_gets_429_and_the_ledger_stops_growing(tmp_path):
    burst = 1 * MB
    with running(tmp_path / "platform.sqlite", ledger_burst=burst, ledger_bytes_per_minute=64 * 1024) as service:
        before = ledger_bytes(service.ledger.path)
        codes = []
        for _ in range(15):
            answer = httpx.post(f"{service.url}/api/batch", content=padded_batch(50, 4000), headers=signed(),
                                timeout=10)
            codes.append(answer.status_code)
        grown = ledger_bytes(service.ledger.path) - before
        assert codes[0] == 200 and codes[-1] == 429
        assert "grown the ledger by more than its 0.0625 MiB a minute" in answer.json()["err_msg"]
        assert int(answer.headers["retry-after"]) >= 1
        # the burst, a second's refill and the one request that went past zero
        assert grown < burst + 400 * 1024, grown
        assert sign_in(service.url, PHARMACY).json()["infcode"] == 0


def test_a_flood_of_full_batches_grows_the_ledger_by_the_burst_not_by_a_hundred_megabytes(tmp_path):
    """The issue's flood: one institution's credential holder posting ~1.9 MB batches from 4 threads for
    2 s grew the ledger by ~100 MB (165 MB with 4 MB bodies); with the default bounds it stops at the
    burst (32 MiB), the refill (32 MiB a minute) and one request past zero."""
    db = tmp_path / "platform.sqlite"
    with running(db) as service:
        before = ledger_bytes(db)
        codes: list[int] = []
        retry_after: set[str] = set()
        start = time.monotonic()
        end = start + 2

        def flood() -> None:
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < end:
                    answer = client.post(f"{service.url}/api/batch", content=padded_batch(500, 3800),
                                         headers=signed())
                    codes.append(answer.status_code)
                    if answer.status_code == 429:
                        retry_after.add(answer.headers["retry-after"])

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - start
        assert sign_in(service.url, PHARMACY).json()["infcode"] == 0  # the others are served meanwhile
    grown = ledger_bytes(db) - before
    print(f"\nfigure platform_flood_ledger_growth {grown / MB:.1f} MiB in {elapsed:.1f} s "
          f"({codes.count(200)} batches accepted, {codes.count(429)} refused 429)")
    assert set(codes) == {200, 429} and all(v.isdigit() and int(v) >= 1 for v in retry_after)
    assert grown < 32 * MB + elapsed * MB + 4 * MB


# === 5. connections ========================================================================================

def test_connections_are_bounded_and_silent_ones_do_not_hold_the_bound(tmp_path):
    with running(tmp_path / "platform.sqlite", connections=4, head_seconds=1) as service:
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        idle = [socket.create_connection((host, int(port))) for _ in range(3)]
        try:
            time.sleep(0.1)
            busy = httpx.get(f"{service.url}/_stats", timeout=5)
            assert busy.status_code == 503
            time.sleep(1.5)  # the silent ones are closed after head_seconds
            assert all(sock.recv(10) == b"" for sock in idle)
            assert httpx.get(f"{service.url}/_stats", timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_the_unsigned_stats_are_answered_a_bounded_number_of_times_a_second(tmp_path):
    with running(tmp_path / "platform.sqlite", stats_per_second=3) as service:
        codes = [httpx.get(f"{service.url}/_stats", timeout=5).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]


def test_bounds_are_positive_numbers():
    with pytest.raises(ValueError, match="max_body must be a positive number"):
        Bounds(max_body=0)
    with pytest.raises(ValueError, match="requests_per_second"):
        Bounds(requests_per_second=float("nan"))
    with pytest.raises(ValueError, match="connections"):
        Bounds(connections=True)


# === 6. fault switches refused whole ========================================================================

MALFORMED = [
    {"mode": "fail", "retry_after": "秒"},  # not a header value: every later request failed with a 500
    {"mode": "fail", "retry_after": "1\r\nX-Evil: 1"},  # not a header value: every later request dropped
    {"mode": "fail", "retry_after": ""},
    {"mode": "fail", "retry_after": "9" * 65},
    {"mode": "fail", "retry_after": ["1"]},
    {"mode": "fail", "count": 0},
    {"mode": "fail", "count": 1.5},
    {"mode": "fail", "count": True},
    {"mode": "fail", "count": "2"},
    {"mode": "stall", "seconds": -1},
    {"mode": "stall", "seconds": 3601},
    {"mode": "stall", "seconds": "5"},
    {"mode": "explode"},
    {"mode": ["fail"]},
    {"mode": "fail", "infno": 2101},
    {"mode": "fail", "infno": "9999"},
    {"mode": "fail", "infno": "x" * 10_000},
    {"mode": "fail", "colour": "red"},
    ["fail"],
]


@pytest.mark.parametrize("payload", MALFORMED, ids=lambda p: json.dumps(p, ensure_ascii=False)[:40])
def test_a_malformed_control_request_is_400_changes_nothing_and_later_requests_work(platform, payload):
    platform.set_fault("stall", count=3, seconds=0, infno="2101")  # a fault already set stays as it was
    before = dict(platform.fault_plan)
    answer = httpx.post(f"{platform.url}/_control", content=json.dumps(payload), headers=signed(), timeout=5)
    assert answer.status_code == 400 and answer.json()["infcode"] == -1 and answer.json()["err_msg"]
    assert platform.fault_plan == before and platform.faulty_requests == 0
    for _ in range(3):
        reply = sign_in(platform.url)
        assert reply.status_code == 200 and reply.json()["infcode"] == 0
    if isinstance(payload, dict) and set(payload) <= {"mode", "count", "seconds", "retry_after", "infno"}:
        with pytest.raises(ValueError):
            platform.set_fault(**payload)
        assert platform.fault_plan == before


def test_a_well_formed_control_request_still_sets_its_fault(platform):
    answer = httpx.post(f"{platform.url}/_control", json={"mode": "fail", "count": 1, "retry_after": 120},
                        headers=signed(), timeout=5)
    assert answer.json() == {"mode": "fail"}
    failed = sign_in(platform.url)
    assert failed.status_code == 503 and failed.headers["retry-after"] == "120"
    assert sign_in(platform.url).json()["infcode"] == 0
