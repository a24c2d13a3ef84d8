"""``sscard auth``, ``change-pin``, ``reset-pin`` on in-memory virtual cards (and the virtual PSAM):
output, exit codes, key store choice; and no PIN, key or ID number in anything a -v run prints or logs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from leakcheck import id_leaks, leaks

from sscard.terminal.cli import main
from sscard.terminal.cli.security import TEST_KEYS_WARNING

ROOT = Path(__file__).resolve().parents[1]
ADULT_PIN = "246810"
BLOCKED_ID = "33030419780921256X"
NEW_PIN = "271828"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def key_file(tmp_path) -> Path:
    """The bundled TEST key file copied with mode 600 (git checks it out 0644, which is refused)."""
    path = tmp_path / "keys.json"
    shutil.copyfile(ROOT / "fixtures/keys/test-keys.json", path)
    path.chmod(0o600)
    return path


# --- sscard auth --------------------------------------------------------------------------------

def test_auth_genuine_with_the_default_test_keys_warns():
    result = run("auth", "--reader", "sim:adult")
    assert result.exit_code == 0, result.output
    assert "Genuine card" in result.stdout and "3DES" in result.stdout
    assert TEST_KEYS_WARNING in result.stderr


def test_auth_counterfeit_exit_8():
    result = run("auth", "--reader", "sim:counterfeit")
    assert result.exit_code == 8
    assert "card failed authentication" in result.stderr and "Genuine" not in result.stdout


def test_auth_with_the_psam_json_and_terminal():
    result = run("auth", "--reader", "sim:other-region", "--psam", "sim:psam", "--terminal", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == {"genuine": True, "algorithm": "SM4", "terminal_authenticated": True,
                   "key_store": "PSAM in sim:psam", "test_keys": False}
    assert "TEST keys" not in result.stderr


@pytest.mark.parametrize("store", ["psam", "key-file"])
def test_read_a_third_generation_card_with_the_psam_or_a_key_file(store, key_file):
    chosen = ["--psam", "sim:psam"] if store == "psam" else ["--key-file", str(key_file)]
    result = run("read", "--reader", "sim:other-region", *chosen, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["social_security_number"] == "440304199007123447"
    assert ("TEST keys" in result.stderr) is (store == "key-file")  # the copied file is the TEST key file
    wrong = run("read", "--reader", "sim:other-region", "--psam", "sim:adult")  # no PSAM in that reader
    assert wrong.exit_code not in (0, 1) and "440304199007123447" not in wrong.output
    assert run("read", "--bank", "--psam", "sim:psam").exit_code == 2


def test_auth_psam_from_the_environment(monkeypatch):
    monkeypatch.setenv("SSCARD_PSAM", "sim:psam")
    result = run("auth", "--reader", "sim:counterfeit", "--json")
    assert result.exit_code == 8 and "card failed authentication" in result.stderr


def test_auth_with_a_private_key_file(key_file):
    result = run("auth", "--reader", "sim:minority", "--key-file", str(key_file))
    assert result.exit_code == 0, result.output
    assert str(key_file) in result.stdout
    assert TEST_KEYS_WARNING in result.stderr  # the file says test_only: the clerk is told


def test_auth_refuses_a_key_file_others_can_read(key_file):
    key_file.chmod(0o644)
    result = run("auth", "--reader", "sim:adult", "--key-file", str(key_file))
    assert result.exit_code == 12
    assert "mode 0644" in result.stderr and "chmod 600" in result.stderr


def test_auth_psam_and_key_file_together_is_refused(key_file):
    result = run("auth", "--psam", "sim:psam", "--key-file", str(key_file))
    assert result.exit_code == 12 and "Choose one key store" in result.stderr


def test_auth_with_an_ssc_in_the_psam_slot():
    result = run("auth", "--reader", "sim:adult", "--psam", "sim:minority")
    assert result.exit_code == 12 and "PSAM refused DES INIT" in result.stderr


# --- sscard change-pin --------------------------------------------------------------------------

@pytest.mark.parametrize("lines,code,words", [
    ([ADULT_PIN, NEW_PIN], 0, "PIN changed"),
    (["999999", NEW_PIN], 6, "2 tries left"),
    ([ADULT_PIN, "888888"], 11, "too easy"),
    ([ADULT_PIN, "123456"], 11, "too easy"),
    ([ADULT_PIN, "12ab56"], 11, "digits"),
    # a new PIN is 6 digits (PIN_DEFAULT_LENGTH), though VERIFY takes the 4 to 12 a card may hold
    ([ADULT_PIN, "2580"], 11, "new PIN must be 6 digits"),
    ([ADULT_PIN, "25803"], 11, "new PIN must be 6 digits"),
    ([ADULT_PIN, "2580369"], 11, "new PIN must be 6 digits"),
    ([ADULT_PIN, "258036914703"], 11, "new PIN must be 6 digits"),
])
def test_change_pin(lines, code, words):
    result = run("change-pin", "--reader", "sim:adult", "--pin-stdin", input="\n".join(lines) + "\n")
    assert result.exit_code == code, result.output
    assert words in result.output


def test_change_pin_blocked_card():
    result = run("change-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=f"135790\n{NEW_PIN}\n")
    assert result.exit_code == 7 and "blocked" in result.stderr


# --- sscard reset-pin ---------------------------------------------------------------------------

@pytest.mark.parametrize("store", [[], ["--psam", "sim:psam"]], ids=["test-keys", "psam"])
def test_reset_pin_unblocks_a_blocked_pin(store):
    result = run("reset-pin", "--reader", "sim:blocked-pin", *store, "--pin-stdin",
                 input=f"{BLOCKED_ID.lower()}\n{NEW_PIN}\n")
    assert result.exit_code == 0, result.output
    assert "PIN reset" in result.stdout and "(3 tries)" in result.stdout
    assert "王" in result.stdout and "王芳" not in result.stdout  # the name masked


def test_reset_pin_refuses_another_persons_id():
    result = run("reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=f"330302198506151239\n{NEW_PIN}\n")
    assert result.exit_code == 9 and "does not match" in result.stderr


def test_reset_pin_refuses_a_counterfeit_before_the_id_check():
    result = run("reset-pin", "--reader", "sim:counterfeit", "--pin-stdin", input=f"330302198506151239\n{NEW_PIN}\n")
    assert result.exit_code == 8 and "card failed authentication" in result.stderr


def test_reset_pin_refuses_a_weak_pin():
    result = run("reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=f"{BLOCKED_ID}\n000000\n")
    assert result.exit_code == 11 and "too easy" in result.stderr


def test_reset_pin_prompts_for_the_id_number_and_never_takes_it_from_the_command_line():
    result = run("reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=f"{BLOCKED_ID}\n{NEW_PIN}\n")
    assert result.exit_code == 0, result.output
    for command in (["reset-pin", "--reader", "sim:blocked-pin"], ["bank", "activate", "-r", "sim:not-activated"]):
        refused = run(*command, "--id-number", BLOCKED_ID, "--pin-stdin", input=f"{NEW_PIN}\n{NEW_PIN}\n")
        assert refused.exit_code == 2 and "not taken on the command line" in refused.stderr
        assert BLOCKED_ID not in refused.output and "--id-number" not in run(*command, "--help").stdout
    empty = run("reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input="")
    assert empty.exit_code == 2 and "no ID document number" in empty.stderr
    mistyped = run("reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin", input=f"33030419780921256\n{NEW_PIN}\n")
    assert mistyped.exit_code == 2 and "The ID number on standard input: 330304*******1256 is not an ID number" in mistyped.stderr


# --- nothing secret in any output or log ----------------------------------------------------------

def test_no_pin_key_or_id_number_in_output_traces_or_logs(caplog, key_file):
    """Every security flow with -v (APDU trace at DEBUG): outputs and every log record are searched
    for the PINs (digits and BCD), every key in fixtures/ (hex, halves) and the full ID numbers."""
    flows = [
        (["auth", "--reader", "sim:adult"], None),
        (["auth", "--reader", "sim:counterfeit"], None),
        (["auth", "--reader", "sim:adult", "--psam", "sim:psam", "--terminal"], None),
        (["auth", "--reader", "sim:other-region", "--key-file", str(key_file), "--terminal"], None),
        (["verify-pin", "--reader", "sim:adult", "--pin-stdin"], ADULT_PIN + "\n"),
        (["change-pin", "--reader", "sim:adult", "--pin-stdin"], f"{ADULT_PIN}\n{NEW_PIN}\n"),
        (["change-pin", "--reader", "sim:adult", "--pin-stdin"], f"{NEW_PIN}\n{ADULT_PIN}\n"),  # wrong old
        (["change-pin", "--reader", "sim:adult", "--pin-stdin"], f"{ADULT_PIN}\n111111\n"),  # weak
        (["reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin"], f"{BLOCKED_ID}\n{NEW_PIN}\n"),
        (["reset-pin", "--reader", "sim:blocked-pin", "--psam", "sim:psam", "--pin-stdin"], f"{BLOCKED_ID}\n{NEW_PIN}\n"),
        (["reset-pin", "--reader", "sim:other-region", "--psam", "sim:psam", "--pin-stdin"],
         f"440304199007123447\n{NEW_PIN}\n"),
        (["reset-pin", "--reader", "sim:blocked-pin", "--pin-stdin"], f"330302198506151239\n{NEW_PIN}\n"),  # wrong person
    ]
    captured = []
    with caplog.at_level(logging.DEBUG):
        for args, stdin in flows:
            result = run("-v", *args, input=stdin)
            assert result.exit_code in (0, 6, 8, 9, 11), (args, result.output)
            captured.append(result.output)
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    text = "\n".join(captured) + logs
    assert "sscard.apdu" in caplog.text and "00 88 00 01" in text  # the trace was on
    assert "80 FA 05 00 [" in text  # the PSAM's RELOAD PIN MAC input was sent, masked
    assert "80 5E 00 00 [" in text and "80 5E 01 00 [" in text
    assert leaks(text, [ADULT_PIN, NEW_PIN, "135790", "111111"]) == []
    assert id_leaks(text) == []


def test_the_leak_check_finds_what_it_looks_for():
    from leakcheck import key_bytes

    from sscard.apdu.pin import pin_to_bcd

    assert leaks(f"> 80 5E 01 00 07 {pin_to_bcd(ADULT_PIN).hex(' ').upper()} FF", [ADULT_PIN]) == ["PIN BCD"]
    assert leaks(f"PIN was {ADULT_PIN}", [ADULT_PIN]) == ["PIN 6 digits"]
    keys = key_bytes()
    assert len(keys) >= 8 + 6 * 4 + 8  # test master keys, the 6 bundled SSC profiles at least, the PSAM
    assert leaks(keys[-1][8:].hex(" ").upper(), []) != []
    number = "330302198506151239"
    assert id_leaks(f"card < 08 12 {number.encode().hex(' ').upper()} 90 00", [number]) == [
        "ID birthplace+birth date", "ID number"]
    assert id_leaks("card < 0D 04 19 85 06 15 90 00", [number]) == ["ID birth date"]  # the READ RECORD
    assert id_leaks("born 1985-06-15", [number]) == ["ID birth date"]
    assert id_leaks("date=19850615;", [number]) == ["ID birth date"]
    assert id_leaks("33030219850615", [number]) == ["ID birthplace+birth date"]
    assert id_leaks("330302********1239  msgid H330302202612011985061500001", [number]) == []
