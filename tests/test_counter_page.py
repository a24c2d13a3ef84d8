"""The counter page of ``sscard serve`` in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium), against the virtual card and the virtual platform on loopback
ports: read the card, register, settle, buy, refund, reconcile, from the keyboard; and a page served
from a foreign origin cannot read the card.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``make test`` installs them as root); without
them the tests skip, except under ``SSCARD_REQUIRE_BROWSER=1`` (set by ``make test``, hence CI), where a
missing browser fails them.
"""
from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from flowing import write_config

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _why_no_browser() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        return "Debian's chromium and chromium-driver are not installed (make test installs them as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _why_no_browser()
    if reason:
        (pytest.fail if os.environ.get("SSCARD_REQUIRE_BROWSER") == "1" else pytest.skip)(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sscard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def counter(tmp_path):
    """``sscard serve`` (in-process) for the clinic of tests/flowing.py, its card the virtual 张伟, with
    the virtual platform."""
    from sscard.central import CentralService
    from sscard.terminal.config import load_config
    from sscard.terminal.keystore import SoftwareKeyStore
    from sscard.terminal.service import ReaderService, load_token

    with CentralService(tmp_path / "platform.sqlite") as platform:
        config = load_config(write_config(tmp_path / "clinic", central=platform.url))
        with ReaderService(reader="sim:adult", keys=SoftwareKeyStore.bundled_test_keys(),
                           token=load_token(tmp_path / "token"), config=config, terminal_no=1) as service:
            yield service, platform


def wait_for(driver, text: str, where: str = "#result", timeout: float = 30) -> str:
    """The text of ``where`` once it holds ``text``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.CSS_SELECTOR, where).text)
    except TimeoutException:
        pytest.fail(f"{text!r} never appeared in {where}, which holds: {driver.find_element(By.CSS_SELECTOR, where).text!r}")
    return driver.find_element(By.CSS_SELECTOR, where).text


def fill(driver, form: str, **values: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for name, value in values.items():
        field = driver.find_element(By.CSS_SELECTOR, f"{form} [name={name}]")
        if field.tag_name == "select":
            from selenium.webdriver.support.ui import Select

            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"{form} button").send_keys(Keys.ENTER)  # the keyboard, not the mouse


def test_a_clerk_reads_registers_settles_sells_refunds_and_reconciles_from_the_page(browser, counter):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    service, platform = counter
    browser.get(service.url + "/")
    wait_for(browser, "已连接", "#status")
    browser.find_element(By.CSS_SELECTOR, "#reader").send_keys(Keys.ENTER)  # the read form, from the keyboard
    holder = wait_for(browser, "张*", "#holder")
    assert "330302************" in holder and "330302198506151239" not in browser.page_source

    fill(browser, "#register-form", type="outpatient", department="内科", pin="246810")
    text = wait_for(browser, "挂号成功")
    visit = text.split("就诊号 visit ")[1].split()[0]
    assert visit.startswith("MD") and platform.ledger.show()["visits"][0]["mdtrt_id"] == visit

    fill(browser, "#settle-form", visit=visit, bill="B1", items="诊查费:1:20.00\n血常规:1:35.00", pin="246810")
    assert "Settled bill B1: 合计 total 55.00" in wait_for(browser, "结算成功")
    fill(browser, "#purchase-form", sale="T1", items="阿莫西林胶囊:2:12.50", pin="246810")
    paid = wait_for(browser, "支付成功")
    assert "个人账户 account 25.00" in paid
    fill(browser, "#refund-form", sale="T1")
    assert "Refunded T1:" in wait_for(browser, "退费成功")
    assert platform.ledger.balance("3303000000000001") == 235000 - 5500
    fill(browser, "#reconcile-form")
    wait_for(browser, "对账平衡 Balanced")
    fill(browser, "#purchase-form", sale="T2", items="阿莫西林胶囊:1:12.50", pin="000000")
    assert "wrong_pin" in wait_for(browser, "错误 Error 6")
    assert not browser.find_element(By.CSS_SELECTOR, "#purchase-form [name=pin]").get_attribute("value")


FOREIGN = """<!doctype html><meta charset="utf-8"><title>evil</title><pre id="out">…</pre>
<script>
const out = document.querySelector("#out");
const say = (line) => { out.textContent += "\\n" + line; };
fetch("SERVICE/api/read", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"})
  .then((r) => r.text()).then((t) => say("http: " + t)).catch((e) => say("http failed: " + e));
const ws = new WebSocket("WS/ws");
ws.onopen = () => { say("ws open"); ws.send(JSON.stringify({function: "iReadCardBas", iType: 3})); };
ws.onmessage = (m) => say("ws data: " + m.data);
ws.onerror = () => say("ws failed");
</script>"""


def test_a_page_from_a_foreign_origin_cannot_read_the_card(browser, counter, tmp_path):
    service, _platform = counter
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(FOREIGN.replace("SERVICE", service.url).replace(
        "WS", service.url.replace("http://", "ws://")), encoding="utf-8")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
        text = wait_for(browser, "ws failed", "#out")
        wait_for(browser, "http", "#out")
        text = browser.find_element("css selector", "#out").text
    finally:
        evil.shutdown()
    assert "http failed" in text and "ws failed" in text and "ws data" not in text
    assert "330302198506151239" not in text and "张伟" not in text


HOSPITAL = """<!doctype html><meta charset="utf-8"><title>HIS</title><div id="patient"></div><pre id="log"></pre>
<script>
// the test's eyes: every message the page receives, and its alerts, into #log
const log = (line) => { document.querySelector("#log").textContent += line + "\\n"; };
const Native = window.WebSocket;
window.WebSocket = function (url) {
  const socket = new Native(url);
  socket.addEventListener("message", (m) => log(m.data));
  return socket;
};
window.alert = (text) => log("alert: " + text);
</script>
<script>CLIENT</script>"""


def test_the_hospitals_page_on_an_allowed_origin_reads_each_inserted_card_as_sscard_read_does(
        browser, pcscd, vpcd_card, tmp_path):
    """The browser client of docs/service.md, served from an allowed origin, over pcscd's virtual reader:
    no card, then a card inserted and read on the event; and the counter page's live card status."""
    import json
    import re

    from click.testing import CliRunner

    from sscard.terminal.cli import main
    from sscard.terminal.keystore import SoftwareKeyStore
    from sscard.terminal.service import ReaderService, load_token

    doc = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text(encoding="utf-8")
    [client] = re.findall(r"<!-- example: javascript -->\n```javascript\n(.*?)```", doc, re.DOTALL)
    site = tmp_path / "his"
    site.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    his = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=his.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{his.server_address[1]}"
    try:
        with ReaderService(reader="Virtual PCD 00 00", keys=SoftwareKeyStore.bundled_test_keys(),
                           token=load_token(tmp_path / "token"), origins=(origin,), terminal_no=3,
                           device="DEV-TEST") as service:
            page = HOSPITAL.replace("CLIENT", client.replace("ws://127.0.0.1:8940", service.url.replace("http", "ws")))
            (site / "index.html").write_text(page, encoding="utf-8")
            browser.get(f"{origin}/index.html")
            assert "读卡失败 -2" in wait_for(browser, "alert:", "#log")  # no card yet: the convention's -2
            card = vpcd_card("adult", 0)
            patient = wait_for(browser, "张伟", "#patient")
            assert patient == "张伟 330302198506151239"
            answers = [json.loads(line) for line in browser.find_element("css selector", "#log").text.splitlines()
                       if line.startswith("{")]
            read_ok = [a for a in answers if a.get("function") == "iReadCardBas" and a["success"]]
            assert any(a.get("event") == "inserted" for a in answers) and len(read_ok) == 1

            # the counter page, on the service's own origin, shows the card going out and in
            browser.get(service.url + "/")
            wait_for(browser, "卡已插入", "#status")
            card.stop()
            wait_for(browser, "卡已取出", "#status")
            vpcd_card("adult", 0)
            wait_for(browser, "卡已插入", "#status")
    finally:
        his.shutdown()
    read = json.loads(CliRunner().invoke(main, ["read", "--reader", "sim:adult", "--json"]).stdout)
    expected = [read["issuing_region"], read["social_security_number"], read["card_number"],
                read["card_identification_code"], read["full_name"], read["card_reset_info"], read["spec_version"],
                read["issue_date"].replace("-", ""), read["expiry_date"].replace("-", ""), "03", "DEV-TEST", ""]
    assert read_ok[0]["pOutInfo"].split("|") == expected
