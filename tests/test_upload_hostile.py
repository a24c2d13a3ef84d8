"""The uploader against a platform, or a proxy on the way, that lies (issue 13; docs/security.md,
"Hostile platform answers"): answers that inflate to gigabytes, per-record answers that contradict
the batch or themselves, error pages that are not the platform's, and URLs carrying a password.

Every hostile answer comes from a real HTTP server on 127.0.0.1 (:class:`HostilePlatform`, http.server
in a thread); the virtual platform (``central``) shows the records it left pending go up intact.
The memory of an upload under a bomb is measured in a fresh process (:data:`MEASURE`).
"""
from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from queueing import central, clock, free_port, outbox, registration  # noqa: F401

from sscard.terminal.cli import main
from sscard.terminal.upload import MAX_BATCH_ANSWER, MAX_CALL_ANSWER, Uploader, shown_url

ROOT = Path(__file__).resolve().parents[1]
#: records in each hostile batch (the issue's "all 30 sent dead")
RECORDS = 30
#: the most a bomb may grow the uploading process (its peak resident memory): far below what it inflates to
MAX_GROWTH_MIB = 64
SIGN_IN = {"infcode": 0, "err_msg": "", "output": {"signinoutb": {"sign_time": "2026-03-01 09:30:00", "sign_no": "S1"}}}
SECRET = "s3cret-Pw"


@dataclass
class Reply:
    """One HTTP answer: a body of bytes (sent with its length), or pieces streamed until the client hangs up."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


def json_reply(body: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode())


class HostilePlatform:
    """A lying platform or proxy on a loopback port (http.server, a thread per connection): a 9001
    sign-in is accepted (``sign_no`` S1) unless ``sign_in`` is False; every other request gets
    ``answer(path, payload)``. ``requests`` holds each request's path and headers."""

    def __init__(self, answer: Callable[[str, Any], Reply], *, sign_in: bool = True) -> None:
        self.answer, self.sign_in = answer, sign_in
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                payload = json.loads(raw or b"null")
                signing_in = self.path == "/api/call" and isinstance(payload, dict) and payload.get("infno") == "9001"
                reply = json_reply(SIGN_IN) if signing_in and outer.sign_in else outer.answer(self.path, payload)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if isinstance(reply.body, bytes):
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                try:
                    for piece in [reply.body] if isinstance(reply.body, bytes) else reply.body:
                        self.wfile.write(piece)
                except OSError:  # the uploader stopped reading and hung up: what a bomb should get
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HostilePlatform:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    @property
    def batches(self) -> int:
        """How many batches were posted (a bisection posts more than one)."""
        return sum(path == "/api/batch" for path, _ in self.requests)


# --- bombs --------------------------------------------------------------------------------------------

@functools.cache
def gzip_bomb(size: int = 1 << 30) -> bytes:
    """A valid gzip of ``size`` zero bytes (~1 MB for 1 GiB), built without holding or compressing the
    gigabyte: after a full flush, each further MiB of zeros compresses to the same block."""
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    assert block == packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    last = packer.flush()[:-8]  # the final block; its trailer is for 3 MiB, ours for ``size``
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(mib, crc)
    return head + block * ((size >> 20) - 1) + last + struct.pack("<II", crc, size & 0xFFFFFFFF)


def gzipped(path: str, payload: Any) -> Reply:
    """The 1 MB gzip that inflates to 1 GiB, whatever was asked."""
    return Reply(200, gzip_bomb(), {"Content-Type": "application/json", "Content-Encoding": "gzip"})


