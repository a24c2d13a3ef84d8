"""``sscard serve`` with real clients (httpx, websockets) against a served instance on a loopback port:
the reader convention, our JSON API, the Origin / Host / token guard, one card session per reader, and
card events over pcscd's virtual reader."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets
from click.testing import CliRunner
from jsonschema_rules import violations

from sscard.terminal.cli import main
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.service import ReaderService, load_token

ROOT = Path(__file__).resolve().parents[1]
HIS = "http://his.hospital.local:8080"


@pytest.fixture
def token(tmp_path):
    return load_token(tmp_path / "service.token")


def served(token: str, reader: str = "sim:adult", **options) -> ReaderService:
    options.setdefault("keys", SoftwareKeyStore.bundled_test_keys())
    return ReaderService(reader=reader, token=token, origins=(HIS,), terminal_no=3, device="DEV-TEST", **options)


@pytest.fixture
def service(token):
    with served(token) as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_url(service: ReaderService) -> str:
    return service.url.replace("http://", "ws://") + "/ws"


def convention(service, message, headers):
    return httpx.post(f"{service.url}/api/convention", json=message, headers=headers, timeout=30)


# --- the reader convention -------------------------------------------------------------------------

def test_iReadCardBas_is_the_eleven_fields_of_sscard_read(service, token):
    answer = convention(service, {"function": "iReadCardBas", "iType": 3}, bearer(token)).json()
    assert answer["function"] == "iReadCardBas" and answer["success"] is True and answer["code"] == 0
    fields = answer["pOutInfo"].split("|")
    assert len(fields) == 12 and fields[-1] == "" and answer["pOutInfo"].endswith("|")  # each field followed by '|'
    read = json.loads(CliRunner().invoke(main, ["read", "--reader", "sim:adult", "--json"]).stdout)
    expected = [read["issuing_region"], read["social_security_number"], read["card_number"],
                read["card_identification_code"], read["full_name"], read["card_reset_info"], read["spec_version"],
                read["issue_date"].replace("-", ""), read["expiry_date"].replace("-", ""), "03", "DEV-TEST"]
    assert fields[:11] == expected


def test_the_same_call_over_the_websocket_from_the_hospitals_page(service):
    async def talk():
        async with websockets.connect(ws_url(service), origin=HIS) as client:
            await client.send(json.dumps({"function": "iReadCardBas", "iType": 1}))
            return json.loads(await client.recv())

    answer = asyncio.run(talk())
    assert answer["success"] and answer["pOutInfo"].startswith("330300|330302198506151239|A01234567|")


@pytest.mark.parametrize(("reader", "message", "code"), [
    ("sim:adult", {"function": "iVerifyPIN", "iType": 1, "pin": "111111"}, -51),
    ("sim:blocked-pin", {"function": "iVerifyPIN", "iType": 1, "pin": "135790"}, -52),
    ("sim:counterfeit", {"function": "iReadCardBas", "iType": 3}, -21),
    ("sim:psam", {"function": "iReadCardBas", "iType": 3}, -1),
    ("sim:adult", {"function": "iReadCardBas", "iType": 2}, -11),  # no contactless reader here
    ("sim:adult", {"function": "iVerifyPIN", "iType": 1}, -31),  # no PIN given
    ("sim:adult", {"function": "iChangePIN", "iType": 1, "oldPin": "246810", "newPin": "111111"}, -33),
    ("sim:adult", {"function": "iFormatDisk", "iType": 1}, -99),
    ("sim:minority", {"function": "iReadBankNumber", "iType": 1}, -0x6A82),  # no bank application
])
def test_refusals_answer_the_conventions_negative_codes(token, reader, message, code):
    with served(token, reader=reader) as running:
        answer = convention(running, message, bearer(token)).json()
    assert answer["success"] is False and answer["code"] == code and answer["pOutInfo"]
    assert "111111" not in json.dumps(answer) and "135790" not in json.dumps(answer)


def test_the_bank_account_number_through_the_convention(token):
    with served(token, reader="sim:adult") as running:
        answer = convention(running, {"function": "iReadBankNumber", "iType": 1}, bearer(token)).json()
    assert answer == {"function": "iReadBankNumber", "success": True, "code": 0, "pOutInfo": "6217003303001234565|"}


def test_verify_and_change_pin(service, token):
    assert convention(service, {"function": "iVerifyPIN", "iType": 3, "pin": "246810"}, bearer(token)).json()["code"] == 0
    changed = convention(service, {"function": "iChangePIN", "iType": 3, "oldPin": "246810", "newPin": "135792"},
                         bearer(token)).json()
    assert changed["success"] and changed["pOutInfo"] == ""


def test_the_contactless_reader_serves_itype_2_and_comes_first_for_itype_4(token):
    with served(token, reader="sim:adult", contactless="sim:other-region") as running:
        first = convention(running, {"function": "iReadCardBas", "iType": 4}, bearer(token)).json()
        only = convention(running, {"function": "iReadCardBas", "iType": 2}, bearer(token)).json()
        contact = convention(running, {"function": "iReadCardBas", "iType": 3}, bearer(token)).json()
    assert first["pOutInfo"].startswith("440300|") and only["pOutInfo"].startswith("440300|")
    assert contact["pOutInfo"].startswith("330300|")


@pytest.mark.pcsc
def test_automatic_itype_goes_on_to_the_contactless_reader_when_the_contact_one_is_empty(pcscd, token):
    with served(token, reader="Virtual PCD 00 00", contactless="sim:other-region") as running:
        contact_only = convention(running, {"function": "iReadCardBas", "iType": 1}, bearer(token)).json()
        automatic = convention(running, {"function": "iReadCardBas", "iType": 3}, bearer(token)).json()
    assert contact_only["code"] == -2  # no card
    assert automatic["success"] and automatic["pOutInfo"].startswith("440300|")


# --- the guard --------------------------------------------------------------------------------------

def test_a_foreign_origin_is_refused_over_http_and_websocket(service):
    refused = convention(service, {"function": "iReadCardBas", "iType": 3}, {"Origin": "http://evil.example"})
    assert refused.status_code == 403 and "evil.example" in refused.json()["error"]["message"]
    assert "pOutInfo" not in refused.text

    async def hijack():
        async with websockets.connect(ws_url(service), origin="http://evil.example"):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        asyncio.run(hijack())
    assert err.value.response.status_code == 403


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_a_client_with_no_origin_needs_the_token(service, headers):
    refused = httpx.post(f"{service.url}/api/read", json={}, headers=headers)
    assert refused.status_code == 403 and "token" in refused.json()["error"]["message"]


def test_a_request_addressed_to_another_host_is_refused_dns_rebinding(service, token):
    refused = httpx.post(f"{service.url}/api/read", json={}, headers={**bearer(token), "Host": "evil.example:8940"})
    assert refused.status_code == 403 and "127.0.0.1" in refused.json()["error"]["message"]


def test_cors_is_answered_for_the_allowed_origin_only_never_a_wildcard(service):
    preflight = httpx.options(f"{service.url}/api/read", headers={"Origin": HIS,
                                                                 "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == HIS
    answer = httpx.post(f"{service.url}/api/read", json={}, headers={"Origin": HIS})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == HIS
    foreign = httpx.options(f"{service.url}/api/read", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers


def test_bodies_and_messages_are_bounded(service, token):
    big = httpx.post(f"{service.url}/api/read", content=b"{" + b" " * 70_000 + b"}", headers=bearer(token))
    assert big.status_code == 413

    async def flood():
        async with websockets.connect(ws_url(service), origin=HIS, max_size=None) as client:
            await client.send("x" * 70_000)
            await client.recv()

    with pytest.raises(websockets.exceptions.ConnectionClosed):
        asyncio.run(flood())


@pytest.mark.parametrize("origin", ["*", "http://his.example/path", "his.example", "ftp://his.example"])
def test_an_allow_list_entry_is_an_exact_origin(token, origin):
    from sscard.terminal.service import ServiceError

    with pytest.raises(ServiceError):
        ReaderService(reader="sim:adult", keys=SoftwareKeyStore.bundled_test_keys(), token=token, origins=(origin,))


def test_the_service_listens_on_loopback_only(token):
    from sscard.terminal.service import ServiceError

    with pytest.raises(ServiceError, match="this computer only"):
        ReaderService(reader="sim:adult", keys=SoftwareKeyStore.bundled_test_keys(), token=token, host="0.0.0.0")


def test_the_token_file_is_made_private_and_printed(tmp_path):
    path = tmp_path / "sub" / "service.token"
    result = CliRunner().invoke(main, ["serve", "--token-file", str(path), "--print-token"])
    assert result.exit_code == 0 and len(result.stdout.strip()) >= 32
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert CliRunner().invoke(main, ["serve", "--token-file", str(path), "--print-token"]).stdout == result.stdout
    path.chmod(0o644)
    leaky = CliRunner().invoke(main, ["serve", "--token-file", str(path), "--print-token"])
    assert leaky.exit_code == 12 and "chmod 600" in leaky.output


# --- our JSON API -----------------------------------------------------------------------------------

def test_read_auth_and_verify_pin(service, token):
    read = httpx.post(f"{service.url}/api/read", json={"redact": True}, headers=bearer(token)).json()
    assert read["genuine"] and read["identity"]["social_security_number"] == "330302************"
    auth = httpx.post(f"{service.url}/api/auth", json={}, headers=bearer(token)).json()
    assert auth == {"reader": "sim:adult", "genuine": True, "algorithm": "3DES", "test_keys": True}
    ok = httpx.post(f"{service.url}/api/verify-pin", json={"pin": "246810"}, headers=bearer(token))
    assert ok.json() == {"reader": "sim:adult", "verified": True}
    wrong = httpx.post(f"{service.url}/api/verify-pin", json={"pin": "000000"}, headers=bearer(token))
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "wrong_pin" and wrong.json()["error"]["exit_code"] == 6
    assert "000000" not in wrong.text
    counterfeit = httpx.post(f"{service.url}/api/read", json={"reader": "sim:counterfeit"}, headers=bearer(token))
    assert counterfeit.json()["error"]["code"] == "card_authentication" and counterfeit.json()["error"]["exit_code"] == 8


def test_a_reader_serves_one_session_at_a_time(token, monkeypatch):
    with served(token, busy_wait=0.3) as running:
        slow = running._identity

        def identity(spec, **options):
            time.sleep(1.0)
            return slow(spec, **options)

        monkeypatch.setattr(running, "_identity", identity)
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(
            httpx.post(f"{running.url}/api/read", json={}, headers=bearer(token), timeout=30))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409]
    assert next(a for a in answers if a.status_code == 409).json()["error"]["code"] == "reader_busy"


def test_no_pin_in_any_log(service, token, caplog):
    caplog.set_level("DEBUG")
    convention(service, {"function": "iVerifyPIN", "iType": 1, "pin": "975310"}, bearer(token))
    httpx.post(f"{service.url}/api/verify-pin", json={"pin": "975311"}, headers=bearer(token))
    assert "975310" not in caplog.text and "975311" not in caplog.text


# --- the command and the events -----------------------------------------------------------------------

def test_sscard_serve_runs_answers_and_stops_on_sigterm(tmp_path):
    from queueing import free_port

    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "SSCARD_CONFIG": str(tmp_path / "none.toml")}
    token = subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "serve", "--print-token"],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "serve", "--port", str(port),
                             "--allow-origin", HIS], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/api/convention", headers=bearer(token),
                                    json={"function": "iReadCardBas", "iType": 3})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "sscard serve did not start"
                time.sleep(0.1)
        assert answer.json()["success"]
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=20)[1]
    assert proc.returncode == 0 and "sscard service stopped" in err and "Traceback" not in err


@pytest.mark.pcsc
def test_card_events_are_pushed_to_websocket_subscribers(pcscd, vpcd_card, token):
    with served(token, reader="Virtual PCD 00 00") as running:
        async def watch():
            async with websockets.connect(ws_url(running), additional_headers=bearer(token)) as client:
                await client.send(json.dumps({"subscribe": "events"}))
                assert json.loads(await client.recv()) == {"subscribed": "events"}
                await asyncio.sleep(0.5)
                card = await asyncio.to_thread(vpcd_card, "adult", 0)
                seen = []
                while not any(e.get("event") == "inserted" for e in seen):
                    seen.append(json.loads(await asyncio.wait_for(client.recv(), 20)))
                await asyncio.to_thread(card.stop)
                while not any(e.get("event") == "removed" for e in seen):
                    seen.append(json.loads(await asyncio.wait_for(client.recv(), 20)))
                return seen

        seen = asyncio.run(watch())
    inserted = next(e for e in seen if e["event"] == "inserted")
    assert inserted["reader"] == "Virtual PCD 00 00" and inserted["atr"].startswith("3B")
    assert any(e["event"] == "removed" and e["reader"] == "Virtual PCD 00 00" for e in seen)


def test_the_python_client_of_docs_service_runs(service, token):
    doc = (ROOT / "docs" / "service.md").read_text(encoding="utf-8")
    [code] = re.findall(r"<!-- example: python -->\n```python\n(.*?)```", doc, re.S)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SSCARD_SERVICE": service.url, "SSCARD_TOKEN": token})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "张伟 330302************ card A01234567"
    assert json.loads(lines[1])["social_security_number"] == "330302************"


# --- the counter functions, with the virtual platform ------------------------------------------------

@pytest.fixture
def counter(tmp_path, token):
    """The service with a terminal configuration (the clinic of tests/flowing.py) and the virtual
    platform on a loopback port."""
    from flowing import write_config

    from sscard.central import CentralService
    from sscard.terminal.config import load_config

    with CentralService(tmp_path / "platform.sqlite", faults=True) as platform:
        config = load_config(write_config(tmp_path / "clinic", central=platform.url))
        with served(token, config=config) as running:
            yield running, platform


def post(service, path, body, token):
    return httpx.post(f"{service.url}{path}", json=body, headers=bearer(token), timeout=60)


def test_register_settle_refund_and_reconcile_through_the_api(counter, token):
    service, platform = counter
    registered = post(service, "/api/register", {"type": "outpatient", "department": "内科", "pin": "246810"}, token)
    assert registered.status_code == 200, registered.text
    visit = registered.json()["mdtrt_id"]
    assert visit.startswith("MD") and any("Registered" in m for m in registered.json()["messages"])
    items = [{"name": "诊查费", "quantity": 1, "price": "20.00"}, {"name": "血常规", "quantity": 1, "price": "35.00"}]
    settled = post(service, "/api/settle", {"visit": visit, "bill": "B1", "items": items, "pin": "246810"}, token).json()
    assert (settled["total_fen"], settled["account_fen"], settled["cash_fen"]) == (5500, 5500, 0)
    refunded = post(service, "/api/refund", {"bill": "B1"}, token).json()
    assert refunded["account_fen"] == 5500 and platform.ledger.balance("3303000000000001") == 235000
    reconciled = post(service, "/api/reconcile", {}, token).json()
    assert reconciled["balanced"] is True
    queue = post(service, "/api/queue", {}, token).json()
    assert queue["counts"]["answered"] >= 3 and queue["unknown"] == 0
    for answer in (registered.json(), settled, refunded, reconciled, queue):  # the CLI's vocabulary (docs/json.md)
        assert violations(answer) == [], answer


def test_a_purchase_through_the_api_and_its_refusals(counter, token):
    service, platform = counter
    items = [{"name": "阿莫西林胶囊", "quantity": 2, "price": "12.50"}]
    paid = post(service, "/api/purchase", {"sale": "T1", "items": items, "pin": "246810"}, token).json()
    assert (paid["total_fen"], paid["account_fen"], paid["balance_fen"]) == (2500, 2500, 235000 - 2500)
    again = post(service, "/api/purchase", {"sale": "t1", "items": items, "pin": "246810"}, token).json()
    assert again["already_paid"] is True
    wrong = post(service, "/api/purchase", {"sale": "T2", "items": items, "pin": "000000"}, token)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "wrong_pin"
    bad = post(service, "/api/purchase", {"sale": "T3", "items": [{"name": "x", "quantity": 1, "price": 1.5}],
                                          "pin": "246810"}, token)
    assert bad.status_code == 400 and "price" in bad.json()["error"]["message"]  # no float reaches money
    assert platform.ledger.balance("3303000000000001") == 235000 - 2500


def test_the_counter_functions_need_a_terminal_configuration(service, token):
    refused = post(service, "/api/purchase", {"sale": "T1", "items": [], "pin": "1"}, token)
    assert refused.status_code == 422 and "--config" in refused.json()["error"]["message"]


def test_the_page_is_served_to_this_computer_without_a_token_and_its_own_origin_may_call(service):
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and "社保卡柜台" in page.text and "default-src 'self'" in page.headers[
        "content-security-policy"]
    assert httpx.get(f"{service.url}/static/counter.js").status_code == 200
    own = httpx.post(f"{service.url}/api/read", json={"redact": True}, headers={"Origin": service.url})
    assert own.status_code == 200 and own.json()["identity"]["full_name"] == "张*"
    assert httpx.post(f"{service.url}/api/read", json={}).status_code == 403  # not a page: the token


# --- a card that stops answering: the request is answered, the service goes on -------------------

STALLING = "sim:hostile:stall:adult:3"  # answers 3 commands, then each after 10 s (drivers/simulator/hostile.py)


def test_a_stalled_card_is_given_up_on_and_the_service_goes_on(token):
    with served(token, reader=STALLING, card_timeout=0.5) as service:
        started = time.monotonic()
        first = post(service, "/api/read", {}, token)
        assert first.status_code == 422 and first.json()["error"]["code"] == "card_unresponsive"
        assert "take it out and insert it again" in first.json()["error"]["message"]
        assert time.monotonic() - started < 5  # not the card's 10 s: a bound, not a speed figure
        again = post(service, "/api/read", {}, token)  # its command still stuck: told at once, nothing sent
        assert again.json()["error"]["code"] == "card_unresponsive"
        call = post(service, "/api/convention", {"function": "iReadCardBas", "iType": 1}, token).json()
        assert call["success"] is False and call["code"] < 0
        started = time.monotonic()
        other = post(service, "/api/read", {"reader": "sim:adult"}, token)  # the other readers go on
        assert other.status_code == 200 and other.json()["identity"]["name"] == "张伟"
        assert time.monotonic() - started < 3  # not after the stuck card's 10 s
        deadline = time.monotonic() + 20
        while True:  # once the stuck command is back, the reader is free: a new read reaches the card
            time.sleep(0.5)
            started = time.monotonic()
            later = post(service, "/api/read", {}, token)
            if time.monotonic() - started >= 0.5 or time.monotonic() > deadline:
                break
        assert later.json()["error"]["code"] == "card_unresponsive" and time.monotonic() < deadline


def test_a_purchase_whose_card_stalls_moves_no_money_even_when_the_card_answers_late(tmp_path, token):
    from flowing import write_config

    from sscard.central import CentralService
    from sscard.terminal.config import load_config
    from sscard.terminal.queue import Outbox

    with CentralService(tmp_path / "platform.sqlite", faults=True) as platform:
        config = load_config(write_config(tmp_path / "clinic", central=platform.url))
        with served(token, reader="sim:hostile:pause:adult:3", config=config, card_timeout=0.5) as service:
            items = [{"name": "阿莫西林胶囊", "quantity": 2, "price": "12.50"}]
            paid = post(service, "/api/purchase", {"sale": "T1", "items": items, "pin": "246810"}, token)
            assert paid.status_code == 422 and paid.json()["error"]["code"] == "card_unresponsive"
            time.sleep(11)  # the card answers its stuck command, and every later one: the flow must not go on
            assert platform.ledger.balance("3303000000000001") == 235000
            assert platform.ledger.show()["settlements"] == []
    with Outbox(config.queue_path, create=False) as journal:
        assert journal.counts().get("answered", 0) == 0 and journal.unknown_calls() == []


def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_frees_the_connection(token):
    import socket

    with served(token, body_time=0.5) as service:
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as client:
            client.sendall(f"POST /api/read HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
                           f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                           "Content-Length: 100\r\n\r\n{".encode())  # 1 byte of 100, then nothing
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b'"code": "slow_request"' in answer, answer
        assert time.monotonic() - started < 5  # the bound, not the client's patience
        assert post(service, "/api/read", {}, token).status_code == 200  # the service goes on


def test_a_psam_that_stalls_once_fails_that_request_only(token):
    from sscard.terminal.keystore import PSAMKeyStore
    from sscard.terminal.readers import open_connection

    psam = PSAMKeyStore(open_connection("sim:hostile:pause:psam:2"))  # its 3rd command answered after 10 s
    with served(token, keys=psam, card_timeout=0.5) as service:
        first = post(service, "/api/auth", {}, token)
        assert first.status_code == 422 and first.json()["error"]["code"] == "card_unresponsive"
        deadline = time.monotonic() + 20
        while True:  # once the PSAM has answered, the card and the PSAM serve again
            time.sleep(0.5)
            later = post(service, "/api/auth", {}, token)
            if later.status_code == 200 or time.monotonic() > deadline:
                break
        assert later.status_code == 200 and later.json()["genuine"] is True


def test_sscard_serve_stops_on_sigterm_with_a_card_still_stuck(tmp_path):
    from queueing import free_port

    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    token = subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "serve", "--print-token"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    service = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "--card-timeout", "1",
                                "serve", "--reader", STALLING, "--port", str(port)],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                stuck = httpx.post(f"{url}/api/read", json={}, headers=bearer(token), timeout=20)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.2)
        assert stuck.json()["error"]["code"] == "card_unresponsive"
        assert service.poll() is None  # the service goes on (the CLI's watchdog would have ended it)
        service.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, err = service.communicate(timeout=20)
        assert time.monotonic() - started < 5  # not after the card's 10 s: a bound
        assert service.returncode == 0 and "does not answer" in err and "Traceback" not in err
    finally:
        service.kill()


def test_the_readers_list_starts_with_the_configured_virtual_reader_and_its_card(service, token):
    readers = httpx.get(f"{service.url}/api/readers", headers=bearer(token), timeout=10).json()["readers"]
    assert readers[0] == {"reader": "sim:adult", "kind": "virtual", "card": True, "configured": True,
                          "atr": readers[0]["atr"]} and readers[0]["atr"].startswith("3B ")
    assert [r["configured"] for r in readers[1:]] == [False] * (len(readers) - 1)  # a PC/SC one is not it
    assert violations(readers) == []


def test_maternity_for_a_male_holder_through_the_api_needs_confirm(counter, token):
    service, platform = counter
    body = {"type": "maternity", "department": "妇产科", "pin": "246810"}
    unasked = post(service, "/api/register", body, token)
    assert unasked.json()["error"]["code"] == "refused" and "male holder not confirmed" in unasked.text
    confirmed = post(service, "/api/register", {**body, "confirm": True}, token)
    assert "no insurance in force" in confirmed.json()["error"]["message"]  # confirmed: the platform decides
    malformed = post(service, "/api/register", {**body, "confirm": "yes"}, token)
    assert malformed.status_code == 400 and "confirm" in malformed.json()["error"]["message"]
