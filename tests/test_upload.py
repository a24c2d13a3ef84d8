"""The uploader against the real reference central service on 127.0.0.1: batches, faults, dedupe."""
from __future__ import annotations

import email.utils
import json
import random
import threading
import time

import httpx
import pytest
from queueing import (  # noqa: F401
    OTHER_CARD,
    PERSONS,
    STATION,
    ScriptedService,
    central,
    central_client,
    clock,
    free_port,
    http_reply,
    outbox,
    registration,
    reseal,
    signed,
)

from sscard.central import GARBAGE, MAX_BATCH, CentralService, Ledger, Rejected
from sscard.message.envelope import MSGID_TAKEN, Envelope, Fen, with_sign_no
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.errors import ConfigError
from sscard.terminal.queue import Outbox
from sscard.terminal.upload import MAX_RETRY_AFTER, Backoff, CentralError, NotSignedInError, Uploader, parse_retry_after


def drain(outbox, url: str, max_batches: int | None = None, **options):
    with Uploader(outbox, url, **options) as uploader:
        return uploader.drain(max_batches)


def test_everything_pending_goes_up_in_batches_and_is_settled(outbox, central):
    ids = [registration(outbox).msgid for _ in range(250)]
    report = drain(outbox, central.url, batch_size=100)
    assert (report.sent, report.dead, report.pending, report.batches, report.error) == (250, 0, 0, 3, None)
    assert central.ledger.count() == 251  # and the 9001 sign-in
    first = outbox.get(ids[0])
    received = central.ledger.message(ids[0])
    assert received == {**json.loads(first.envelope), "sign_no": received["sign_no"]}
    assert received["sign_no"].startswith("S")
    assert first.state == "sent" and first.reply["infcode"] == 0
    assert first.reply["inf_refmsgid"].startswith(STATION.region) and len(first.reply["inf_refmsgid"]) == 30


def test_each_registration_uploaded_is_answered_with_its_visit(outbox, central):
    local, away = registration(outbox), registration(outbox, insured_region="310101", card_sn=OTHER_CARD)
    drain(outbox, central.url)
    visits = [outbox.get(r.msgid).reply["output"]["data"] for r in (local, away)]
    assert [v["psn_no"] for v in visits] == [PERSONS["110105"], PERSONS["310101"]]
    assert visits[0]["mdtrt_id"].startswith("MD") and visits[0]["mdtrt_id"] != visits[1]["mdtrt_id"]
    assert [v["state"] for v in central.ledger.show()["visits"]] == ["open", "open"]


def test_an_invalid_record_goes_dead_with_the_reason_and_the_rest_of_its_batch_is_sent(outbox, central):
    good = registration(outbox)
    bad = registration(outbox, psn_no="3303000000009999")  # nobody the platform knows
    later = registration(outbox)
    report = drain(outbox, central.url)
    assert (report.sent, report.dead, report.pending) == (2, 1, 0)
    assert outbox.get(good.msgid).state == outbox.get(later.msgid).state == "sent"
    dead = outbox.get(bad.msgid)
    assert dead.state == "dead" and dead.infcode == -1 and "no insured person" in dead.last_error
    assert drain(outbox, central.url).sent == 0  # a dead record is not sent again


def test_an_unreachable_service_keeps_every_record_pending_then_they_go_when_it_is_back(outbox, clock, tmp_path):
    port = free_port()
    for _ in range(3):
        registration(outbox)
    report = drain(outbox, f"http://127.0.0.1:{port}", timeout=2)
    assert (report.sent, report.pending) == (0, 3)
    assert "unreachable" in report.error
    assert all(r.state == "pending" and r.attempts == 1 and "unreachable" in r.last_error for r in outbox.pending())
    with CentralService(tmp_path / "c.sqlite", port=port) as service:
        clock.tick(2)  # past the first backoff (at most base * 2**0 = 2 s)
        assert drain(outbox, service.url).sent == 3
        assert service.ledger.count() == 4  # the three records and one sign-in
    assert outbox.counts() == {"pending": 0, "sending": 0, "sent": 3, "dead": 0}


def test_a_failing_service_processes_nothing_and_the_retry_sends_all(outbox, central, clock):
    registration(outbox)
    central.set_fault("fail", count=1)
    report = drain(outbox, central.url)
    assert report.pending == 1 and "HTTP 503" in report.error
    assert central.ledger.count() == 0
    clock.tick(2)
    assert drain(outbox, central.url).sent == 1