def fifty_megabytes(path: str, payload: Any) -> Reply:
    """A 50 MiB answer, uncompressed, streamed a MiB at a time (results that never end)."""
    item = b'{"msgid": "H11010500001202603010930000701", "infcode": 0}, '
    mib = item * ((1 << 20) // len(item))

    def pieces() -> Iterator[bytes]:
        yield b'{"results": ['
        for _ in range(50):
            yield mib
    return Reply(200, pieces())


#: the memory of one upload under a bomb, in a fresh process, in KiB: its peak resident memory while it
#: drains (VmHWM, the peak reset just before where Linux allows) less its resident memory just before
#: (VmRSS). Not ``ru_maxrss``: a process started by fork and exec keeps the forking parent's high-water
#: mark in it (run from pytest it reads ~74 MB before the drain, with 40 MB resident).
MEASURE = textwrap.dedent(
    """
    import json, sys
    from sscard.terminal.gateway import test_credentials
    from sscard.terminal.queue import Outbox
    from sscard.terminal.upload import Uploader

    def memory_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    with Outbox(sys.argv[1]) as outbox:
        credentials = test_credentials(outbox.require_station().fixmedins_code)
        with Uploader(outbox, sys.argv[2], credentials=credentials) as uploader:
            try:
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")  # the peak starts from now
            except OSError:
                pass  # then the peak so far counts too: a measure no smaller
            before = memory_kib("VmRSS")
            report = uploader.drain(ignore_schedule=True)
            growth = memory_kib("VmHWM") - before
        counts = outbox.counts()
    print(json.dumps({"growth_kib": growth, "error": report.error, "counts": counts}))
    """
)


def measured_upload(queue: Path, url: str) -> dict[str, Any]:
    """:data:`MEASURE` run on ``queue`` against ``url``: its growth, error and counts."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(queue), url], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def test_the_bomb_is_a_real_gzip_of_a_gigabyte():
    bomb = gzip_bomb()
    assert len(bomb) < 1_100_000
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    assert inflater.decompress(bomb, 1 << 20) == bytes(1 << 20)  # zeros, and more to come
    assert struct.unpack("<I", bomb[-4:])[0] == (1 << 30) & 0xFFFFFFFF
    assert gzip.decompress(gzip_bomb(8 << 20)) == bytes(8 << 20)  # the same construction, small enough to check


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory is read from /proc (Linux)")
@pytest.mark.parametrize("answer, path, limit", [
    (gzipped, "/api/batch", MAX_BATCH_ANSWER),
    (fifty_megabytes, "/api/batch", MAX_BATCH_ANSWER),
    (gzipped, "/api/call", MAX_CALL_ANSWER),  # the sign-in itself answered with the bomb
], ids=["gzip-1GiB-batch", "plain-50MiB-batch", "gzip-1GiB-sign-in"])
def test_a_bomb_is_cut_off_at_the_cap_the_memory_stays_small_and_the_records_wait(outbox, answer, path, limit):
    for _ in range(RECORDS):
        registration(outbox)
    with HostilePlatform(answer, sign_in=path == "/api/batch") as platform:
        result = measured_upload(outbox.path, platform.url)
    assert result["growth_kib"] < MAX_GROWTH_MIB * 1024, result
    assert result["growth_kib"] < (limit >> 10) + 8 * 1024, result  # the cap, and little more
    assert f"answered more than {limit >> 20} MB" in result["error"] and "none of it was used" in result["error"]
    assert result["counts"] == {"pending": RECORDS, "sending": 0, "sent": 0, "dead": 0}
    assert all(r.state == "pending" and r.attempts == 1 for r in outbox.pending())


# --- answers that contradict the batch or themselves -----------------------------------------------------

def answers(build: Callable[[list[str]], list[dict[str, Any]]]) -> Callable[[str, Any], Reply]:
    """A batch answer built from the msgids sent."""
    return lambda path, payload: json_reply({"results": build([m["msgid"] for m in payload["messages"]])})


def item(msgid: str, infcode: int) -> dict[str, Any]:
    return {"msgid": msgid, "infcode": infcode, "err_msg": "refused" if infcode else "", "output": {}}


CONTRADICTIONS = {
    "refused-then-accepted": (lambda ids: [item(m, c) for m in ids for c in (-1, 0)], "twice: infcode -1, then 0"),
    "accepted-then-refused": (lambda ids: [item(m, c) for m in ids for c in (0, -1)], "twice: infcode 0, then -1"),
    "one-missing": (lambda ids: [item(m, -1) for m in ids[1:]], f"answers only {RECORDS - 1} of them"),
    "a-stranger": (lambda ids: [item(m, 0) for m in ids] + [item("H11010500001202603010930999999", -1)],
                   "not in the batch"),
    "more-than-sent": (lambda ids: [item(m, -1) for m in ids] * 2, "twice: infcode -1, then -1"),
    "positive-infcode": (lambda ids: [item(m, 1) for m in ids], "an integer infcode of 0 or below"),
}


@pytest.mark.parametrize("name", list(CONTRADICTIONS))
def test_a_contradictory_answer_marks_nothing_and_the_records_go_up_intact_later(outbox, central, clock, name):
    build, words = CONTRADICTIONS[name]
    ids = [registration(outbox).msgid for _ in range(RECORDS)]
    with HostilePlatform(answers(build)) as platform, Uploader(outbox, platform.url, batch_size=RECORDS) as uploader:
        report = uploader.drain()
    assert (report.sent, report.dead, report.pending) == (0, 0, RECORDS)
    assert words in report.error and "none of it was used, the records stay in the queue" in report.error
    assert platform.batches == 1
    for record in (outbox.get(m) for m in ids):
        assert record.state == "pending" and record.attempts == 1 and words in record.last_error
    clock.tick(600)  # past any backoff: the genuine platform takes every record, once
    with Uploader(outbox, central.url) as uploader:
        assert (uploader.drain().sent, outbox.counts()["dead"]) == (RECORDS, 0)
    assert central.ledger.count() == RECORDS + 1  # and one sign-in


# --- error pages that are not the platform's ------------------------------------------------------------

HTML_400 = b"<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\x1b[31mnginx</body>\r\n</html>\r\n"
PAGES = {
    "proxy-html-400": Reply(400, HTML_400, {"Content-Type": "text/html"}),
    "proxy-html-413": Reply(413, b"<html><body>413 Request Entity Too Large</body></html>",
                            {"Content-Type": "text/html"}),
    "gateway-json-422": Reply(422, b'{"detail": "Unprocessable Entity"}'),
    "empty-400": Reply(400, b""),
    "huge-400": Reply(400, b"<html>" + b" " * (8 << 20), {"Content-Type": "text/html"}),
    "html-502": Reply(502, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"}),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_an_error_page_that_is_not_the_platforms_is_a_service_error_never_a_bisection(outbox, clock, name):
    ids = [registration(outbox).msgid for _ in range(RECORDS)]
    page = PAGES[name]
    with HostilePlatform(lambda path, payload: page) as platform, \
            Uploader(outbox, platform.url, batch_size=RECORDS) as uploader:
        report = uploader.drain()
    assert (report.sent, report.dead, report.pending) == (0, 0, RECORDS)
    assert platform.batches == 1  # not halved down to single records
    assert f"HTTP {page.status}" in report.error and "\n" not in report.error and "\x1b" not in report.error
    if page.status != 502:
        assert "without the platform's own error answer" in report.error
    now = outbox.now()
    for record in (outbox.get(m) for m in ids):  # pending with the normal backoff: the first is at most 2 s
        assert record.state == "pending" and record.attempts == 1 and record.infcode is None
        assert now <= record.next_attempt_at <= now + 2 and f"HTTP {page.status}" in record.last_error


def test_a_sign_in_refused_with_the_platforms_own_400_is_no_bisection_of_the_batch(outbox):
    for _ in range(RECORDS):
        registration(outbox)
    refusal = json_reply({"infcode": -1, "err_msg": "malformed sign-in"}, 400)
    with HostilePlatform(lambda path, payload: refusal, sign_in=False) as platform, \
            Uploader(outbox, platform.url, batch_size=RECORDS) as uploader:
        report = uploader.drain()
    assert (report.sent, report.dead, report.pending) == (0, 0, RECORDS)
    assert "refused the sign-in (HTTP 400: malformed sign-in)" in report.error
    assert platform.batches == 0 and len(platform.requests) == 1


def test_the_platforms_own_refusal_of_a_record_still_makes_it_dead_alone(outbox, clock):
    """The control: a well-formed refusal naming nothing (422 with the platform's JSON error, as the
    virtual platform answers a message without a msgid) halves the batch until the record stands alone."""
    ids = [registration(outbox).msgid for _ in range(4)]
    poison = ids[2]

    def refuse_the_poison(path: str, payload: Any) -> Reply:
        sent = [m["msgid"] for m in payload["messages"]]
        if poison in sent:
            return json_reply({"infcode": -1, "err_msg": "a message has no msgid"}, 422)
        return json_reply({"results": [item(m, 0) for m in sent]})

    with HostilePlatform(refuse_the_poison) as platform, Uploader(outbox, platform.url, batch_size=4) as uploader:
        report = uploader.drain()
    assert (report.sent, report.dead, report.pending, report.error) == (3, 1, 0, None)
    dead = outbox.get(poison)
    assert dead.state == "dead" and "HTTP 422: a message has no msgid" in dead.last_error


# --- through the CLI: what the clerk reads, the exit code -----------------------------------------------

def upload(queue: Path, url: str, *options: str, verbose: bool = False):
    """``sscard [-v] queue upload -q QUEUE --central URL OPTIONS...``, in this process."""
    return CliRunner().invoke(main, [*(["-v"] if verbose else []), "queue", "upload", "-q", str(queue),
                                     "--central", url, *options])


@pytest.mark.parametrize("answer, code, words", [
    (gzipped, "central_protocol", "answered more than 4 MB"),
    (answers(CONTRADICTIONS["refused-then-accepted"][0]), "central_protocol", "contradicts itself"),
    (lambda path, payload: PAGES["proxy-html-400"], "central_unavailable", "without the platform's own error answer"),
], ids=["bomb", "contradiction", "html-400"])
def test_the_cli_says_what_happened_in_words_exits_14_and_keeps_every_record(outbox, answer, code, words):
    for _ in range(RECORDS):
        registration(outbox)
    with HostilePlatform(answer) as platform:
        text = upload(outbox.path, platform.url, "--now")
        as_json = upload(outbox.path, platform.url, "--now", "--json")
    assert text.exit_code == 14 and words in text.stderr and f"({RECORDS} pending, next attempt" in text.stderr
    assert f"sent 0  dead 0  pending {RECORDS}" in text.stdout and "Traceback" not in text.output
    assert as_json.exit_code == 14 and "Traceback" not in as_json.output
    printed = json.loads(as_json.stdout)
    assert printed["error"]["code"] == code and words in printed["error"]["message"]
    assert (printed["sent"], printed["dead"], printed["pending"]) == (0, 0, RECORDS)
    assert outbox.counts() == {"pending": RECORDS, "sending": 0, "sent": 0, "dead": 0}


# --- URLs with a password ---------------------------------------------------------------------------------

def with_password(url: str) -> str:
    return url.replace("http://", f"http://clerk:{SECRET}@")


def test_shown_url_drops_the_user_name_and_password():
    assert shown_url(f"http://clerk:{SECRET}@127.0.0.1:8930/") == "http://127.0.0.1:8930/"
    assert shown_url(f"https://clerk:{SECRET}@central.example/api?x=1") == "https://central.example/api?x=1"
    assert shown_url("https://central.example") == "https://central.example"
    assert SECRET not in shown_url(f"http://clerk:{SECRET}/x@host/")  # not even a URL httpx can read


def test_a_password_in_the_url_reaches_the_proxy_and_never_the_screen_or_the_logs(outbox, central, caplog):
    for _ in range(3):
        registration(outbox)
    sent = upload(outbox.path, with_password(central.url), verbose=True)
    assert sent.exit_code == 0, sent.output
    assert "sent 3  dead 0  pending 0" in sent.stdout
    assert f"HTTP Request: POST {central.url}/api/batch" in sent.stderr  # -v logs each request, without it
    for _ in range(3):
        registration(outbox)
    with HostilePlatform(lambda path, payload: PAGES["proxy-html-400"]) as platform:
        refused = upload(outbox.path, with_password(platform.url), "--now", verbose=True)
    assert refused.exit_code == 14 and f"The platform at {platform.url} answered HTTP 400" in refused.stderr
    basic = "Basic " + base64.b64encode(f"clerk:{SECRET}".encode()).decode()
    assert all(headers.get("authorization") == basic for _, headers in platform.requests)
    unreachable = upload(outbox.path, with_password(f"http://127.0.0.1:{free_port()}"), "--now", "--timeout", "2",
                         verbose=True)
    assert unreachable.exit_code == 14 and "unreachable" in unreachable.stderr
    remote = upload(outbox.path, f"http://clerk:{SECRET}@central.example/")
    assert remote.exit_code == 12 and "http://central.example/" in remote.stderr
    broken = upload(outbox.path, f"http://clerk:{SECRET[:3]}/{SECRET[3:]}@central.example/")
    assert broken.exit_code == 12 and "not a valid URL" in broken.stderr
    for run in (sent, refused, unreachable, remote, broken):
        assert SECRET not in run.output and SECRET[3:] not in run.output and "Traceback" not in run.output
    assert caplog.records and SECRET not in caplog.text and SECRET[3:] not in caplog.text


def test_an_answer_with_text_no_utf_8_can_hold_is_a_protocol_error_not_a_crash():
    from sscard.terminal.upload import CentralProtocolError, parse_reply

    with pytest.raises(CentralProtocolError):
        parse_reply(b'{"results": [{"msgid": "x", "infcode": 0, "err_msg": "\\ud800"}]}')
    assert parse_reply(b'{"err_msg": "\\u6b63\\u5e38"}') == {"err_msg": "正常"}
