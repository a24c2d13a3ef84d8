"""The CLI's output and exit codes (click's runner, in-memory virtual cards)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from leakcheck import id_leaks

from sscard.apdu.catalogue import CARD_ITEMS, HOLDER_ITEMS
from sscard.terminal.cli import main

CARDS = Path(__file__).resolve().parents[1] / "fixtures" / "cards"


def profile(name: str) -> dict:
    return json.loads((CARDS / f"{name}.json").read_text(encoding="utf-8"))


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.mark.parametrize("name", ["adult", "minority", "other-region", "not-activated"])
def test_read_json_prints_every_field_as_the_profile_holds_it(name):
    result = run("read", "--reader", f"sim:{name}", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = profile(name)
    for section, items in (("card", CARD_ITEMS), ("holder", HOLDER_ITEMS)):
        for item in items:
            absent = None if item.encoding == "date" else ""
            assert out[item.key] == expected[section].get(item.key, absent), item.key
    assert out["full_name"] == expected["holder"]["name"] + expected["holder"].get("name_extension", "")
    assert out["issuing_region"] == expected["card"]["card_identification_code"][:6]
    assert out["activated"] is (expected.get("state", "active") == "active")


def test_read_default_is_the_builtin_virtual_card(monkeypatch):
    monkeypatch.delenv("SSCARD_READER", raising=False)
    result = run("read", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == profile("adult")["holder"]["name"]


def test_read_text_shows_chinese_labels_and_name():
    result = run("read", "--reader", "sim:adult")
    assert result.exit_code == 0, result.output
    assert "姓名 Name" in result.stdout
    assert profile("adult")["holder"]["name"] in result.stdout


def test_read_redact_masks_identifiers():
    holder = profile("adult")["holder"]
    result = run("read", "--reader", "sim:adult", "--json", "--redact")
    assert result.exit_code == 0, result.output
    assert holder["social_security_number"] not in result.stdout
    assert holder["name"] not in result.stdout
    out = json.loads(result.stdout)
    assert out["social_security_number"].startswith(holder["social_security_number"][:6])
    assert "*" in out["social_security_number"]


@pytest.mark.parametrize("name", ["adult", "minority", "other-region"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_redact_shows_nothing_of_the_id_number_beyond_its_masked_form(name, as_json):
    """Birth date and birthplace are pieces of the ID number (GB 11643): masked whole, not the year
    or a province kept beside an ID number that shows its 6-digit region."""
    holder = profile(name)["holder"]
    result = run("read", "--reader", f"sim:{name}", "--redact", *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert id_leaks(result.stdout, [holder["social_security_number"]]) == []
    assert holder["birth_date"][:4] not in result.stdout  # the year alone narrows the number
    assert "****-**-**" in result.stdout and "******" in result.stdout


def test_unknown_profile_is_a_clear_error():
    result = run("read", "--reader", "sim:no-such-card")
    assert result.exit_code == 12
    assert "no-such-card" in result.stderr
    assert "Traceback" not in result.output


def test_verify_pin_right_and_wrong():
    pin = profile("adult")["pin"]["value"]
    ok = run("verify-pin", "--reader", "sim:adult", "--pin-stdin", input=pin + "\n")
    assert ok.exit_code == 0, ok.output
    assert "PIN correct" in ok.stdout
    wrong = "000000" if pin != "000000" else "111111"
    bad = run("verify-pin", "--reader", "sim:adult", "--pin-stdin", input=wrong + "\n")
    assert bad.exit_code == 6
    assert "tries left" in bad.stderr or "try left" in bad.stderr


def test_verify_pin_blocked_card():
    pin = profile("blocked-pin")["pin"]["value"]
    result = run("verify-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=pin + "\n")
    assert result.exit_code == 7
    assert "blocked" in result.stderr


def test_trace_masks_pin_and_id_number(caplog):
    holder = profile("adult")["holder"]
    pin = profile("adult")["pin"]["value"]
    with caplog.at_level(logging.DEBUG, logger="sscard.apdu"):
        run("-v", "read", "--reader", "sim:adult")
        run("-v", "verify-pin", "--reader", "sim:adult", "--pin-stdin", input=pin + "\n")
    text = caplog.text
    assert "00 A4 04 0C" in text  # the trace is there
    assert "secret bytes" in text
    assert holder["social_security_number"].encode().hex(" ").upper() not in text
    assert " ".join(pin[i:i + 2] for i in range(0, 6, 2)) not in text
    assert id_leaks(text, [holder["social_security_number"]]) == []  # nor its birth date, in any form
    assert "< [6 bytes] 9000" in text  # the birth date record (0D 04 YYYYMMDD) went by, masked
    name = holder["name"].encode("gbk").hex(" ").upper()  # 张伟: D5 C5 CE B0, in its record 09 04 D5 C5 CE B0
    assert name not in text and text.count("< [6 bytes] 9000") >= 2  # the name record (09 04 + 4 bytes) too
    code = profile("adult")["card"]["card_identification_code"].upper()
    assert " ".join(code[i:i + 2] for i in range(0, 8, 2)) + " " + code[8:10] not in text  # nor the card's code


def test_help_teaches():
    result = run("read", "--help")
    assert result.exit_code == 0
    assert "--reader" in result.stdout and "Examples" in result.stdout


# --- errors under -v, interruptions -------------------------------------------------------------

def test_expected_errors_under_v_carry_no_traceback():
    wrong = run("-v", "verify-pin", "--reader", "sim:adult", "--pin-stdin", input="000000\n")
    assert wrong.exit_code == 6 and "Error: Wrong PIN" in wrong.stderr
    assert "sscard: WrongPINError (exit 6)" in wrong.stderr  # -v names the error
    assert "Traceback" not in wrong.output
    missing = run("-v", "read", "--reader", "sim:no-such-card")
    assert missing.exit_code == 12 and "Traceback" not in missing.output


def test_a_bug_under_v_still_shows_its_traceback(monkeypatch):
    from sscard.terminal.card import SocialSecurityCard

    def bug(self, *_):
        raise ZeroDivisionError("a stand-in for a bug")

    monkeypatch.setattr(SocialSecurityCard, "read_identity", bug)
    quiet = run("read", "--reader", "sim:adult")
    loud = run("-v", "read", "--reader", "sim:adult")
    assert quiet.exit_code == loud.exit_code == 1
    assert "Internal error (ZeroDivisionError)" in quiet.stderr and "Traceback" not in quiet.output
    assert "Traceback" in loud.stderr and "ZeroDivisionError" in loud.stderr


@pytest.mark.parametrize("key, what", [(b"\x03", "Ctrl-C"), (b"\x04", "Ctrl-D")])
def test_ctrl_c_or_ctrl_d_at_the_pin_prompt_is_interrupted_exit_130(key, what):
    """At a terminal (a real pty) click turns Ctrl-C / Ctrl-D at a prompt into Abort: exit 130, not
    click's "Aborted!" and exit 1 (which means a bug)."""
    import os
    import pty
    import select
    import signal
    import sys
    import time

    pid, master = pty.fork()
    if pid == 0:  # the child: sscard on the pty, its controlling terminal
        # as a shell at a terminal starts it: a run started in the background (a script's ``&``)
        # inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-c", "from sscard.terminal.cli import main; main()",
                                  "verify-pin", "--reader", "sim:adult"])
    output = b""
    deadline = time.monotonic() + 30
    try:
        while b"PIN:" not in output:
            assert time.monotonic() < deadline, f"no PIN prompt: {output!r}"
            if select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 1024)
        os.write(master, key)
        while True:
            assert time.monotonic() < deadline, f"{what}: sscard did not end: {output!r}"
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 1024)
                except OSError:  # EIO: the child closed the pty
                    break
                if not chunk:
                    break
                output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert "Interrupted." in text and "Aborted!" not in text and "Traceback" not in text