def signed_in(outbox, url: str, **options) -> Uploader:
    uploader = Uploader(outbox, url, **options)
    uploader.sign_in()
    return uploader


@pytest.mark.parametrize("mode", ["stall", "drop"])
def test_a_lost_answer_is_retried_and_the_service_keeps_one_copy(outbox, central, clock, mode):
    ids = [registration(outbox).msgid for _ in range(5)]
    with signed_in(outbox, central.url, timeout=0.5) as uploader:
        central.set_fault(mode, count=1, seconds=3)
        first = uploader.drain()
        assert first.sent == 0 and first.pending == 5 and first.error
        deadline = time.monotonic() + 5
        while central.ledger.count() < 6 and time.monotonic() < deadline:  # the stalled batch lands
            time.sleep(0.05)
        stored = {m: central.ledger.message(m) for m in ids}
        assert all(stored.values())
        clock.tick(2)
        again = uploader.drain()
    assert again.sent == 5 and again.pending == 0
    assert central.ledger.count() == 6 and central.ledger.repeats == 5
    assert all(outbox.get(m).attempts == 2 for m in ids)


def test_every_kind_of_garbage_leaves_the_batch_pending_and_nothing_is_duplicated(outbox, central, clock):
    with signed_in(outbox, central.url) as uploader:
        for _ in GARBAGE:
            registration(outbox)
            central.set_fault("garbage", count=1)
            report = uploader.drain()
            assert report.sent == 0 and report.pending == outbox.counts()["pending"]
            assert "documented JSON" in report.error or "none of the messages sent" in report.error
        assert central.faulty_requests == len(GARBAGE)
        assert outbox.counts()["pending"] == len(GARBAGE)
        clock.tick(600)  # past any backoff
        assert uploader.drain().sent == len(GARBAGE)
    assert central.ledger.count() == len(GARBAGE) + 1


def test_a_service_that_forgot_the_sign_in_gets_a_new_one_transparently(outbox, tmp_path):
    registration(outbox)
    with CentralService(tmp_path / "one.sqlite") as first:
        uploader = signed_in(outbox, first.url)
        old = uploader.sign_no
    with CentralService(tmp_path / "two.sqlite", port=int(first.url.rsplit(":", 1)[1])) as second:
        uploader.central.url = second.url
        report = uploader.drain()
        assert report.sent == 1
        assert uploader.sign_no != old
        assert second.ledger.message(outbox.records()[0].msgid)["sign_no"] == uploader.sign_no
    uploader.close()


def test_the_uploader_thread_sends_records_made_while_it_runs(outbox, central):
    path = outbox.path
    stop = threading.Event()
    done: list[BaseException] = []

    def background() -> None:
        try:
            with Outbox(path) as own, Uploader(own, central.url) as uploader:
                uploader.follow(stop, interval=0.05)
        except BaseException as err:  # surfaced by the assertion below
            done.append(err)

    thread = threading.Thread(target=background)
    thread.start()
    try:
        for _ in range(20):
            registration(outbox)
        deadline = time.monotonic() + 10
        while outbox.counts()["sent"] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not done and not thread.is_alive()
    assert outbox.counts() == {"pending": 0, "sending": 0, "sent": 20, "dead": 0}


# --- the service's own contract ---------------------------------------------------------------

def message(outbox, sign_no: str) -> dict:
    return with_sign_no(registration(outbox).envelope, sign_no)


def test_dedupe_is_permanent_across_restarts_and_a_reused_msgid_is_refused(outbox, tmp_path):
    path = tmp_path / "c.sqlite"
    with CentralService(path) as service:
        client = central_client(service.url)
        sign_no = client.call(signin(outbox))["output"]["signinoutb"]["sign_no"]
        original = message(outbox, sign_no)
        first = client.batch([original])[0]
        client.close()
    with CentralService(path) as service:
        client = central_client(service.url)
        repeat = client.batch([original])[0]
        altered = client.batch([{**original, "input": {"data": {"psn_no": PERSONS["310101"]}}}])[0]
        client.close()
        assert service.ledger.message(original["msgid"])["input"] == original["input"]
    assert repeat.reply == first.reply and repeat.infcode == 0
    assert altered.infcode == MSGID_TAKEN and "already used" in altered.err_msg


def signin(outbox) -> dict:
    return Envelope("9001", outbox.next_msgid(), STATION, STATION.operator, STATION.region,
                    outbox.clock(), {"signIn": {"opter_no": "D001"}}).to_dict()


def test_a_batch_with_an_unknown_sign_no_is_refused_whole(outbox, central):
    client = central_client(central.url)
    with pytest.raises(NotSignedInError):
        client.batch([message(outbox, "S-forged")])
    client.close()
    assert central.ledger.count() == 0


@pytest.mark.parametrize("payload", [{"messages": []}, {"messages": "x"}, {}, {"messages": [{}] * (MAX_BATCH + 1)}])
def test_a_malformed_batch_is_http_400(central, payload):
    answer = httpx.post(central.url + "/api/batch", json=payload, headers=signed())
    assert answer.status_code == 400 and answer.json()["infcode"] == -1


def test_faults_can_be_set_over_http_for_a_service_in_another_process(outbox, central):
    def post(path, payload, headers=None):
        return httpx.post(central.url + path, json=payload, headers=signed() if headers is None else headers)

    assert post("/_control", {"mode": "fail", "count": 1}).json() == {"mode": "fail"}
    assert post("/api/call", signin(outbox)).status_code == 503
    assert post("/api/call", signin(outbox)).json()["infcode"] == 0
    assert post("/_control", {"mode": "explode"}).status_code == 400
    assert post("/_control", {"mode": "fail"}, headers={}).status_code == 403  # the switches need credentials too
    assert httpx.get(central.url + "/_stats").json() == {"messages": 1, "repeats": 0, "faulty_requests": 1}


def test_the_fault_switches_are_off_unless_the_service_was_started_with_them(outbox, tmp_path):
    with CentralService(tmp_path / "c.sqlite") as plain:
        assert httpx.post(plain.url + "/_control", json={"mode": "fail"}, headers=signed()).status_code == 404
        with pytest.raises(PermissionError):
            plain.set_fault("drop")


def test_a_message_missing_fields_is_rejected_per_item(outbox, central):
    client = central_client(central.url)
    sign_no = client.call(signin(outbox))["output"]["signinoutb"]["sign_no"]
    good = message(outbox, sign_no)
    broken = {k: v for k, v in message(outbox, sign_no).items() if k != "insuplc_admdvs"}
    outcomes = {o.msgid: o for o in client.batch([good, broken])}
    client.close()
    assert outcomes[good["msgid"]].infcode == 0
    assert outcomes[broken["msgid"]].infcode == -1 and "insuplc_admdvs" in outcomes[broken["msgid"]].err_msg


def test_fields_of_the_wrong_json_type_are_rejected_per_item_not_a_server_error(outbox, central):
    client = central_client(central.url)
    sign_no = client.call(signin(outbox))["output"]["signinoutb"]["sign_no"]
    good = message(outbox, sign_no)
    listed = {**message(outbox, sign_no), "infno": ["2102"]}  # found by the central-request fuzz target
    odd_signin = {**signin(outbox), "opter": {"id": "C001"}}  # would have reached the signins table
    outcomes = {o.msgid: o for o in client.batch([good, listed, odd_signin])}
    client.close()
    assert outcomes[good["msgid"]].infcode == 0
    assert outcomes[listed["msgid"]].infcode == -1 and "infno must be text" in outcomes[listed["msgid"]].err_msg
    assert outcomes[odd_signin["msgid"]].infcode == -1 and "opter must be text" in outcomes[odd_signin["msgid"]].err_msg


def test_central_errors_carry_the_documented_exit_code():
    assert exit_code(CentralError) == 14


def test_a_direct_call_carries_fen_amounts_as_yuan(outbox, central):
    caller = central_client(central.url)
    sign_no = caller.call(signin(outbox))["output"]["signinoutb"]["sign_no"]
    presettle = Envelope("2101", outbox.next_msgid(), STATION, STATION.operator, "310101", outbox.clock(),
                         {"data": {"psn_no": PERSONS["310101"], "insutype": "310", "med_type": "41",
                                   "medfee_sumamt": Fen(1999), "chrg_bchno": "T1", "acct_used_flag": "1"}},
                         sign_no=sign_no)
    answer = caller.call(presettle.to_dict())
    caller.close()
    assert answer["infcode"] == 0
    setlinfo = answer["output"]["setlinfo"]
    assert (setlinfo["medfee_sumamt"], setlinfo["acct_pay"], setlinfo["psn_cash_pay"]) == ("19.99", "19.99", "0.00")
    assert central.ledger.message(presettle.msgid)["input"]["data"]["medfee_sumamt"] == "19.99"


# --- retries, poison records, transactions --------------------------------------------------------

def test_a_record_the_service_cannot_even_name_goes_dead_alone_and_the_rest_upload(outbox, central):
    """A poison record (here: a row whose stored envelope lost its msgid) makes the service refuse the
    whole batch with HTTP 422; the uploader halves the batch until the record stands alone."""
    ids = [registration(outbox).msgid for _ in range(9)]
    poison = ids[5]
    broken = {k: v for k, v in json.loads(outbox.get(poison).envelope).items() if k != "msgid"}
    outbox.db.execute("UPDATE records SET envelope = ? WHERE msgid = ?", [json.dumps(broken), poison])
    reseal(outbox, poison)
    report = drain(outbox, central.url, batch_size=9)
    assert (report.sent, report.dead, report.pending, report.error) == (8, 1, 0, None)
    dead = outbox.get(poison)
    assert dead.state == "dead" and "HTTP 422" in dead.last_error and "no msgid" in dead.last_error
    assert central.ledger.count() == 9  # eight records and the sign-in, each once
    assert all(outbox.get(m).state == "sent" for m in ids if m != poison)


def test_backoff_is_capped_exponential_with_full_jitter():
    backoff = Backoff(base=2, cap=60)
    rng = random.Random(5)
    assert all(0 <= backoff.delay(1, rng=rng) <= 2 for _ in range(200))
    assert all(0 <= backoff.delay(3, rng=rng) <= 8 for _ in range(200))
    late = [backoff.delay(30, rng=rng) for _ in range(500)]
    assert max(late) <= 60 and max(late) > 54 and min(late) < 6  # the whole range [0, cap], not cap/2 + jitter
    assert all(backoff.delay(1, retry_after=90, rng=rng) == 90 for _ in range(20))  # never before Retry-After


def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


@pytest.mark.parametrize("value", ["999999999999", "9" * 400, "9" * 5000, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_of_years_is_taken_as_the_documented_ceiling(value):
    assert MAX_RETRY_AFTER == 3600
    assert parse_retry_after(value, 1_800_000_000.0) == MAX_RETRY_AFTER
    assert Backoff().delay(1, retry_after=1e12) == MAX_RETRY_AFTER  # and the backoff clamps what it is given
    assert Backoff().delay(1, retry_after=float("inf")) == MAX_RETRY_AFTER


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\uff11\uff12", "-5", "1.5", "12 s"])
def test_retry_after_seconds_are_ascii_digits_only(value):
    assert parse_retry_after(value, 1_800_000_000.0) is None  # unreadable: the backoff alone applies


def test_a_service_asking_to_wait_for_years_does_not_park_the_queue_or_break_the_report(outbox, central, clock):
    ids = [registration(outbox).msgid for _ in range(2)]
    central.set_fault("fail", count=1, retry_after="999999999999")
    report = drain(outbox, central.url)
    assert "HTTP 503" in report.error and report.pending == 2
    assert report.next_attempt is not None and report.next_attempt.startswith("2026-03-01T10:30")  # an hour
    for record in (outbox.get(m) for m in ids):
        assert record.state == "pending"
        assert record.next_attempt_at - clock().timestamp() == MAX_RETRY_AFTER
        assert record.summary()["next_attempt"] == "2026-03-01T10:30:00+08:00"
    clock.tick(MAX_RETRY_AFTER)
    assert drain(outbox, central.url).sent == 2


@pytest.mark.parametrize("stored", ["1e12", "9e999"])  # an older uploader's Retry-After of years; infinity
def test_an_absurd_retry_time_already_in_the_file_is_read_without_crashing(outbox, central, stored):
    record = registration(outbox)
    outbox.db.execute(f"UPDATE records SET next_attempt_at = {stored}")
    assert outbox.get(record.msgid).summary()["next_attempt"] == "9999-12-31T23:59:59+08:00"
    report = drain(outbox, central.url)
    assert (report.sent, report.pending, report.error) == (0, 1, None)
    assert report.next_attempt == "9999-12-31T23:59:59+08:00"
    with Uploader(outbox, central.url) as uploader:
        assert uploader.drain(ignore_schedule=True).sent == 1  # --now still sends it


@pytest.mark.parametrize("http_date", [False, True])
def test_a_failed_batch_is_due_again_after_its_backoff_and_never_before_retry_after(outbox, central, clock, http_date):
    ids = [registration(outbox).msgid for _ in range(3)]
    assert drain(outbox, central.url, batch_size=1, max_batches=1).sent == 1  # signs in, sends the first record
    retry_after = email.utils.formatdate(time.time() + 3600, usegmt=True) if http_date else "3600"
    central.set_fault("fail", count=1, retry_after=retry_after)
    report = drain(outbox, central.url)
    assert report.error and "HTTP 503" in report.error and report.pending == 2
    start = clock().timestamp()
    for record in (outbox.get(m) for m in ids[1:]):
        assert record.state == "pending" and record.attempts == 1
        assert 3595 <= record.next_attempt_at - start <= 3600, record.next_attempt_at - start
    clock.tick(3500)
    assert drain(outbox, central.url).sent == 0  # not due yet
    clock.tick(100)
    assert drain(outbox, central.url).sent == 2
    records_at_service = central.ledger.conn.execute("SELECT count(*) FROM messages WHERE infno != '9001'").fetchone()[0]
    assert records_at_service == 3  # each record once: the refused batch was not processed


def test_repeated_failures_back_off_further_each_time_up_to_the_cap(outbox, clock):
    record = registration(outbox)
    waits = []
    with Uploader(outbox, f"http://127.0.0.1:{free_port()}", timeout=1, backoff=Backoff(base=1, cap=8)) as uploader:
        for _ in range(8):
            uploader.drain()
            current = outbox.get(record.msgid)
            waits.append(current.next_attempt_at - clock().timestamp())
            clock.tick(8)
    assert outbox.get(record.msgid).attempts == 8
    assert all(0 <= w <= min(8, 2 ** n) for n, w in enumerate(waits)), waits


def test_no_transaction_is_held_while_a_batch_is_in_flight(outbox, central, clock):
    ids = [registration(outbox).msgid for _ in range(4)]
    central.set_fault("stall", count=2, seconds=1.5)  # the sign-in, then the batch
    result: list = []

    def upload() -> None:
        with Outbox(outbox.path, clock=clock) as own, Uploader(own, central.url, timeout=10) as uploader:
            result.append(uploader.drain())

    sender = threading.Thread(target=upload)
    sender.start()
    deadline = time.monotonic() + 10
    while central.ledger.count() < 5 and time.monotonic() < deadline:  # the batch is at the service
        time.sleep(0.01)
    with Outbox(outbox.path, busy_timeout_ms=50, clock=clock) as desk:  # another desk window, impatient
        assert desk.counts()["sending"] == 4  # the claim was committed before the call
        assert registration(desk).state == "pending"  # and the write lock is free meanwhile
    sender.join(timeout=15)
    assert result and result[0].sent == 5  # the desk's new record went in the next batch
    assert all(outbox.get(m).state == "sent" for m in ids)


@pytest.mark.parametrize("url", ["http://central.example.cn/api", "ftp://127.0.0.1/", "central.example.cn", "https://"])
def test_a_central_url_without_tls_or_host_is_refused(url, monkeypatch):
    monkeypatch.delenv("SSCARD_ALLOW_PLAIN_HTTP", raising=False)
    with pytest.raises(ConfigError) as err:
        central_client(url)
    assert exit_code(err.value) == 12


@pytest.mark.parametrize("url", ["https://central.example.cn", "http://127.0.0.1:8930", "http://localhost:1"])
def test_https_and_loopback_central_urls_are_accepted(url, monkeypatch):
    monkeypatch.delenv("SSCARD_ALLOW_PLAIN_HTTP", raising=False)
    client = central_client(url)
    assert client.url == url
    client.close()


def test_plain_http_to_a_site_network_needs_the_sites_explicit_choice(monkeypatch):
    monkeypatch.setenv("SSCARD_ALLOW_PLAIN_HTTP", "1")
    central_client("http://10.1.2.3:8930").close()


def test_a_client_hanging_up_mid_request_is_no_traceback_and_the_service_goes_on(central, capfd, caplog):
    import socket
    import struct

    caplog.set_level("DEBUG")  # before the first request is served
    host, port = central.url.rsplit("/", 1)[1].rsplit(":", 1)
    head = "".join(f"{k}: {v}\r\n" for k, v in signed().items())
    for path in ("/api/batch", "/api/call", "/nowhere"):  # half-sent, then a reset (SO_LINGER 0): a SIGKILLed uploader
        sock = socket.create_connection((host, int(port)))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 100\r\n\r\n{{".encode())
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{central.url}/_stats").json()["messages"] == 0  # the service still answers
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


# --- replies of the wrong shape, from a real server on 127.0.0.1 ------------------------------------

@pytest.mark.parametrize("output", ["oops", ["signinoutb"], {"signinoutb": "S1"}, {"signinoutb": {"sign_no": 5}},
                                    {"signinoutb": {"sign_no": ""}}, None])
def test_a_sign_in_answered_in_the_wrong_shape_is_a_central_error_and_the_batch_waits(outbox, clock, output):
    ids = [registration(outbox).msgid for _ in range(3)]
    with ScriptedService(lambda path, body: http_reply({"infcode": 0, "output": output})) as service:
        report = drain(outbox, service.url)
    assert "sent no sign_no" in report.error and report.pending == 3
    for record in (outbox.get(m) for m in ids):  # back to pending with a backoff, not stranded as 'sending'
        assert record.state == "pending" and record.attempts == 1 and "sign_no" in record.last_error


class BuggyUploader(Uploader):
    """An uploader with a bug in its reply handling (what the sign-in's unchecked output used to be)."""

    def __init__(self, *args, **options) -> None:
        super().__init__(*args, **options)

        def broken() -> str:
            raise AttributeError("'str' object has no attribute 'get'")

        self.session.sign_in = broken  # type: ignore[method-assign]


def test_an_unexpected_error_during_delivery_leaves_the_batch_pending_not_sending(outbox, central, clock):
    ids = [registration(outbox).msgid for _ in range(3)]
    with BuggyUploader(outbox, central.url) as uploader, pytest.raises(AttributeError):
        uploader.drain()
    assert outbox.counts()["sending"] == 0
    for record in (outbox.get(m) for m in ids):
        assert record.state == "pending" and record.attempts == 1 and "AttributeError" in record.last_error
    clock.tick(2)
    assert drain(outbox, central.url).sent == 3


def signin_then_accept(path: str, body: bytes) -> bytes:
    """What a working service answers: a sign-in, then every message of a batch accepted."""
    if path == "/api/call":
        return http_reply({"infcode": 0, "output": {"signinoutb": {"sign_no": "S1"}}})
    return http_reply({"results": [{"msgid": m["msgid"], "infcode": 0} for m in json.loads(body)["messages"]]})


@pytest.mark.parametrize("options, limit, why", [({"timeout": 1}, 1, "within 1 s"),
                                                 ({"timeout": 30, "lease": 2}, 1, "before its batch's deadline")])
def test_a_service_trickling_its_answer_is_cut_off_at_the_deadline_and_the_batch_waits(outbox, options, limit, why):
    """Every byte (status line and headers too) comes 50 ms apart, well inside httpx's per-read timeout:
    the call is cut off at its own timeout, or at half the lease, whichever comes first."""
    ids = [registration(outbox).msgid for _ in range(3)]
    with ScriptedService(signin_then_accept, per_byte=0.05) as service:
        start = time.monotonic()
        report = drain(outbox, service.url, **options)
        elapsed = time.monotonic() - start
    assert limit <= elapsed < limit + 1.5, elapsed
    assert f"did not answer {why}" in report.error and report.pending == 3
    for record in (outbox.get(m) for m in ids):  # back to pending with a backoff, before any lease ends
        assert record.state == "pending" and record.attempts == 1 and "did not answer" in record.last_error


def test_the_deadline_lets_a_prompt_answer_through_on_the_same_connections(outbox):
    for _ in range(3):
        registration(outbox)
    with ScriptedService(signin_then_accept) as service:
        report = drain(outbox, service.url, timeout=1, batch_size=1)
    assert (report.sent, report.error) == (3, None)


class ClosedToday(Ledger):
    """The service's own ledger with one more rule: outpatient registrations refused (a cause that is
    later fixed at the centre, as a wrong contract or a region closed for the day would be)."""

    def _execute(self, call):
        if call.message.get("infno") == "2201":
            raise Rejected("registrations are closed today")
        return super()._execute(call)


def test_a_rejected_record_revived_with_retry_dead_is_judged_again_and_accepted(outbox, tmp_path, clock):
    path = tmp_path / "c.sqlite"
    record, other = registration(outbox), registration(outbox)
    closed = CentralService(path)
    closed.ledger.close()
    closed.ledger = ClosedToday(path)
    with closed:
        report = drain(outbox, closed.url)
    assert (report.sent, report.dead) == (0, 2) and "closed today" in outbox.get(record.msgid).last_error
    assert outbox.retry_dead([record.msgid]) == 1  # the cause is fixed at the centre
    with CentralService(path) as service:  # the same ledger, the rule gone
        again = drain(outbox, service.url)
        assert (again.sent, again.dead) == (1, 0)
        accepted = outbox.get(record.msgid)
        assert accepted.state == "sent" and accepted.infcode == 0 and service.ledger.repeats == 0
        assert json.loads(service.ledger.conn.execute(  # the latest judgement replaced the refusal
            "SELECT response FROM messages WHERE msgid = ?", [record.msgid]).fetchone()[0])["infcode"] == 0
        outbox.retry_dead([other.msgid])
        outbox.db.execute("UPDATE records SET envelope = replace(envelope, '09:30:00\"', '09:31:00\"') WHERE msgid = ?",
                          [other.msgid])  # corrected before it was revived: another message, same msgid
        reseal(outbox, other.msgid)
        assert drain(outbox, service.url).sent == 1  # a refused msgid is not "used"
        client = central_client(service.url)
        sign_no = client.call(signin(outbox))["output"]["signinoutb"]["sign_no"]
        repeat = client.batch([with_sign_no(accepted.envelope, sign_no)])[0]
        altered = client.batch([with_sign_no(accepted.envelope.replace('09:30:00"', '09:32:00"'), sign_no)])[0]
        client.close()
    assert repeat.reply == accepted.reply and service.ledger.repeats == 1  # acceptance stays final
    assert altered.infcode == MSGID_TAKEN and "already used" in altered.err_msg


# --- two terminals of one institution ---------------------------------------------------------------

def test_two_terminals_given_one_number_lose_nothing(tmp_path, central, clock):
    """Two desks configured with the same terminal number (the mistake plain `config init` used to make)
    issue the same msgids. The platform refuses the second device's sign-in, naming the number; once its
    number is corrected, its records whose msgids the first desk used are re-keyed and sent, not dead."""
    from dataclasses import replace

    first = replace(STATION, dev_no="DEV-FIRST")
    second = replace(STATION, dev_no="DEV-SECOND")
    with Outbox(tmp_path / "one.sqlite", first, clock=clock) as one, \
            Outbox(tmp_path / "two.sqlite", second, clock=clock) as two:
        mine = [registration(one, dept_name=f"内科 {n}").msgid for n in range(3)]
        theirs = [registration(two, dept_name=f"外科 {n}").msgid for n in range(3)]
        assert mine == theirs  # the same clock, the same number: the same msgids
        assert drain(one, central.url).sent == 3
        refused = drain(two, central.url)
        assert refused.sent == 0 and refused.pending == 3
        assert "terminal number 07" in refused.error and "its own number" in refused.error
    clock.tick(600)  # past the backoff of the refused attempt
    with Outbox(tmp_path / "two.sqlite", replace(second, terminal_no=8), clock=clock) as two:  # corrected
        with Uploader(two, central.url) as uploader:
            report = uploader.drain()
        assert (report.sent, report.dead, report.pending, uploader.rekeyed) == (3, 0, 0, 3)
        records = two.records()
        assert all(r.state == "sent" and r.msgid[26:28] == "08" for r in records)
    held = central.ledger.show()["visits"]
    assert sorted(v["msgid"][26:28] for v in held) == ["07"] * 3 + ["08"] * 3  # six registrations, none lost
